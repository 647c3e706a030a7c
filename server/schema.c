/* schema.c -- a JSON Schema (or "any JSON object", or a list of choices) as GBNF.
 *
 * The output is one GBNF text, compiled by the sampler's grammar compiler like a
 * client's grammar, so every constraint runs on the same automaton.  The schema's
 * meaning is kept exactly where it can be, and otherwise narrowed to a subset of
 * the valid texts -- never widened: every complete text validates.  Anything
 * outside the subset below is an error naming the keyword and its path, never
 * skipped.
 *
 * Supported (JSON Schema 2020-12 keywords):
 *   type            the seven types, or a list of them
 *   enum, const     any JSON values, written in compact form (jansson's)
 *   anyOf           any non-empty list of schemas
 *   $ref            "#" or a JSON pointer "#/..." into this document ($defs, definitions)
 *   object          properties, required, additionalProperties (true or false)
 *   array           items (a schema), minItems, maxItems, uniqueItems: false
 *   string          minLength, maxLength (code points), or pattern (the regex subset below)
 *   integer         minimum, maximum, exclusiveMinimum, exclusiveMaximum (|bound| <= 10^15)
 *   number          the same with whole-number bounds (|bound| <= 10^9)
 *   annotations     title, description, $comment, $schema, $id (at the root), default,
 *                   examples, deprecated, readOnly, writeOnly, $defs, definitions
 * Narrowings (documented, always valid output):
 *   - whitespace between tokens is nothing, one space, or a newline and up to 20
 *     spaces or tabs (llama.cpp's rule: a sampled model could otherwise spend all
 *     its tokens on blank space); none after the value;
 *   - objects hold their declared properties only, in declaration order (the
 *     required ones always, the others optionally); with no declared properties
 *     and additionalProperties not false, any object;
 *   - numbers have at most 16 integer and 16 fraction digits and a 2-digit
 *     exponent; bounded numbers no exponent and at most 6 fraction digits (so that
 *     a double compares with the bound as the decimal does); integers and numbers
 *     are written without leading zeros, integers never as "-0";
 *   - strings never use \u escapes for surrogates (so lengths count as Python's do);
 *   - without "type", the keywords present decide it ({"properties": ...} is an
 *     object); a keyword that applies to none of the listed types is an error.
 * Refused: format, oneOf, allOf, not, if/then/else, patternProperties,
 * minProperties/maxProperties, prefixItems, contains, uniqueItems: true, multipleOf,
 * dependent*, unevaluated*, external $ref, $ref or anyOf beside other constraints,
 * enum beside constraints other than type, the schema false, and any other keyword.
 *
 * pattern: a regex subset with the same meaning in ECMA-262 and Python's re --
 * literals, escaped punctuation, \t \n \r \f \v \xHH \uHHHH, ., [...] and [^...]
 * with ranges, \d \w \s (as [0-9], [A-Za-z0-9_], [ \t\n\r\f\v]: subsets of Python's
 * Unicode classes), groups (...) and (?:...), |, * + ? {m} {m,} {m,n} (a lazy ?
 * after them changes nothing here), ^ at the start and $ at the end of a top-level
 * alternative.  As in JSON Schema, a pattern matches anywhere unless anchored.  The
 * pattern describes the decoded string; the grammar writes its JSON escapes.
 */
#include "server/schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH        64     /* schema nesting */
#define MAX_COUNT        100000 /* minLength, maxItems, ... */
#define MAX_REGEX_REPEAT 1000
#define INT_BOUND        1e15
#define NUM_BOUND        1e9

/* ---- The shared JSON rules ------------------------------------------------------------ */

#define JSON_RULES                                                                                 \
    "j-value  ::= j-object | j-array | j-string | j-number | \"true\" | \"false\" | \"null\"\n"    \
    "j-object ::= \"{\" ws ( j-member ( \",\" ws j-member )* )? \"}\"\n"                           \
    "j-member ::= j-string ws \":\" ws j-value ws\n"                                               \
    "j-array  ::= \"[\" ws ( j-value ws ( \",\" ws j-value ws )* )? \"]\"\n"                       \
    "j-string ::= \"\\\"\" j-char* \"\\\"\"\n"                                                     \
    "j-char   ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" j-hex4 )\n"             \
    "j-hex4   ::= [0-9a-cA-Ce-fE-F] j-hex j-hex j-hex | [dD] [0-7] j-hex j-hex\n"                  \
    "j-hex    ::= [0-9a-fA-F]\n"                                                                   \
    "j-number ::= \"-\"? j-int ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?\n"                \
    "j-int    ::= \"0\" | [1-9] [0-9]{0,15}\n"                                                     \
    "j-integer ::= \"0\" | \"-\"? [1-9] [0-9]{0,15}\n"                                             \
    "j-frac   ::= \".\" [0-9]{1,6}\n"                                                              \
    "j-nzfrac ::= \".\" ( [1-9] [0-9]{0,5} | \"0\" [1-9] [0-9]{0,4} | \"00\" [1-9] [0-9]{0,3} |\n" \
    "             \"000\" [1-9] [0-9]{0,2} | \"0000\" [1-9] [0-9]? | \"00000\" [1-9] )\n"          \
    "j-zfrac  ::= \".\" \"0\"{1,6}\n"                                                              \
    "ws       ::= ( \" \" | \"\\n\" [ \\t]{0,20} )?\n"

const char schema_json_object_gbnf[] = "root ::= ws j-object\n" JSON_RULES;

/* ---- Output buffer -------------------------------------------------------------------- */

typedef struct {
    char *d;
    size_t n, cap;
    int oom;
} gbuf;

static void gb_put(gbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *q = realloc(b->d, nc);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->d = q;
        b->cap = nc;
    }
    memcpy(b->d + b->n, s, n);
    b->n += n;
    b->d[b->n] = 0;
}

static void gb_str(gbuf *b, const char *s) { gb_put(b, s, strlen(s)); }

/* Release part, a scratch buffer, into o: when keep, its text goes to o between pre and
 * post; its out-of-memory flag always carries over. */
static void gb_merge(gbuf *o, int keep, const char *pre, gbuf *part, const char *post)
{
    if (keep) {
        gb_str(o, pre);
        gb_put(o, part->d, part->n);
        gb_str(o, post);
    }
    o->oom |= part->oom;
    free(part->d);
}

static void gb_printf(gbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gb_printf(gbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof tmp) { /* not used for long text */
        b->oom = 1;
        return;
    }
    gb_put(b, tmp, (size_t)n);
}

/* s[0..n) as a GBNF string literal: printable ASCII as is (quote and backslash
 * escaped), control characters as \xHH, other UTF-8 as is (jansson strings are
 * valid UTF-8). */
static void gb_literal(gbuf *b, const char *s, size_t n)
{
    gb_put(b, "\"", 1);
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            gb_put(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            gb_printf(b, "\\x%02X", c);
        } else {
            gb_put(b, (const char *)&c, 1);
        }
    }
    gb_put(b, "\"", 1);
}

/* ---- The generator ---------------------------------------------------------------------- */

typedef struct {
    json_t *node;
    int rule;
} ref_entry;

typedef struct {
    size_t off; /* where the rule's line starts in out */
    char *path;
} rule_line;

typedef struct {
    gbuf out;
    int n_rules; /* r0, r1, ... */
    rule_line *lines;
    int n_lines, cap_lines;
    json_t *root;
    ref_entry *refs;
    int n_refs, cap_refs;
    char path[256];
    size_t plen;
    int depth;
    schema_error *err;
    int rc;
} gen;

