/* test_constraint.c -- the request fields that constrain output and the table of
 * compiled grammars (server/constraint.c): each kind gives a cache whose grammar
 * matches what it should, every bad field is refused with its parameter path, the
 * table shares caches by text and lets the least recently used go. */
#include "server/constraint.h"

#include <criterion/criterion.h>
#include <string.h>

/* A vocabulary of the 256 bytes, "ab", and an end token; or, with `no_quote`, one
 * without a token for '"'. */
static int g_no_quote;

static const char *bytes_of(void *user, int32_t id, size_t *len)
{
    static char one[256];
    (void)user;
    if (id == 256) return NULL;
    if (id == 257) {
        *len = 2;
        return "ab";
    }
    if (g_no_quote && id == '"') return NULL;
    one[id] = (char)id;
    *len = 1;
    return &one[id];
}

static sampler_vocab *vocab(int no_quote)
{
    g_no_quote = no_quote;
    sampler_vocab *v = NULL;
    int32_t end = 256;
    cr_assert_eq(sampler_vocab_new(&v, 258, bytes_of, NULL, &end, 1), SAMPLER_OK);
    return v;
}

static int from_body(constraint_table *t, const char *body, sampler_constraint_cache **cc, constraint_error *e)
{
    json_error_t je;
    json_t *root = json_loads(body, 0, &je);
    cr_assert_not_null(root, "bad test JSON %s: %s", body, je.text);
    int rc = constraint_from_request(t, root, cc, e);
    json_decref(root);
    return rc;
}

static int match(sampler_constraint_cache *cc, const char *s)
{
    return sampler_grammar_match(sampler_constraint_cache_grammar(cc), s, strlen(s));
}

Test(constraint, each_kind_gives_its_language)
{
    sampler_vocab *v = vocab(0);
    constraint_table *t = constraint_table_new(v, 4);
    sampler_constraint_cache *cc = NULL;
    constraint_error e;
    cr_assert_eq(from_body(t, "{\"prompt\": \"x\"}", &cc, &e), 0);
    cr_assert_null(cc, "no constraint fields: no cache");
    cr_assert_eq(from_body(t, "{\"response_format\": {\"type\": \"text\"}}", &cc, &e), 0);
    cr_assert_null(cc, "'text' is no constraint");
    cr_assert_eq(from_body(t, "{\"response_format\": null, \"grammar\": null, \"choice\": null}", &cc, &e), 0);
    cr_assert_null(cc);

    cr_assert_eq(from_body(t, "{\"response_format\": {\"type\": \"json_object\"}}", &cc, &e), 0, "%s", e.message);
    cr_assert_eq(match(cc, "{\"a\": [1]}"), SAMPLER_MATCH_FULL);
    cr_assert_eq(match(cc, "[1]"), SAMPLER_MATCH_NONE);
    sampler_constraint_cache_free(cc);

    cr_assert_eq(from_body(t,
                           "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"n\", "
                           "\"strict\": true, \"description\": \"d\", \"schema\": {\"type\": \"integer\", "
                           "\"minimum\": 1, \"maximum\": 3}}}}",
                           &cc, &e),
                 0, "%s", e.message);
    cr_assert_eq(match(cc, "2"), SAMPLER_MATCH_FULL);
    cr_assert_eq(match(cc, "4"), SAMPLER_MATCH_NONE);
    sampler_constraint_cache_free(cc);

    cr_assert_eq(from_body(t, "{\"grammar\": \"root ::= [a-c]+ \\\"!\\\"\"}", &cc, &e), 0, "%s", e.message);
    cr_assert_eq(match(cc, "abc!"), SAMPLER_MATCH_FULL);
    sampler_constraint_cache_free(cc);

    cr_assert_eq(from_body(t, "{\"choice\": [\"yes\", \"no\", \"a \\\"quoted\\\\ \\n\xC3\xA9\"]}", &cc, &e), 0, "%s",
                 e.message);
    cr_assert_eq(match(cc, "no"), SAMPLER_MATCH_FULL);
    cr_assert_eq(match(cc, "a \"quoted\\ \n\xC3\xA9"), SAMPLER_MATCH_FULL);
    cr_assert_eq(match(cc, "maybe"), SAMPLER_MATCH_NONE);
    sampler_constraint_cache_free(cc);
    constraint_table_free(t);
    sampler_vocab_free(v);
}

