/* constraint.c -- response_format, grammar and choice -> a shared constraint cache.
 *
 * Each kind is turned into GBNF text first (schema.c for JSON, the client's own text
 * for `grammar`, an alternation of literals for `choice`), and the text is the key
 * of a small table of compiled grammars: a request repeating a schema reuses its
 * automaton and every mask earlier requests computed (an evaluation script sends the
 * same schema thousands of times).  The table holds a few entries, least recently
 * used first out; a cache lives on while a request still holds it.
 *
 * Failing closed: a field of the wrong type, a schema keyword outside the supported
 * subset, a grammar error, two constraints at once, or a byte the model cannot
 * write is a 400 naming the parameter (for a schema, the path to the keyword inside
 * it; for a grammar, the line and column in the message).  Nothing is skipped.
 */
#include "server/constraint.h"
#include "server/schema.h"
#include "model/model.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHOICES 1024 /* strings in `choice` */

/* ---- The vocabulary --------------------------------------------------------------------- */

static const char *token_bytes(void *user, int32_t id, size_t *len)
{
    const model *m = user;
    if (model_token_is_special(m, id)) return NULL;
    return model_token_bytes(m, id, len);
}

int constraint_vocab_from_model(const model *m, sampler_vocab **out)
{
    const model_info *mi = model_get_info(m);
    int32_t ends[2];
    int n = 0;
    if (mi->eos_id >= 0) ends[n++] = mi->eos_id;
    if (mi->bos_ends_text && mi->bos_id >= 0 && mi->bos_id != mi->eos_id) ends[n++] = mi->bos_id;
    int rc = sampler_vocab_new(out, mi->vocab_size, token_bytes, (void *)m, ends, n);
    return rc == SAMPLER_OK ? SAMPLER_OK : SAMPLER_ENOMEM;
}

/* ---- The table ------------------------------------------------------------------------ */

typedef struct {
    char *text;
    size_t len;
    uint64_t hash;
    uint64_t used; /* the table's clock at the last use */
    sampler_constraint_cache *cc;
} entry;

struct constraint_table {
    pthread_mutex_t mu;
    const sampler_vocab *v;
    entry *e; /* (cap) */
    int n, cap;
    uint64_t clock;
};

constraint_table *constraint_table_new(const sampler_vocab *v, int capacity)
{
    if (!v || capacity < 1) return NULL;
    constraint_table *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->e = calloc((size_t)capacity, sizeof *t->e);
    if (!t->e || pthread_mutex_init(&t->mu, NULL)) {
        free(t->e);
        free(t);
        return NULL;
    }
    t->v = v;
    t->cap = capacity;
    return t;
}

void constraint_table_free(constraint_table *t)
{
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        free(t->e[i].text);
        sampler_constraint_cache_free(t->e[i].cc);
    }
    free(t->e);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

const sampler_vocab *constraint_table_vocab(const constraint_table *t) { return t ? t->v : NULL; }

static uint64_t hash_text(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, 64 bits */
    for (size_t k = 0; k < n; k++) h = (h ^ (unsigned char)s[k]) * 1099511628211ull;
    return h;
}