static int gfail(gen *g, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int gfail(gen *g, const char *key, const char *fmt, ...)
{
    if (g->rc) return g->rc;
    g->rc = SCHEMA_EINVAL;
    if (g->err) {
        if (key)
            snprintf(g->err->path, sizeof g->err->path, "%.190s%s%.60s", g->path, g->plen ? "." : "", key);
        else
            snprintf(g->err->path, sizeof g->err->path, "%s", g->path);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->err->message, sizeof g->err->message, fmt, ap);
        va_end(ap);
    }
    return g->rc;
}

static int goom(gen *g)
{
    if (!g->rc) {
        g->rc = SCHEMA_ENOMEM;
        if (g->err) {
            g->err->path[0] = 0;
            snprintf(g->err->message, sizeof g->err->message, "out of memory");
        }
    }
    return g->rc;
}

/* Path segments: ".key" or "[i]"; a mark restores the previous length. */
static size_t path_key(gen *g, const char *key)
{
    size_t mark = g->plen;
    int n = snprintf(g->path + g->plen, sizeof g->path - g->plen, "%s%s", g->plen ? "." : "", key);
    if (n > 0) g->plen = g->plen + (size_t)n < sizeof g->path ? g->plen + (size_t)n : sizeof g->path - 1;
    return mark;
}

static size_t path_index(gen *g, size_t i)
{
    size_t mark = g->plen;
    int n = snprintf(g->path + g->plen, sizeof g->path - g->plen, "[%zu]", i);
    if (n > 0) g->plen = g->plen + (size_t)n < sizeof g->path ? g->plen + (size_t)n : sizeof g->path - 1;
    return mark;
}

static void path_restore(gen *g, size_t mark)
{
    g->plen = mark;
    g->path[mark] = 0;
}

/* Write "rID ::= body\n", remembering the line's schema path for error messages. */
static void emit_rule(gen *g, int id, const gbuf *body)
{
    if (g->n_lines == g->cap_lines) {
        int nc = g->cap_lines ? 2 * g->cap_lines : 32;
        rule_line *l = realloc(g->lines, (size_t)nc * sizeof *l);
        if (!l) {
            goom(g);
            return;
        }
        g->lines = l;
        g->cap_lines = nc;
    }
    char *p = strdup(g->path);
    if (!p) {
        goom(g);
        return;
    }
    g->lines[g->n_lines++] = (rule_line){ g->out.n, p };
    gb_printf(&g->out, "r%d ::= ", id);
    gb_put(&g->out, body->d ? body->d : "\"\"", body->d ? body->n : 2);
    gb_put(&g->out, "\n", 1);
}

/* A rule reference as text: r<id>, or a shared rule's name. */
typedef struct {
    char name[24];
} rname;

static rname rule_name(int id)
{
    rname r;
    snprintf(r.name, sizeof r.name, "r%d", id);
    return r;
}

static int compile(gen *g, json_t *s); /* -> rule id, or negative */

/* A rule whose body is a fixed text. */
static int text_rule(gen *g, const char *text)
{
    gbuf b = { 0 };
    gb_str(&b, text);
    int id = g->n_rules++;
    emit_rule(g, id, &b);
    int oom = b.oom;
    free(b.d);
    return oom ? goom(g) : id;
}

/* ---- Keywords ----------------------------------------------------------------------------- */

static int is_annotation(const char *k, int at_root)
{
    static const char *const ann[] = { "title",      "description", "$comment",  "$schema", "default",    "examples",
                                       "deprecated", "readOnly",    "writeOnly", "$defs",   "definitions" };
    for (size_t i = 0; i < sizeof ann / sizeof ann[0]; i++)
        if (!strcmp(k, ann[i])) return 1;
    return at_root && !strcmp(k, "$id");
}

enum { F_OBJECT = 1, F_ARRAY = 2, F_STRING = 4, F_NUMERIC = 8 };

static int keyword_family(const char *k)
{
    static const struct {
        const char *k;
        int f;
    } kw[] = {
        { "properties", F_OBJECT },
        { "required", F_OBJECT },
        { "additionalProperties", F_OBJECT },
        { "items", F_ARRAY },
        { "minItems", F_ARRAY },
        { "maxItems", F_ARRAY },
        { "uniqueItems", F_ARRAY },
        { "minLength", F_STRING },
        { "maxLength", F_STRING },
        { "pattern", F_STRING },
        { "minimum", F_NUMERIC },
        { "maximum", F_NUMERIC },
        { "exclusiveMinimum", F_NUMERIC },
        { "exclusiveMaximum", F_NUMERIC },
    };
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
        if (!strcmp(k, kw[i].k)) return kw[i].f;
    return 0;
}

static const char *unsupported_hint(const char *k)
{
    if (!strcmp(k, "oneOf")) return " (use anyOf)";
    if (!strcmp(k, "format")) return " (use pattern)";
    return "";
}

/* Check every keyword of s is supported; structural keywords (type, enum, const,
 * anyOf, $ref) are handled by the caller. */
static int check_keywords(gen *g, json_t *s, int at_root)
{
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        if (is_annotation(k, at_root) || keyword_family(k) || !strcmp(k, "type") || !strcmp(k, "enum") ||
            !strcmp(k, "const") || !strcmp(k, "anyOf") || !strcmp(k, "$ref"))
            continue;
        return gfail(g, k, "unsupported JSON Schema keyword '%.60s'%s", k, unsupported_hint(k));
    }
    return 0;
}

/* 1 if s has a keyword other than annotations and the ones listed. */
static const char *other_constraint(json_t *s, const char *const *allowed, int n_allowed, int at_root)
{
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        if (is_annotation(k, at_root)) continue;
        int ok = 0;
        for (int i = 0; i < n_allowed; i++) ok |= !strcmp(k, allowed[i]);
        if (!ok) return k;
    }
    return NULL;
}

/* A non-negative integer keyword: 1 and *v, 0 absent, or an error. */
static int get_count(gen *g, json_t *s, const char *key, long *v)
{
    json_t *x = json_object_get(s, key);
    if (!x) return 0;
    double d = json_is_integer(x) ? (double)json_integer_value(x) : json_is_real(x) ? json_real_value(x) : -1;
    if (!json_is_number(x) || d < 0 || d != floor(d)) return gfail(g, key, "'%s' must be a non-negative integer", key);
    if (d > MAX_COUNT) return gfail(g, key, "'%s' above %d is not supported", key, MAX_COUNT);
    *v = (long)d;
    return 1;
}

static int get_bound(gen *g, json_t *s, const char *key, double *v)
{
    json_t *x = json_object_get(s, key);
    if (!x) return 0;
    if (json_is_boolean(x)) return gfail(g, key, "'%s' must be a number (the boolean form is from draft 4)", key);
    if (!json_is_number(x)) return gfail(g, key, "'%s' must be a number", key);
    *v = json_number_value(x);
    return 1;
}

/* ---- Integers and numbers ------------------------------------------------------------------ */