typedef struct {
    const char *body;
    const char *param;
    const char *message;
    const char *code;
} bad_case;

Test(constraint, refusals_name_the_parameter)
{
    static const bad_case cs[] = {
        { "{\"response_format\": \"json\"}", "response_format", "must be an object", "invalid_type" },
        { "{\"response_format\": {}}", "response_format.type", "must be 'text'", "invalid_value" },
        { "{\"response_format\": {\"type\": \"xml\"}}", "response_format.type", "got 'xml'", "invalid_value" },
        { "{\"response_format\": {\"type\": \"text\", \"x\": 1}}", "response_format.x", "no field", "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_object\", \"schema\": {}}}", "response_format.schema", "no field",
          "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_schema\"}}", "response_format.json_schema", "is required",
          "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": []}}", "response_format.json_schema",
          "must be an object", "invalid_type" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": 1, \"schema\": {}}}}",
          "response_format.json_schema.name", "must be a string", "invalid_type" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"strict\": 1, \"schema\": {}}}}",
          "response_format.json_schema.strict", "must be a boolean", "invalid_type" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {}, \"extra\": 1}}}",
          "response_format.json_schema.extra", "no field", "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"n\"}}}",
          "response_format.json_schema.schema", "is required", "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {\"type\": \"object\", "
          "\"properties\": {\"age\": {\"type\": \"integer\", \"format\": \"int32\"}}}}}}",
          "response_format.json_schema.schema.properties.age.format", "unsupported JSON Schema keyword 'format'",
          "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": false}}}",
          "response_format.json_schema.schema", "matches nothing", "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\": {\"$defs\": {\"a\": "
          "{\"$ref\": \"#/$defs/a\"}}, \"$ref\": \"#/$defs/a\"}}}}",
          "response_format.json_schema.schema.$defs.a", "no finite instance", "invalid_value" },
        { "{\"grammar\": 5}", "grammar", "must be a string", "invalid_type" },
        { "{\"grammar\": \"root ::= \\\"a\\\"\\nx ::= y\"}", "grammar", "line 2, column 7: undefined rule 'y'",
          "invalid_value" },
        { "{\"grammar\": \"\"}", "grammar", "no rule named 'root'", "invalid_value" },
        { "{\"choice\": \"yes\"}", "choice", "must be an array", "invalid_type" },
        { "{\"choice\": []}", "choice", "1 to 1024", "invalid_value" },
        { "{\"choice\": [\"a\", 2]}", "choice[1]", "must be a string", "invalid_type" },
        { "{\"choice\": [\"a\", \"\"]}", "choice[1]", "non-empty", "invalid_value" },
        { "{\"choice\": [\"a\\u0000b\"]}", "choice[0]", "NUL", "invalid_value" },
        { "{\"grammar\": \"root ::= \\\"a\\\"\", \"choice\": [\"a\"]}", "choice", "cannot be combined with 'grammar'",
          "invalid_value" },
        { "{\"response_format\": {\"type\": \"json_object\"}, \"grammar\": \"root ::= \\\"a\\\"\"}", "grammar",
          "cannot be combined with 'response_format'", "invalid_value" },
    };
    sampler_vocab *v = vocab(0);
    constraint_table *t = constraint_table_new(v, 4);
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        sampler_constraint_cache *cc = (sampler_constraint_cache *)1;
        constraint_error e;
        json_t *root = json_loads(cs[k].body, JSON_ALLOW_NUL, NULL);
        cr_assert_not_null(root, "bad test JSON %s", cs[k].body);
        cr_expect_eq(constraint_from_request(t, root, &cc, &e), -1, "%s accepted", cs[k].body);
        json_decref(root);
        cr_expect_null(cc);
        cr_expect_eq(e.status, 400);
        cr_expect_str_eq(e.param, cs[k].param, "%s: param [%s] (%s)", cs[k].body, e.param, e.message);
        cr_expect(strstr(e.message, cs[k].message) != NULL, "%s: message [%s] lacks [%s]", cs[k].body, e.message,
                  cs[k].message);
        cr_expect_str_eq(e.code, cs[k].code, "%s", cs[k].body);
    }
    /* no table: refused, never ignored */
    sampler_constraint_cache *cc = NULL;
    constraint_error e;
    cr_assert_eq(from_body(NULL, "{\"choice\": [\"a\"]}", &cc, &e), -1);
    cr_assert_str_eq(e.param, "choice");
    constraint_table_free(t);
    sampler_vocab_free(v);
}