int constraint_table_get(constraint_table *t, const char *gbnf, size_t len, sampler_constraint_cache **out,
                         sampler_grammar_error *err)
{
    *out = NULL;
    uint64_t h = hash_text(gbnf, len);
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->n; i++) {
        entry *x = &t->e[i];
        if (x->hash == h && x->len == len && !memcmp(x->text, gbnf, len)) {
            x->used = ++t->clock;
            *out = sampler_constraint_cache_ref(x->cc);
            pthread_mutex_unlock(&t->mu);
            return SAMPLER_OK;
        }
    }
    pthread_mutex_unlock(&t->mu);
    /* compiled outside the lock: two requests may compile the same text at once;
     * the second to finish keeps its own cache for itself */
    sampler_grammar *g = NULL;
    int rc = sampler_grammar_parse(&g, gbnf, len, err);
    if (rc != SAMPLER_OK) return rc;
    sampler_constraint_cache *cc = sampler_constraint_cache_new(g, t->v); /* owns g */
    char *copy = malloc(len + 1);
    if (!cc || !copy) {
        sampler_constraint_cache_free(cc);
        free(copy);
        return SAMPLER_ENOMEM;
    }
    memcpy(copy, gbnf, len);
    copy[len] = 0;
    pthread_mutex_lock(&t->mu);
    int slot = t->n < t->cap ? t->n++ : -1;
    if (slot < 0) { /* the least recently used goes */
        slot = 0;
        for (int i = 1; i < t->n; i++)
            if (t->e[i].used < t->e[slot].used) slot = i;
        free(t->e[slot].text);
        sampler_constraint_cache_free(t->e[slot].cc);
    }
    t->e[slot] = (entry){ copy, len, h, ++t->clock, sampler_constraint_cache_ref(cc) };
    pthread_mutex_unlock(&t->mu);
    *out = cc;
    return SAMPLER_OK;
}

/* ---- The request fields ----------------------------------------------------------------- */

static int cfail(constraint_error *e, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int cfail(constraint_error *e, const char *code, const char *param, const char *fmt, ...)
{
    e->status = strcmp(code, "out_of_memory") ? 400 : 503;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int oom(constraint_error *e) { return cfail(e, "out_of_memory", NULL, "out of memory"); }

static int present(json_t *x) { return x && !json_is_null(x); }

/* Only the listed keys may appear in object o (named `what` in messages). */
static int only_keys(json_t *o, const char *what, const char *const *keys, int n, constraint_error *e)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        int ok = 0;
        for (int i = 0; i < n; i++) ok |= !strcmp(k, keys[i]);
        if (!ok) {
            char p[200];
            snprintf(p, sizeof p, "%s.%.120s", what, k);
            return cfail(e, "invalid_value", p, "'%s' has no field '%.120s'", what, k);
        }
    }
    return 0;
}

/* Every byte the grammar may need has a one-byte token (else *cc is released). */
static int check_bytes(constraint_table *t, sampler_constraint_cache **cc, const char *param, constraint_error *e)
{
    const sampler_grammar *g = sampler_constraint_cache_grammar(*cc);
    for (int b = 0; b < 256; b++) {
        if (sampler_grammar_uses_byte(g, (unsigned char)b) && !sampler_vocab_has_byte(t->v, (unsigned char)b)) {
            sampler_constraint_cache_free(*cc);
            *cc = NULL;
            return cfail(e, "invalid_value", param,
                         "the model's vocabulary has no token for the byte 0x%02X, which '%s' may need", b, param);
        }
    }
    return 0;
}

static int schema_gbnf(json_t *rf, char **gbnf, size_t *len, constraint_error *e)
{
    static const char *const keys[] = { "type", "json_schema" };
    static const char *const js_keys[] = { "name", "description", "schema", "strict" };
    if (only_keys(rf, "response_format", keys, 2, e)) return -1;
    json_t *js = json_object_get(rf, "json_schema");
    if (!present(js))
        return cfail(e, "invalid_value", "response_format.json_schema",
                     "'response_format.json_schema' is required when type is 'json_schema'");
    if (!json_is_object(js))
        return cfail(e, "invalid_type", "response_format.json_schema",
                     "'response_format.json_schema' must be an object");
    if (only_keys(js, "response_format.json_schema", js_keys, 4, e)) return -1;
    json_t *name = json_object_get(js, "name"), *desc = json_object_get(js, "description");
    json_t *strict = json_object_get(js, "strict"), *schema = json_object_get(js, "schema");
    if (present(name) && !json_is_string(name))
        return cfail(e, "invalid_type", "response_format.json_schema.name",
                     "'response_format.json_schema.name' must be a string");
    if (present(desc) && !json_is_string(desc))
        return cfail(e, "invalid_type", "response_format.json_schema.description",
                     "'response_format.json_schema.description' must be a string");
    if (present(strict) && !json_is_boolean(strict))
        return cfail(e, "invalid_type", "response_format.json_schema.strict",
                     "'response_format.json_schema.strict' must be a boolean");
    if (!present(schema))
        return cfail(e, "invalid_value", "response_format.json_schema.schema",
                     "'response_format.json_schema.schema' is required");
    schema_error se;
    int rc = schema_to_gbnf(schema, gbnf, len, &se);
    if (rc == SCHEMA_ENOMEM) return oom(e);
    if (rc != SCHEMA_OK) {
        char p[320];
        snprintf(p, sizeof p, "response_format.json_schema.schema%s%.256s", se.path[0] ? "." : "", se.path);
        return cfail(e, "invalid_value", p, "%s", se.message);
    }
    return 0;
}