static int ndigits(long long v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* Every d-digit decimal string from x to y (equal lengths, x <= y as numbers, leading
 * zeros allowed here: the caller fixes the first digit's range), as a GBNF group. */
static void digits_range(gbuf *o, const char *x, const char *y, int n)
{
    int k = 0;
    while (k < n && x[k] == y[k]) k++;
    gb_str(o, "(");
    if (k > 0) gb_literal(o, x, (size_t)k);
    if (k == n) {
        gb_str(o, ")");
        return;
    }
    int m = n - k - 1;
    int lowall = 1, highall = 1;
    for (int i = k + 1; i < n; i++) {
        lowall &= x[i] == '0';
        highall &= y[i] == '9';
    }
    gb_str(o, " (");
    int alts = 0;
    char lo = x[k], hi = y[k];
    if (!lowall) { /* x[k] followed by x's rest .. 99..9 */
        char nines[32];
        memset(nines, '9', (size_t)m);
        gb_printf(o, "\"%c\" ", lo);
        digits_range(o, x + k + 1, nines, m);
        alts++;
        lo++;
    }
    char top = highall ? hi : (char)(hi - 1);
    if (lo <= top) {
        if (alts++) gb_str(o, " | ");
        gb_printf(o, "[%c-%c]", lo, top);
        if (m > 0) gb_printf(o, " [0-9]{%d}", m);
    }
    if (!highall) {
        char zeros[32];
        memset(zeros, '0', (size_t)m);
        if (alts++) gb_str(o, " | ");
        gb_printf(o, "\"%c\" ", hi);
        digits_range(o, zeros, y + k + 1, m);
    }
    gb_str(o, "))");
}

/* v as exactly d decimal digits (leading zeros), d <= 16. */
static void fixed_digits(char *out, long long v, int d)
{
    for (int i = d - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
    out[d] = 0;
}

/* Canonical decimals of the integers a..b (b < 0: no upper bound, up to 16 digits), a >= 0. */
static void magnitude_range(gbuf *o, long long a, long long b)
{
    int da = ndigits(a), db = b < 0 ? 16 : ndigits(b);
    int alts = 0;
    gb_str(o, "(");
    for (int d = da; d <= db; d++) {
        if (b < 0 && d > da) { /* every longer number, in one piece */
            gb_str(o, " | [1-9]");
            gb_printf(o, " [0-9]{%d,15}", da);
            break;
        }
        char x[32], y[32];
        long long lo = d == da ? a : 1;
        for (int i = 1; d != da && i < d; i++) lo *= 10;
        long long hi;
        if (b >= 0 && d == db) {
            hi = b;
        } else {
            hi = 1;
            for (int i = 0; i < d; i++) hi *= 10;
            hi -= 1;
        }
        fixed_digits(x, lo, d);
        fixed_digits(y, hi, d);
        if (alts++) gb_str(o, " | ");
        digits_range(o, x, y, d);
    }
    gb_str(o, ")");
}

/* Integers lo..hi; has_lo/has_hi = 0 for no bound. */
static void integer_range(gbuf *o, int has_lo, long long lo, int has_hi, long long hi)
{
    int alts = 0;
    gb_str(o, "(");
    if (!has_lo || lo < 0) { /* negatives: magnitudes max(1, -hi)..-lo */
        long long a = has_hi && hi < 0 ? -hi : 1, b = has_lo ? -lo : -1;
        gb_str(o, "\"-\" ");
        magnitude_range(o, a, b);
        alts++;
    }
    if (!has_hi || hi >= 0) {
        if (alts++) gb_str(o, " | ");
        magnitude_range(o, has_lo && lo > 0 ? lo : 0, has_hi ? hi : -1);
    }
    gb_str(o, ")");
}

/* Non-negative decimals v with a <= v <= b (exclusive ends when ae/be; b < 0: none),
 * a and b whole.  Returns the number of alternatives written (0: none exist). */
static int number_magnitude(gbuf *o, long long a, int ae, long long b, int be)
{
    int alts = 0;
    if (b >= 0 && a == b) {
        if (ae || be) return 0;
        gb_printf(o, "\"%lld\" j-zfrac?", a);
        return 1;
    }
    if (b < 0 || a + 1 <= b - 1) { /* whole part strictly inside: any fraction */
        gb_str(o, "(");
        magnitude_range(o, a + 1, b < 0 ? -1 : b - 1);
        gb_str(o, " j-frac?)");
        alts++;
    }
    if (alts++) gb_str(o, " | ");
    gb_printf(o, ae ? "\"%lld\" j-nzfrac" : "\"%lld\" j-frac?", a);
    if (b >= 0 && !be) {
        gb_printf(o, " | \"%lld\" j-zfrac?", b);
        alts++;
    }
    return alts;
}

/* Numbers in [lo, hi] (whole bounds, exclusive when le/he; has_* = 0: none). */
static int number_range(gbuf *o, int has_lo, long long lo, int le, int has_hi, long long hi, int he)
{
    int alts = 0;
    gb_str(o, "(");
    if (!has_lo || lo < 0) { /* v < 0: magnitude m = -v in (a', b'] */
        long long a = has_hi && hi < 0 ? -hi : 0;
        int ae = has_hi && hi < 0 ? he : 1;
        long long b = has_lo ? -lo : -1;
        gbuf t = { 0 };
        int n = number_magnitude(&t, a, ae, b, le);
        gb_merge(o, n != 0, "\"-\" (", &t, ")");
        alts += n != 0;
    }
    if (!has_hi || hi > 0 || (hi == 0 && !he)) {
        gbuf t = { 0 };
        int n = number_magnitude(&t, has_lo && lo >= 0 ? lo : 0, has_lo && lo >= 0 ? le : 0, has_hi ? hi : -1, he);
        gb_merge(o, n != 0, alts ? " | " : "", &t, "");
        alts += n != 0;
    }
    gb_str(o, ")");
    return alts;
}

/* The numeric keywords of s as bounds for type (integer or number) into o. */
static int numeric(gen *g, json_t *s, int integer, gbuf *o)
{
    double mn = 0, mx = 0, xmn = 0, xmx = 0;
    int h_mn = get_bound(g, s, "minimum", &mn), h_mx = get_bound(g, s, "maximum", &mx);
    int h_xmn = get_bound(g, s, "exclusiveMinimum", &xmn), h_xmx = get_bound(g, s, "exclusiveMaximum", &xmx);
    if (g->rc) return g->rc;
    if (!h_mn && !h_mx && !h_xmn && !h_xmx) {
        gb_str(o, integer ? "j-integer" : "j-number");
        return 0;
    }
    double limit = integer ? INT_BOUND : NUM_BOUND;
    static const char *const names[4] = { "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum" };
    const double vals[4] = { mn, mx, xmn, xmx };
    const int has[4] = { h_mn, h_mx, h_xmn, h_xmx };
    for (int i = 0; i < 4; i++) {
        if (!has[i]) continue;
        if (fabs(vals[i]) > limit) return gfail(g, names[i], "'%s' beyond +-%g is not supported", names[i], limit);
        if (!integer && vals[i] != floor(vals[i]))
            return gfail(g, names[i], "'%s' of a number must be a whole number here (got %g)", names[i], vals[i]);
    }
    int has_lo = h_mn || h_xmn, has_hi = h_mx || h_xmx;
    long long lo = 0, hi = 0;
    int le = 0, he = 0;
    if (integer) { /* whole bounds, inclusive */
        if (h_mn) lo = (long long)ceil(mn);
        if (h_xmn && (!h_mn || (long long)floor(xmn) + 1 > lo)) lo = (long long)floor(xmn) + 1;
        if (h_mx) hi = (long long)floor(mx);
        if (h_xmx && (!h_mx || (long long)ceil(xmx) - 1 < hi)) hi = (long long)ceil(xmx) - 1;
    } else {
        if (h_mn) lo = (long long)mn;
        if (h_xmn && (!h_mn || xmn >= mn)) lo = (long long)xmn, le = 1;
        if (h_mx) hi = (long long)mx;
        if (h_xmx && (!h_mx || xmx <= mx)) hi = (long long)xmx, he = 1;
    }
    const char *which = h_mx ? "maximum" : "exclusiveMaximum";
    if (has_lo && has_hi && (lo > hi || (lo == hi && (le || he))))
        return gfail(g, which, "no %s lies between the bounds", integer ? "integer" : "number");
    if (integer) {
        integer_range(o, has_lo, lo, has_hi, hi);
        return 0;
    }
    if (!number_range(o, has_lo, lo, le, has_hi, hi, he)) return gfail(g, which, "no number lies between the bounds");
    return 0;
}

/* ---- Strings and the pattern subset -------------------------------------------------------- */

typedef struct {
    uint32_t lo, hi;
} cpr;

typedef struct {
    cpr v[512];
    int n;
    int overflow;
} cpset;

static void cps_add(cpset *s, uint32_t lo, uint32_t hi)
{
    if (s->n == (int)(sizeof s->v / sizeof s->v[0])) {
        s->overflow = 1;
        return;
    }
    s->v[s->n++] = (cpr){ lo, hi };
}

static int cmp_cpr(const void *a, const void *b)
{
    const cpr *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static void cps_normalize(cpset *s, int neg)
{
    if (s->n > 1) qsort(s->v, (size_t)s->n, sizeof s->v[0], cmp_cpr);
    int m = 0;
    for (int k = 0; k < s->n; k++) {
        if (m && s->v[k].lo <= s->v[m - 1].hi + 1) {
            if (s->v[k].hi > s->v[m - 1].hi) s->v[m - 1].hi = s->v[k].hi;
        } else {
            s->v[m++] = s->v[k];
        }
    }
    s->n = m;
    if (neg) {
        cpset c = { .n = 0 };
        uint32_t next = 0;
        for (int k = 0; k <= s->n; k++) {
            uint32_t lo = k < s->n ? s->v[k].lo : 0x110000;
            if (lo > next) cps_add(&c, next, lo - 1);
            if (k < s->n) next = s->v[k].hi + 1;
        }
        c.overflow |= s->overflow;
        *s = c;
    }
}

static int cps_has(const cpset *s, uint32_t c)
{
    for (int k = 0; k < s->n; k++)
        if (c >= s->v[k].lo && c <= s->v[k].hi) return 1;
    return 0;
}

/* One code point in a GBNF class, escaped. */
static void class_char(gbuf *o, uint32_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        gb_printf(o, "%c", (char)c);
    else if (c <= 0xFFFF)
        gb_printf(o, "\\u%04X", (unsigned)c);
    else
        gb_printf(o, "\\U%08X", (unsigned)c);
}

/* The JSON escape of a code point that must be escaped in a string. */
static const char *json_escape(uint32_t c, char buf[8])
{
    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: snprintf(buf, 8, "\\u%04x", (unsigned)c); return buf;
    }
}

/* A GBNF primary for "one character of s, as it is written inside a JSON string". */
static void emit_cpset(gbuf *o, const cpset *s)
{
    int alts = 0;
    gb_str(o, "(");
    /* the characters written as themselves: s minus controls, quote, backslash */
    gbuf cls = { 0 };
    int any = 0;
    for (int k = 0; k < s->n; k++) {
        uint32_t lo = s->v[k].lo, hi = s->v[k].hi;
        static const uint32_t cut[3] = { '"', '\\', 0x110000 };
        if (lo < 0x20) lo = 0x20;
        for (int q = 0; q < 3 && lo <= hi; q++) { /* the pieces between the excluded characters */
            if (cut[q] < lo) continue;
            uint32_t end = cut[q] - 1 < hi ? cut[q] - 1 : hi;
            if (lo <= end) {
                class_char(&cls, lo);
                if (end > lo) {
                    gb_str(&cls, "-");
                    class_char(&cls, end);
                }
                any = 1;
            }
            lo = cut[q] <= hi ? cut[q] + 1 : hi + 1;
        }
    }
    gb_merge(o, any, "[", &cls, "]");
    alts += any != 0;
    for (uint32_t c = 0; c < 0x20; c++) {
        if (!cps_has(s, c)) continue;
        char b[8];
        const char *e = json_escape(c, b);
        gb_str(o, alts++ ? " | " : "");
        gb_literal(o, e, strlen(e));
    }
    for (int q = 0; q < 2; q++) {
        uint32_t c = q ? '\\' : '"';
        if (!cps_has(s, c)) continue;
        char b[8];
        const char *e = json_escape(c, b);
        gb_str(o, alts++ ? " | " : "");
        gb_literal(o, e, strlen(e));
    }
    gb_str(o, ")");
}

typedef struct {
    const char *s;
    size_t n, i;
    gen *g;
    int depth;
} rx;

static int rx_fail(rx *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int rx_fail(rx *r, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return gfail(r->g, "pattern", "pattern: %s (at offset %zu)", msg, r->i);
}

static int rx_hex(rx *r, int digits, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < digits; k++) {
        if (r->i >= r->n) return rx_fail(r, "escape needs %d hex digits", digits);
        char c = r->s[r->i++];
        int h = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (h < 0) return rx_fail(r, "escape needs %d hex digits", digits);
        v = v * 16 + (uint32_t)h;
    }
    if (v >= 0xD800 && v <= 0xDFFF) return rx_fail(r, "surrogate code points are not supported");
    *out = v;
    return 0;
}

/* Decode one UTF-8 character of the pattern (jansson strings are valid UTF-8). */
static uint32_t rx_utf8(rx *r)
{
    unsigned char c = (unsigned char)r->s[r->i++];
    if (c < 0x80) return c;
    int need = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
    uint32_t cp = c & (0x3F >> need);
    for (int k = 0; k < need && r->i < r->n; k++) cp = (cp << 6) | ((unsigned char)r->s[r->i++] & 0x3F);
    return cp;
}

/* An escape after '\' (r->i at the character after it): a set of code points into
 * set (1) or a single one into *cp (0); negative on error. */
static int rx_escape(rx *r, cpset *set, uint32_t *cp, int in_class)
{
    if (r->i >= r->n) return rx_fail(r, "'\\' at the end");
    char c = r->s[r->i++];
    switch (c) {
    case 'd': cps_add(set, '0', '9'); return 1;
    case 'w': cps_add(set, '0', '9'), cps_add(set, 'A', 'Z'), cps_add(set, 'a', 'z'), cps_add(set, '_', '_'); return 1;
    case 's': cps_add(set, '\t', '\r'), cps_add(set, ' ', ' '); return 1;
    case 't': *cp = '\t'; return 0;
    case 'n': *cp = '\n'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    case 'x': return rx_hex(r, 2, cp) ? -1 : 0;
    case 'u': return rx_hex(r, 4, cp) ? -1 : 0;
    default: break;
    }
    if ((c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E)) {
        *cp = (uint32_t)c; /* escaped punctuation stands for itself */
        return 0;
    }
    r->i--;
    (void)in_class;
    return rx_fail(r, "the escape '\\%c' is not supported", c);
}

static int rx_class(rx *r, cpset *set)
{
    r->i++; /* '[' */
    int neg = 0;
    if (r->i < r->n && r->s[r->i] == '^') {
        neg = 1;
        r->i++;
    }
    int first = 1;
    while (r->i < r->n && (r->s[r->i] != ']' || first)) {
        first = 0;
        uint32_t lo;
        if (r->s[r->i] == '[') return rx_fail(r, "'[' inside a class is ambiguous; write '\\['");
        if (r->s[r->i] == '\\') {
            r->i++;
            size_t at = r->i;
            int k = rx_escape(r, set, &lo, 1);
            if (k < 0) return -1;
            if (k == 1) {
                if (neg) {
                    r->i = at;
                    return rx_fail(r,
                                   "\\d, \\w and \\s inside [^...] are not supported (their Unicode meaning differs)");
                }
                continue;
            }
        } else {
            lo = rx_utf8(r);
        }
        uint32_t hi = lo;
        if (r->i + 1 < r->n && r->s[r->i] == '-' && r->s[r->i + 1] != ']') {
            r->i++;
            if (r->s[r->i] == '\\') {
                r->i++;
                cpset dummy = { .n = 0 };
                int k = rx_escape(r, &dummy, &hi, 1);
                if (k < 0) return -1;
                if (k == 1) return rx_fail(r, "a class escape cannot end a range");
            } else {
                hi = rx_utf8(r);
            }
            if (hi < lo) return rx_fail(r, "reversed range in a class");
        }
        cps_add(set, lo, hi);
    }
    if (r->i >= r->n) return rx_fail(r, "unterminated '['");
    r->i++;
    cps_normalize(set, neg);
    if (set->overflow) return rx_fail(r, "class too large");
    /* surrogates never appear in text */
    cpset t = { .n = 0 };
    for (int k = 0; k < set->n; k++) {
        cpr a = set->v[k];
        if (a.hi < 0xD800 || a.lo > 0xDFFF) {
            cps_add(&t, a.lo, a.hi);
            continue;
        }
        if (a.lo < 0xD800) cps_add(&t, a.lo, 0xD7FF);
        if (a.hi > 0xDFFF) cps_add(&t, 0xE000, a.hi);
    }
    *set = t;
    if (set->n == 0) return rx_fail(r, "the class matches nothing");
    return 0;
}

static int rx_alt(rx *r, gbuf *o, int top);

/* A quantifier after an atom, appended to o; 0 if none. */
static int rx_quant(rx *r, gbuf *o)
{
    if (r->i >= r->n) return 0;
    char c = r->s[r->i];
    if (c == '*' || c == '+' || c == '?') {
        r->i++;
        gb_printf(o, "%c", c);
    } else if (c == '{') {
        size_t start = r->i++;
        long m = -1, n = -1;
        int comma = 0;
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9' && m < 100000)
            m = (m < 0 ? 0 : m * 10) + (r->s[r->i++] - '0');
        if (r->i < r->n && r->s[r->i] == ',') {
            comma = 1;
            r->i++;
            while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9' && n < 100000)
                n = (n < 0 ? 0 : n * 10) + (r->s[r->i++] - '0');
        }
        if (m < 0 || r->i >= r->n || r->s[r->i] != '}') {
            r->i = start;
            return rx_fail(r, "'{' must start a repetition {m}, {m,} or {m,n} (write '\\{' for the character)");
        }
        r->i++;
        if (!comma) n = m;
        if ((n >= 0 && n < m) || m > MAX_REGEX_REPEAT || n > MAX_REGEX_REPEAT) {
            r->i = start;
            return rx_fail(r, "repetition {%ld,%ld} is out of range (at most %d)", m, n, MAX_REGEX_REPEAT);
        }
        if (n < 0)
            gb_printf(o, "{%ld,}", m);
        else
            gb_printf(o, "{%ld,%ld}", m, n);
    } else {
        return 0;
    }
    if (r->i < r->n && r->s[r->i] == '?')
        r->i++; /* lazy: the same set of matches */
    else if (r->i < r->n && r->s[r->i] == '+')
        return rx_fail(r, "possessive quantifiers are not supported");
    if (r->i < r->n && (r->s[r->i] == '*' || r->s[r->i] == '+' || r->s[r->i] == '?' || r->s[r->i] == '{'))
        return rx_fail(r, "a quantifier cannot follow another");
    return 0;
}

static int rx_seq(rx *r, gbuf *o, int top, int *anchored_end)
{
    int items = 0;
    gb_str(o, "(");
    while (r->i < r->n && r->s[r->i] != '|' && r->s[r->i] != ')') {
        char c = r->s[r->i];
        if (c == '$') {
            r->i++;
            if (!top || (r->i < r->n && r->s[r->i] != '|'))
                return rx_fail(r, "'$' is supported only at the end of a top-level alternative");
            *anchored_end = 1;
            break;
        }
        if (c == '^') return rx_fail(r, "'^' is supported only at the start of a top-level alternative");
        if (c == '*' || c == '+' || c == '?' || c == '{') return rx_fail(r, "a quantifier needs something before it");
        gb_str(o, items++ ? " " : "");
        if (c == '(') {
            r->i++;
            if (r->i < r->n && r->s[r->i] == '?') {
                if (r->i + 1 < r->n && r->s[r->i + 1] == ':') {
                    r->i += 2;
                } else {
                    return rx_fail(r, "lookarounds and named groups are not supported");
                }
            }
            if (++r->depth > 50) return rx_fail(r, "groups nested too deeply");
            if (rx_alt(r, o, 0)) return -1;
            r->depth--;
            if (r->i >= r->n || r->s[r->i] != ')') return rx_fail(r, "missing ')'");
            r->i++;
        } else if (c == ')') {
            break;
        } else if (c == '[') {
            cpset set = { .n = 0 };
            if (rx_class(r, &set)) return -1;
            emit_cpset(o, &set);
        } else if (c == '.') {
            r->i++;
            cpset set = { .n = 0 }; /* any character but the line terminators of ECMA-262 (Python's: \n) */
            cps_add(&set, '\n', '\n'), cps_add(&set, '\r', '\r'), cps_add(&set, 0x2028, 0x2029);
            cps_add(&set, 0xD800, 0xDFFF);
            cps_normalize(&set, 1);
            emit_cpset(o, &set);
        } else {
            cpset set = { .n = 0 };
            uint32_t cp;
            if (c == '\\') {
                r->i++;
                int k = rx_escape(r, &set, &cp, 0);
                if (k < 0) return -1;
                if (k == 0) cps_add(&set, cp, cp);
                cps_normalize(&set, 0);
            } else {
                cp = rx_utf8(r);
                cps_add(&set, cp, cp);
            }
            emit_cpset(o, &set);
        }
        if (rx_quant(r, o)) return -1;
    }
    if (!items) gb_str(o, "\"\"");
    gb_str(o, ")");
    return 0;
}

/* Alternatives; at the top level each may be anchored with ^ and $, and is
 * otherwise surrounded by any characters (a pattern matches anywhere). */
static int rx_alt(rx *r, gbuf *o, int top)
{
    gb_str(o, "(");
    for (int alt = 0;; alt++) {
        if (alt) gb_str(o, " | ");
        int start = 0, end = 0;
        if (top && r->i < r->n && r->s[r->i] == '^') {
            start = 1;
            r->i++;
        }
        if (top && !start) gb_str(o, "j-char* ");
        if (rx_seq(r, o, top, &end)) return -1;
        if (top && !end) gb_str(o, " j-char*");
        if (r->i < r->n && r->s[r->i] == '|') {
            r->i++;
            continue;
        }
        break;
    }
    gb_str(o, ")");
    if (top && r->i < r->n) return rx_fail(r, "unmatched ')'");
    return 0;
}

static int string_rule(gen *g, json_t *s, gbuf *o)
{
    long mn = 0, mx = -1;
    int h_mn = get_count(g, s, "minLength", &mn), h_mx = get_count(g, s, "maxLength", &mx);
    if (g->rc) return g->rc;
    json_t *pat = json_object_get(s, "pattern");
    if (pat) {
        if (!json_is_string(pat)) return gfail(g, "pattern", "'pattern' must be a string");
        if (h_mn || h_mx)
            return gfail(g, h_mn ? "minLength" : "maxLength", "'%s' cannot be combined with 'pattern' here",
                         h_mn ? "minLength" : "maxLength");
        rx r = { json_string_value(pat), json_string_length(pat), 0, g, 0 };
        gb_str(o, "\"\\\"\" ");
        if (rx_alt(&r, o, 1)) return g->rc;
        gb_str(o, " \"\\\"\"");
        return 0;
    }
    if (h_mx && mx < mn) return gfail(g, "maxLength", "'maxLength' is below 'minLength'");
    if (!h_mn && !h_mx) {
        gb_str(o, "j-string");
        return 0;
    }
    if (h_mx)
        gb_printf(o, "\"\\\"\" j-char{%ld,%ld} \"\\\"\"", mn, mx);
    else
        gb_printf(o, "\"\\\"\" j-char{%ld,} \"\\\"\"", mn);
    return 0;
}

/* ---- Arrays and objects -------------------------------------------------------------------- */

static int array_rule(gen *g, json_t *s, gbuf *o)
{
    long mn = 0, mx = -1;
    get_count(g, s, "minItems", &mn);
    int h_mx = get_count(g, s, "maxItems", &mx);
    if (g->rc) return g->rc;
    json_t *u = json_object_get(s, "uniqueItems");
    if (u && !json_is_false(u))
        return gfail(g, "uniqueItems",
                     json_is_true(u) ? "'uniqueItems': true is not supported" : "'uniqueItems' must be a boolean");
    if (h_mx && mx < mn) return gfail(g, "maxItems", "'maxItems' is below 'minItems'");
    json_t *items = json_object_get(s, "items");
    rname item = { "j-value" };
    if (items) {
        if (json_is_array(items))
            return gfail(g, "items", "'items' must be a schema (the array form is prefixItems, not supported)");
        if (json_is_false(items)) {
            if (mn > 0) return gfail(g, "items", "'items': false allows no items but minItems is %ld", mn);
            mx = 0, h_mx = 1;
        } else {
            size_t mark = path_key(g, "items");
            int id = compile(g, items);
            path_restore(g, mark);
            if (id < 0) return id;
            item = rule_name(id);
        }
    }
    if (h_mx && mx == 0) {
        gb_str(o, "\"[\" ws \"]\"");
        return 0;
    }
    gb_str(o, "\"[\" ws ");
    if (mn == 0) gb_str(o, "( ");
    gb_printf(o, "%s ws ( \",\" ws %s ws )", item.name, item.name);
    long lo = mn > 0 ? mn - 1 : 0;
    if (h_mx)
        gb_printf(o, "{%ld,%ld}", lo, mx - 1);
    else
        gb_printf(o, "{%ld,}", lo);
    if (mn == 0) gb_str(o, " )?");
    gb_str(o, " \"]\"");
    return 0;
}

typedef struct {
    const char *key;
    json_t *schema; /* NULL: any value (required but not declared) */
    int required;
} prop;

static int object_rule(gen *g, json_t *s, gbuf *o)
{
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    json_t *add = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) return gfail(g, "properties", "'properties' must be an object");
    if (req && !json_is_array(req)) return gfail(g, "required", "'required' must be an array of strings");
    if (add && !json_is_boolean(add))
        return gfail(g, "additionalProperties",
                     "'additionalProperties' must be true or false here (a schema is not supported)");
    size_t np = props ? json_object_size(props) : 0, nr = req ? json_array_size(req) : 0;
    for (size_t i = 0; i < nr; i++) {
        json_t *x = json_array_get(req, i);
        if (!json_is_string(x)) {
            size_t mark = path_key(g, "required");
            path_index(g, i);
            gfail(g, NULL, "'required' must hold strings");
            path_restore(g, mark);
            return g->rc;
        }
        for (size_t j = 0; j < i; j++)
            if (json_equal(x, json_array_get(req, j)))
                return gfail(g, "required", "'required' lists '%.60s' twice", json_string_value(x));
    }
    if (np == 0 && nr == 0 && !json_is_false(add)) {
        gb_str(o, "j-object");
        return 0;
    }
    prop *ps = calloc(np + nr + 1, sizeof *ps);
    if (!ps) return goom(g);
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v)
    {
        int r = 0;
        for (size_t i = 0; i < nr; i++) r |= !strcmp(json_string_value(json_array_get(req, i)), k);
        ps[n++] = (prop){ k, v, r };
    }
    for (size_t i = 0; i < nr; i++) {
        const char *name = json_string_value(json_array_get(req, i));
        if (!props || !json_object_get(props, name)) ps[n++] = (prop){ name, NULL, 1 };
    }
    /* each property's member text: "key" ws ":" ws VALUE ws */
    char **member = calloc(n + 1, sizeof *member);
    int rc = member ? 0 : goom(g);
    for (size_t i = 0; !rc && i < n; i++) {
        rname val = { "j-value" };
        if (ps[i].schema) {
            size_t mark = path_key(g, "properties");
            path_key(g, ps[i].key);
            int id = compile(g, ps[i].schema);
            path_restore(g, mark);
            if (id < 0) {
                rc = id;
                break;
            }
            val = rule_name(id);
        }
        json_t *ks = json_string(ps[i].key);
        char *kj = ks ? json_dumps(ks, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        json_decref(ks);
        gbuf m = { 0 };
        if (kj) gb_literal(&m, kj, strlen(kj));
        gb_printf(&m, " ws \":\" ws %s ws", val.name);
        free(kj);
        if (!kj || m.oom) {
            free(m.d);
            rc = goom(g);
            break;
        }
        member[i] = m.d;
    }
    if (!rc && n == 0) {
        gb_str(o, "\"{\" ws \"}\"");
    } else if (!rc) {
        /* first[i]: properties i.. with none written yet; rest[i]: some written (so
         * each present one is preceded by a comma).  Built from the end. */
        int next_first = -1, next_rest = -1;
        for (size_t ii = n; ii-- > 0 && !rc;) {
            gbuf rb = { 0 }, fb = { 0 };
            rname nr_ = rule_name(next_rest), nf_ = rule_name(next_first);
            const char *rest_after = next_rest >= 0 ? nr_.name : "";
            if (ps[ii].required) {
                gb_printf(&rb, "\",\" ws %s %s", member[ii], rest_after);
                gb_printf(&fb, "%s %s", member[ii], rest_after);
            } else {
                gb_printf(&rb, "( \",\" ws %s )? %s", member[ii], rest_after);
                gb_printf(&fb, "%s %s | %s", member[ii], rest_after, next_first >= 0 ? nf_.name : "\"\"");
            }
            int idr = g->n_rules++, idf = g->n_rules++;
            emit_rule(g, idr, &rb);
            emit_rule(g, idf, &fb);
            if (rb.oom || fb.oom) rc = goom(g);
            free(rb.d);
            free(fb.d);
            next_rest = idr;
            next_first = idf;
        }
        if (!rc) gb_printf(o, "\"{\" ws %s \"}\"", rule_name(next_first).name);
    }
    for (size_t i = 0; member && i < n; i++) free(member[i]);
    free(member);
    free(ps);
    return rc ? rc : g->rc;
}

/* ---- $ref, enum, anyOf, type ------------------------------------------------------------------ */

/* Resolve "#..." (a JSON pointer) in the root document. */
static json_t *resolve(gen *g, const char *ref, char *where, size_t where_len)
{
    if (ref[0] != '#') return NULL;
    json_t *cur = g->root;
    const char *p = ref + 1;
    where[0] = 0;
    size_t wl = 0;
    if (*p && *p != '/') return NULL;
    while (*p == '/') {
        p++;
        char tok[256];
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof tok) {
            if (p[0] == '~' && p[1] == '0')
                tok[n++] = '~', p += 2;
            else if (p[0] == '~' && p[1] == '1')
                tok[n++] = '/', p += 2;
            else
                tok[n++] = *p++;
        }
        tok[n] = 0;
        if (*p && *p != '/') return NULL;
        int w = snprintf(where + wl, where_len - wl, "%s%s", wl ? "." : "", tok);
        if (w > 0) wl = wl + (size_t)w < where_len ? wl + (size_t)w : where_len - 1;
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            long i = strtol(tok, &end, 10);
            cur = (*tok && !*end && i >= 0) ? json_array_get(cur, (size_t)i) : NULL;
        } else {
            cur = NULL;
        }
        if (!cur) return NULL;
    }
    return cur;
}