Test(constraint, bytes_the_vocabulary_cannot_write_are_refused)
{
    sampler_vocab *v = vocab(1);
    cr_assert(!sampler_vocab_has_byte(v, '"'));
    constraint_table *t = constraint_table_new(v, 2);
    sampler_constraint_cache *cc = NULL;
    constraint_error e;
    cr_assert_eq(from_body(t, "{\"response_format\": {\"type\": \"json_object\"}}", &cc, &e), -1);
    cr_assert_str_eq(e.param, "response_format");
    cr_assert(strstr(e.message, "0x22") != NULL, "%s", e.message);
    cr_assert_eq(from_body(t, "{\"choice\": [\"say \\\"hi\\\"\"]}", &cc, &e), -1);
    cr_assert_str_eq(e.param, "choice");
    /* a grammar that never needs the byte is fine */
    cr_assert_eq(from_body(t, "{\"choice\": [\"hi\"]}", &cc, &e), 0, "%s", e.message);
    sampler_constraint_cache_free(cc);
    constraint_table_free(t);
    sampler_vocab_free(v);
}

Test(constraint, the_table_shares_by_text_and_evicts_the_least_recent)
{
    sampler_vocab *v = vocab(0);
    constraint_table *t = constraint_table_new(v, 2);
    cr_assert_eq(constraint_table_vocab(t), v);
    sampler_constraint_cache *a1, *a2, *b, *c, *a3;
    sampler_grammar_error ge;
    const char *ga = "root ::= \"a\"", *gb = "root ::= \"b\"", *gc = "root ::= \"c\"";
    cr_assert_eq(constraint_table_get(t, ga, strlen(ga), &a1, &ge), SAMPLER_OK);
    cr_assert_eq(constraint_table_get(t, ga, strlen(ga), &a2, &ge), SAMPLER_OK);
    cr_assert_eq(a1, a2, "the same text gives the same cache");
    cr_assert_eq(constraint_table_get(t, gb, strlen(gb), &b, &ge), SAMPLER_OK);
    cr_assert_neq(b, a1);
    /* touch a, then c pushes out b (the least recently used) */
    sampler_constraint_cache *tmp;
    cr_assert_eq(constraint_table_get(t, ga, strlen(ga), &tmp, &ge), SAMPLER_OK);
    sampler_constraint_cache_free(tmp);
    cr_assert_eq(constraint_table_get(t, gc, strlen(gc), &c, &ge), SAMPLER_OK);
    cr_assert_eq(constraint_table_get(t, ga, strlen(ga), &a3, &ge), SAMPLER_OK);
    cr_assert_eq(a3, a1, "a stayed");
    cr_assert_eq(constraint_table_get(t, gb, strlen(gb), &tmp, &ge), SAMPLER_OK);
    cr_assert_neq(tmp, b, "b was evicted and compiled again");
    sampler_constraint_cache_free(tmp);
    /* the evicted cache still works for its holder */
    sampler_constraint *con = sampler_constraint_new_shared(b);
    cr_assert_eq(sampler_constraint_accept(con, 'b'), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(con), SAMPLER_CONSTRAINT_COMPLETE);
    sampler_constraint_free(con);
    /* a grammar error */
    cr_assert_eq(constraint_table_get(t, "root ::= x", 10, &tmp, &ge), SAMPLER_EINVAL);
    cr_assert_null(tmp);
    cr_assert(strstr(ge.message, "undefined rule 'x'") != NULL);
    sampler_constraint_cache_free(a1);
    sampler_constraint_cache_free(a2);
    sampler_constraint_cache_free(a3);
    sampler_constraint_cache_free(b);
    sampler_constraint_cache_free(c);
    constraint_table_free(t);
    sampler_vocab_free(v);
    cr_assert_null(constraint_table_new(NULL, 2));
}