static int choice_gbnf(json_t *ch, char **gbnf, size_t *glen, constraint_error *e)
{
    if (!json_is_array(ch)) return cfail(e, "invalid_type", "choice", "'choice' must be an array of strings");
    size_t n = json_array_size(ch);
    if (n == 0 || n > MAX_CHOICES)
        return cfail(e, "invalid_value", "choice", "'choice' must hold 1 to %d strings (got %zu)", MAX_CHOICES, n);
    const char **s = malloc(n * sizeof *s);
    size_t *len = malloc(n * sizeof *len);
    if (!s || !len) {
        free(s), free(len);
        return oom(e);
    }
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *x = json_array_get(ch, i);
        char p[64];
        snprintf(p, sizeof p, "choice[%zu]", i);
        if (!json_is_string(x))
            rc = cfail(e, "invalid_type", p, "'%s' must be a string", p);
        else if (json_string_length(x) == 0 || strlen(json_string_value(x)) != json_string_length(x))
            rc = cfail(e, "invalid_value", p, "'%s' must be a non-empty string without NUL characters", p);
        else
            s[i] = json_string_value(x), len[i] = json_string_length(x);
    }
    if (!rc) {
        int src = schema_choice_to_gbnf(s, len, (int)n, gbnf, glen);
        if (src == SCHEMA_ENOMEM)
            rc = oom(e);
        else if (src)
            rc = cfail(e, "invalid_value", "choice", "'choice' cannot be compiled");
    }
    free(s);
    free(len);
    return rc;
}

int constraint_gbnf(json_t *root, char **gbnf, size_t *len, const char **field, constraint_error *err)
{
    *gbnf = NULL;
    *len = 0;
    *field = NULL;
    memset(err, 0, sizeof *err);
    json_t *rf = json_object_get(root, "response_format"), *gr = json_object_get(root, "grammar");
    json_t *ch = json_object_get(root, "choice");
    const char *kind = NULL;
    if (present(rf)) {
        if (!json_is_object(rf))
            return cfail(err, "invalid_type", "response_format", "'response_format' must be an object");
        json_t *type = json_object_get(rf, "type");
        if (!json_is_string(type))
            return cfail(err, "invalid_value", "response_format.type",
                         "'response_format.type' must be 'text', 'json_object' or 'json_schema'");
        kind = json_string_value(type);
        if (strcmp(kind, "text") && strcmp(kind, "json_object") && strcmp(kind, "json_schema"))
            return cfail(err, "invalid_value", "response_format.type",
                         "'response_format.type' must be 'text', 'json_object' or 'json_schema' (got '%.40s')", kind);
        if (strcmp(kind, "json_schema")) { /* text and json_object have no other field */
            static const char *const keys[] = { "type" };
            if (only_keys(rf, "response_format", keys, 1, err)) return -1;
        }
        if (!strcmp(kind, "text")) kind = NULL;
    }
    const char *given[3];
    int n = 0;
    if (kind) given[n++] = "response_format";
    if (present(gr)) given[n++] = kind = "grammar";
    if (present(ch)) given[n++] = kind = "choice";
    if (n > 1)
        return cfail(err, "invalid_value", given[1],
                     "'%s' cannot be combined with '%s' (response_format, grammar and choice are exclusive)", given[1],
                     given[0]);
    if (!kind) return 0;
    *field = n ? given[0] : NULL;
    if (!strcmp(kind, "grammar")) {
        if (!json_is_string(gr)) return cfail(err, "invalid_type", "grammar", "'grammar' must be a string (GBNF)");
        *gbnf = malloc(json_string_length(gr) + 1);
        if (!*gbnf) return oom(err);
        memcpy(*gbnf, json_string_value(gr), json_string_length(gr) + 1);
        *len = json_string_length(gr);
        return 0;
    }
    if (!strcmp(kind, "choice")) return choice_gbnf(ch, gbnf, len, err);
    if (!strcmp(kind, "json_object")) {
        *len = strlen(schema_json_object_gbnf);
        *gbnf = malloc(*len + 1);
        if (!*gbnf) return oom(err);
        memcpy(*gbnf, schema_json_object_gbnf, *len + 1);
        return 0;
    }
    return schema_gbnf(rf, gbnf, len, err);
}