static int ref_rule(gen *g, json_t *s)
{
    static const char *const allowed[] = { "$ref" };
    const char *other = other_constraint(s, allowed, 1, g->depth == 1);
    if (other)
        return gfail(g, other, "'%.60s' beside '$ref' is not supported (put the constraint in the referenced schema)",
                     other);
    json_t *ref = json_object_get(s, "$ref");
    if (!json_is_string(ref)) return gfail(g, "$ref", "'$ref' must be a string");
    char where[256];
    json_t *target = resolve(g, json_string_value(ref), where, sizeof where);
    if (!target)
        return gfail(g, "$ref",
                     "'$ref' '%.80s' does not resolve (only '#' and '#/...' pointers into this schema are supported)",
                     json_string_value(ref));
    for (int i = 0; i < g->n_refs; i++)
        if (g->refs[i].node == target) return g->refs[i].rule;
    if (g->n_refs == g->cap_refs) {
        int nc = g->cap_refs ? 2 * g->cap_refs : 16;
        ref_entry *q = realloc(g->refs, (size_t)nc * sizeof *q);
        if (!q) return goom(g);
        g->refs = q;
        g->cap_refs = nc;
    }
    int id = g->n_rules++;
    g->refs[g->n_refs++] = (ref_entry){ target, id };
    /* compile the target where it lives, so errors inside it name its own path */
    char saved[sizeof g->path];
    size_t saved_len = g->plen;
    memcpy(saved, g->path, sizeof saved);
    snprintf(g->path, sizeof g->path, "%s", where);
    g->plen = strlen(g->path);
    int inner = compile(g, target);
    memcpy(g->path, saved, sizeof saved);
    g->plen = saved_len;
    if (inner < 0) return inner;
    gbuf b = { 0 };
    gb_str(&b, rule_name(inner).name);
    /* the alias line carries the path of the $ref itself */
    size_t mark = path_key(g, "$ref");
    emit_rule(g, id, &b);
    path_restore(g, mark);
    int oom = b.oom;
    free(b.d);
    return oom ? goom(g) : id;
}

static int type_matches(json_t *v, const char *t)
{
    if (!strcmp(t, "null")) return json_is_null(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "integer"))
        return json_is_integer(v) || (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)));
    return 0;
}

static const char *const type_names[] = { "null", "boolean", "object", "array", "string", "integer", "number" };

/* The listed types as a bit set over type_names; 0 and an error if bad. */
static int read_types(gen *g, json_t *t, unsigned *mask)
{
    json_t *one[1] = { t };
    size_t n = 1;
    json_t **items = one;
    if (json_is_array(t)) {
        n = json_array_size(t);
        if (n == 0) return gfail(g, "type", "'type' must not be an empty list");
        items = NULL;
    }
    *mask = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *x = items ? items[i] : json_array_get(t, i);
        int found = -1;
        for (int k = 0; json_is_string(x) && k < 7; k++)
            if (!strcmp(json_string_value(x), type_names[k])) found = k;
        if (found < 0)
            return gfail(
                g, "type",
                "'type' must be one of null, boolean, object, array, string, integer, number (or a list of them)");
        *mask |= 1u << found;
    }
    return 0;
}

static int enum_rule(gen *g, json_t *s, unsigned types, int has_types, gbuf *o)
{
    static const char *const allowed[] = { "enum", "const", "type" };
    const char *other = other_constraint(s, allowed, 3, g->depth == 1);
    if (other) return gfail(g, other, "'%.60s' beside 'enum'/'const' is not supported", other);
    json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const");
    if (en && (!json_is_array(en) || json_array_size(en) == 0))
        return gfail(g, "enum", "'enum' must be a non-empty array");
    size_t n = en ? json_array_size(en) : 1;
    int alts = 0;
    gb_str(o, "(");
    for (size_t i = 0; i < n; i++) {
        json_t *v = en ? json_array_get(en, i) : cn;
        if (en && cn && !json_equal(v, cn)) continue;
        int ok = !has_types;
        for (int k = 0; k < 7 && !ok; k++) ok = (types >> k & 1u) && type_matches(v, type_names[k]);
        if (!ok) continue;
        char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!text) return goom(g);
        gb_str(o, alts++ ? " | " : "");
        gb_literal(o, text, strlen(text));
        free(text);
    }
    gb_str(o, ")");
    if (!alts)
        return gfail(g, en ? "enum" : "const", "no value of '%s' is allowed by the other keywords",
                     en ? "enum" : "const");
    return 0;
}