/* A grammar error for the field: with the line and column for a client's grammar,
 * with the path of the part at fault for a schema (only the grammar compiler sees
 * a schema with no finite instance or past the size limit; schema_compile maps them). */
static int grammar_error(json_t *root, const char *field, const sampler_grammar_error *ge, constraint_error *e)
{
    if (!strcmp(field, "grammar"))
        return cfail(e, "invalid_value", field, "'grammar': line %d, column %d: %s", ge->line, ge->column, ge->message);
    json_t *rf = json_object_get(root, "response_format");
    json_t *schema = json_object_get(json_object_get(rf, "json_schema"), "schema");
    if (!strcmp(field, "response_format") && schema) {
        sampler_grammar *g = NULL;
        schema_error se;
        int rc = schema_compile(schema, &g, &se);
        sampler_grammar_free(g);
        if (rc == SCHEMA_ENOMEM) return oom(e);
        if (rc != SCHEMA_OK) {
            char p[320];
            snprintf(p, sizeof p, "response_format.json_schema.schema%s%.256s", se.path[0] ? "." : "", se.path);
            return cfail(e, "invalid_value", p, "%s", se.message);
        }
    }
    return cfail(e, "invalid_value", field, "'%s' does not compile: %s", field, ge->message);
}

int constraint_from_request(constraint_table *t, json_t *root, sampler_constraint_cache **out, constraint_error *err)
{
    *out = NULL;
    char *gbnf;
    size_t len;
    const char *field;
    if (constraint_gbnf(root, &gbnf, &len, &field, err) < 0) return -1;
    if (!gbnf) return 0;
    if (!t) {
        free(gbnf);
        return cfail(err, "invalid_value", field, "constrained output is not available on this server");
    }
    sampler_grammar_error ge;
    int rc = constraint_table_get(t, gbnf, len, out, &ge);
    free(gbnf);
    if (rc == SAMPLER_ENOMEM) return oom(err);
    if (rc != SAMPLER_OK) return grammar_error(root, field, &ge, err);
    return check_bytes(t, out, field, err);
}

int constraint_compile(json_t *root, sampler_grammar **g, char **gbnf, size_t *len, constraint_error *err)
{
    *g = NULL;
    const char *field;
    if (constraint_gbnf(root, gbnf, len, &field, err) < 0) return -1;
    if (!*gbnf) return 0;
    sampler_grammar_error ge;
    int rc = sampler_grammar_parse(g, *gbnf, *len, &ge);
    if (rc == SAMPLER_OK) return 0;
    free(*gbnf);
    *gbnf = NULL;
    return rc == SAMPLER_ENOMEM ? oom(err) : grammar_error(root, field, &ge, err);
}