static int any_of_rule(gen *g, json_t *s, gbuf *o)
{
    static const char *const allowed[] = { "anyOf" };
    const char *other = other_constraint(s, allowed, 1, g->depth == 1);
    if (other) return gfail(g, other, "'%.60s' beside 'anyOf' is not supported (move it into each branch)", other);
    json_t *a = json_object_get(s, "anyOf");
    if (!json_is_array(a) || json_array_size(a) == 0)
        return gfail(g, "anyOf", "'anyOf' must be a non-empty array of schemas");
    gb_str(o, "(");
    for (size_t i = 0; i < json_array_size(a); i++) {
        size_t mark = path_key(g, "anyOf");
        path_index(g, i);
        int id = compile(g, json_array_get(a, i));
        path_restore(g, mark);
        if (id < 0) return id;
        gb_str(o, i ? " | " : "");
        gb_str(o, rule_name(id).name);
    }
    gb_str(o, ")");
    return 0;
}

static int compile_object(gen *g, json_t *s, int id)
{
    gbuf b = { 0 };
    int rc = check_keywords(g, s, g->depth == 1);
    if (!rc && json_object_get(s, "$ref")) {
        int r = ref_rule(g, s);
        if (r < 0) return r;
        gb_str(&b, rule_name(r).name);
    } else if (!rc && json_object_get(s, "anyOf")) {
        rc = any_of_rule(g, s, &b);
    } else if (!rc) {
        json_t *t = json_object_get(s, "type");
        unsigned types = 0;
        if (t) rc = read_types(g, t, &types);
        /* which families of keywords are present, and do they fit the types */
        int fam = 0;
        const char *k;
        json_t *v;
        json_object_foreach(s, k, v)
        {
            int f = keyword_family(k);
            fam |= f;
            if (!rc && t && f) {
                unsigned need = f == F_OBJECT   ? 1u << 2
                                : f == F_ARRAY  ? 1u << 3
                                : f == F_STRING ? 1u << 4
                                                : (1u << 5) | (1u << 6);
                if (!(types & need)) rc = gfail(g, k, "'%.60s' does not apply to the schema's type", k);
            }
        }
        if (!rc && (json_object_get(s, "enum") || json_object_get(s, "const"))) {
            rc = enum_rule(g, s, types, t != NULL, &b);
        } else if (!rc) {
            if (!t) { /* no type: the keywords present decide; none: any value */
                if (!fam) {
                    gb_str(&b, "j-value");
                    types = 0;
                } else {
                    types = (fam & F_OBJECT ? 1u << 2 : 0) | (fam & F_ARRAY ? 1u << 3 : 0) |
                            (fam & F_STRING ? 1u << 4 : 0) | (fam & F_NUMERIC ? 1u << 6 : 0);
                }
            }
            if (types & (1u << 6)) types &= ~(1u << 5); /* number includes integer */
            int alts = 0;
            for (int k2 = 0; k2 < 7 && !rc; k2++) {
                if (!(types >> k2 & 1u)) continue;
                gb_str(&b, alts++ ? " | " : "( ");
                switch (k2) {
                case 0: gb_str(&b, "\"null\""); break;
                case 1: gb_str(&b, "\"true\" | \"false\""); break;
                case 2: rc = object_rule(g, s, &b); break;
                case 3: rc = array_rule(g, s, &b); break;
                case 4: rc = string_rule(g, s, &b); break;
                case 5: rc = numeric(g, s, 1, &b); break;
                default: rc = numeric(g, s, 0, &b); break;
                }
            }
            if (alts) gb_str(&b, " )");
        }
    }
    if (!rc && !g->rc) emit_rule(g, id, &b);
    if (b.oom) goom(g);
    free(b.d);
    return g->rc ? g->rc : rc ? rc : id;
}

static int compile(gen *g, json_t *s)
{
    if (g->rc) return g->rc;
    if (++g->depth > MAX_DEPTH) {
        g->depth--;
        return gfail(g, NULL, "the schema is nested more than %d levels deep", MAX_DEPTH);
    }
    int id;
    if (json_is_true(s))
        id = text_rule(g, "j-value");
    else if (json_is_false(s))
        id = gfail(g, NULL, "the schema false matches nothing");
    else if (!json_is_object(s))
        id = gfail(g, NULL, "a schema must be an object or a boolean");
    else
        id = compile_object(g, s, g->n_rules++);
    g->depth--;
    return id;
}

static void gen_release(gen *g)
{
    free(g->out.d);
    for (int i = 0; i < g->n_lines; i++) free(g->lines[i].path);
    free(g->lines);
    free(g->refs);
}

/* Generate into g (root rule, rules, shared rules). */
static int generate(gen *g, json_t *schema)
{
    int id = compile(g, schema);
    if (id < 0) return id;
    gb_printf(&g->out, "root ::= ws r%d\n", id);
    gb_str(&g->out, JSON_RULES);
    return g->out.oom ? goom(g) : 0;
}

int schema_to_gbnf(json_t *schema, char **gbnf, size_t *len, schema_error *err)
{
    if (err) memset(err, 0, sizeof *err);
    if (!schema || !gbnf) return SCHEMA_EINVAL;
    gen g = { .root = schema, .err = err };
    int rc = generate(&g, schema);
    if (rc) {
        gen_release(&g);
        return rc;
    }
    *gbnf = g.out.d;
    if (len) *len = g.out.n;
    g.out.d = NULL;
    gen_release(&g);
    return SCHEMA_OK;
}

int schema_compile(json_t *schema, sampler_grammar **out, schema_error *err)
{
    if (err) memset(err, 0, sizeof *err);
    if (!schema || !out) return SCHEMA_EINVAL;
    *out = NULL;
    gen g = { .root = schema, .err = err };
    int rc = generate(&g, schema);
    if (!rc) {
        sampler_grammar_error ge;
        int grc = sampler_grammar_parse(out, g.out.d, g.out.n, &ge);
        if (grc == SAMPLER_ENOMEM) {
            rc = goom(&g);
        } else if (grc != SAMPLER_OK) {
            /* the rule the grammar compiler pointed at, and the schema path behind it */
            const char *path = "";
            for (int i = 0; i < g.n_lines; i++)
                if (g.lines[i].off <= ge.offset) path = g.lines[i].path;
            rc = SCHEMA_EINVAL;
            if (err) {
                snprintf(err->path, sizeof err->path, "%s", path);
                if (strstr(ge.message, "can never finish"))
                    snprintf(err->message, sizeof err->message,
                             "the schema has no finite instance: it requires itself again on every branch");
                else if (strstr(ge.message, "too large"))
                    snprintf(err->message, sizeof err->message,
                             "the schema is too large to compile (repetition bounds add up past the grammar's limit)");
                else
                    snprintf(err->message, sizeof err->message, "the schema's grammar does not compile: %s",
                             ge.message);
            }
        }
    }
    gen_release(&g);
    return rc;
}

int schema_compile_json_object(sampler_grammar **out)
{
    int rc = sampler_grammar_parse(out, schema_json_object_gbnf, strlen(schema_json_object_gbnf), NULL);
    return rc == SAMPLER_OK ? SCHEMA_OK : rc == SAMPLER_ENOMEM ? SCHEMA_ENOMEM : SCHEMA_EINVAL;
}

int schema_choice_to_gbnf(const char *const *s, const size_t *len, int n, char **gbnf, size_t *glen)
{
    if (!s || !len || n < 1 || !gbnf) return SCHEMA_EINVAL;
    gbuf b = { 0 };
    gb_str(&b, "root ::= ");
    for (int i = 0; i < n; i++) {
        gb_str(&b, i ? " | " : "");
        gb_literal(&b, s[i], len[i]);
    }
    gb_str(&b, "\n");
    if (b.oom) {
        free(b.d);
        return SCHEMA_ENOMEM;
    }
    *gbnf = b.d;
    if (glen) *glen = b.n;
    return SCHEMA_OK;
}

int schema_compile_choice(const char *const *s, const size_t *len, int n, sampler_grammar **out, schema_error *err)
{
    if (err) memset(err, 0, sizeof *err);
    if (!out) return SCHEMA_EINVAL;
    char *text = NULL;
    size_t tlen = 0;
    int rc = schema_choice_to_gbnf(s, len, n, &text, &tlen);
    if (rc) return rc;
    sampler_grammar_error ge;
    rc = sampler_grammar_parse(out, text, tlen, &ge);
    free(text);
    if (rc == SAMPLER_OK) return SCHEMA_OK;
    if (rc == SAMPLER_ENOMEM) return SCHEMA_ENOMEM;
    if (err) /* a string that is not valid UTF-8 (jansson's are) */
        snprintf(err->message, sizeof err->message, "a choice could not be compiled: %s", ge.message);
    return SCHEMA_EINVAL;
}
