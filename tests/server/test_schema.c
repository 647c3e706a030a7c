/* test_schema.c -- JSON Schema, json_object and choice compiled to grammars (server/schema.c).
 *
 * Texts checked by hand against the compiled automaton (whole, prefix, refused);
 * integer and number ranges checked exhaustively over windows of values against
 * the arithmetic; every refusal names its keyword's path; and texts sampled from
 * the automaton at random are parsed by jansson and checked against the schema's
 * meaning by code written here. */
#include "server/schema.h"
#include "sampler/sampler.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = SAMPLER_MATCH_NONE, P = SAMPLER_MATCH_PREFIX, F = SAMPLER_MATCH_FULL };

static sampler_grammar *compile_schema(const char *json)
{
    json_error_t je;
    json_t *s = json_loads(json, JSON_DECODE_ANY, &je);
    cr_assert_not_null(s, "bad test JSON %s: %s", json, je.text);
    sampler_grammar *g = NULL;
    schema_error e;
    int rc = schema_compile(s, &g, &e);
    cr_assert_eq(rc, SCHEMA_OK, "schema %s: [%s] %s", json, e.path, e.message);
    json_decref(s);
    return g;
}

static int match(const sampler_grammar *g, const char *text) { return sampler_grammar_match(g, text, strlen(text)); }

typedef struct {
    const char *text;
    int want;
} tcase;

static void check(const char *schema, const tcase *cs, size_t n)
{
    sampler_grammar *g = compile_schema(schema);
    for (size_t k = 0; k < n; k++) {
        int got = match(g, cs[k].text);
        cr_expect_eq(got, cs[k].want, "schema %s text [%s]: got %d want %d", schema, cs[k].text, got, cs[k].want);
    }
    sampler_grammar_free(g);
}

#define CHECK(schema, ...)                              \
    do {                                                \
        static const tcase cs_[] = { __VA_ARGS__ };     \
        check(schema, cs_, sizeof cs_ / sizeof cs_[0]); \
    } while (0)

Test(schema, types)
{
    CHECK("{\"type\": \"null\"}", { "null", F }, { "nul", P }, { "0", N });
    CHECK("{\"type\": \"boolean\"}", { "true", F }, { "false", F }, { "True", N }, { "1", N });
    CHECK("{\"type\": \"integer\"}", { "0", F }, { "-17", F }, { "1234567890123456", F }, { "12345678901234567", N },
          { "1.0", N }, { "01", N }, { "-0", N }, { "-", P });
    CHECK("{\"type\": \"number\"}", { "0", F }, { "-1.5", F }, { "2e10", F }, { "2E-3", F }, { "1.", P }, { ".5", N },
          { "1e123", N }, { "NaN", N });
    CHECK("{\"type\": \"string\"}", { "\"\"", F }, { "\"a b\\n\\\"\\u00e9\xC3\xA9\"", F }, { "\"abc", P }, { "'a'", N },
          { "\"\t\"", N });
    CHECK("{\"type\": \"array\"}", { "[]", F }, { "[1, \"a\", [null], {}]", F }, { "[1,]", N });
    CHECK("{\"type\": \"object\"}", { "{}", F }, { "{\"a\": {\"b\": [1]}}", F }, { "{1: 2}", N });
    CHECK("{\"type\": [\"string\", \"null\"]}", { "null", F }, { "\"x\"", F }, { "1", N });
    CHECK("{\"type\": [\"integer\", \"number\"]}", { "1.5", F }, { "1", F });
    /* no type: any value; true: any value */
    CHECK("{}", { "1", F }, { "\"s\"", F }, { "[{}]", F }, { "nope", N });
    CHECK("true", { "{\"a\": [true]}", F });
    CHECK("{\"title\": \"t\", \"description\": \"d\", \"default\": 1, \"examples\": [1], \"$comment\": \"c\"}",
          { "false", F });
}

Test(schema, whitespace)
{
    /* nothing, one space, or a newline with up to 20 spaces/tabs; before the value too;
     * never after it */
    CHECK("{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"array\"}}}", { "{\"a\":[1,2]}", F },
          { " {\"a\": [ 1 , 2 ] }", F }, { "{\n  \"a\": [\n    1\n  ]\n}", F }, { "{\n\t\"a\":\n\t\t[1]}", F },
          { "{  \"a\": []}", N }, { "{\"a\": [] } ", N }, { "{\"a\": []}\n", N },
          { "{\n                     \"a\": []}", N } /* 21 spaces */);
}

Test(schema, objects)
{
    const char *person = "{\"type\": \"object\", \"properties\": {"
                         "\"name\": {\"type\": \"string\"}, \"age\": {\"type\": \"integer\"}, "
                         "\"tags\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}}, "
                         "\"required\": [\"name\", \"tags\"], \"additionalProperties\": false}";
    CHECK(person, { "{\"name\": \"a\", \"age\": 3, \"tags\": []}", F }, { "{\"name\": \"a\", \"tags\": [\"x\"]}", F },
          { "{\"name\": \"a\"}", N }, { "{\"name\": \"a\", \"tags\": [], \"age\": 3}", N } /* declaration order */,
          { "{\"age\": 3, \"name\": \"a\", \"tags\": []}", N }, { "{\"name\": \"a\", \"x\": 1, \"tags\": []}", N },
          { "{\"name\": \"a\", ", P }, { "{}", N });
    /* all optional: any subset in order, commas right */
    const char *opt = "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}, "
                      "\"b\": {\"type\": \"integer\"}, \"c\": {\"type\": \"integer\"}}}";
    CHECK(opt, { "{}", F }, { "{\"b\": 1}", F }, { "{\"a\": 1, \"c\": 2}", F }, { "{\"a\": 1,\"b\": 2,\"c\": 3}", F },
          { "{, \"a\": 1}", N }, { "{\"a\": 1,}", N }, { "{\"a\": 1 \"b\": 2}", N });
    /* required but not declared: any value */
    CHECK("{\"type\": \"object\", \"required\": [\"z\"]}", { "{\"z\": [1]}", F }, { "{}", N });
    /* no properties, additionalProperties false: only the empty object */
    CHECK("{\"type\": \"object\", \"additionalProperties\": false}", { "{}", F }, { "{ }", F }, { "{\"a\": 1}", N });
    /* keys with characters that JSON escapes */
    CHECK("{\"properties\": {\"q\\\"\\\\\\n\xC3\xA9\": {\"const\": 1}}, \"required\": [\"q\\\"\\\\\\n\xC3\xA9\"]}",
          { "{\"q\\\"\\\\\\n\xC3\xA9\": 1}", F });
    /* nested */
    CHECK("{\"type\": \"object\", \"properties\": {\"p\": {\"type\": \"object\", \"properties\": "
          "{\"q\": {\"type\": \"boolean\"}}, \"required\": [\"q\"]}}, \"required\": [\"p\"]}",
          { "{\"p\": {\"q\": true}}", F }, { "{\"p\": {}}", N });
}

Test(schema, arrays)
{
    CHECK("{\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"minItems\": 2, \"maxItems\": 3}",
          { "[1, 2]", F }, { "[1,2,3]", F }, { "[1]", N }, { "[1, 2, 3, 4]", N }, { "[1, \"a\"]", N }, { "[]", N },
          { "[1, 2", P });
    CHECK("{\"type\": \"array\", \"maxItems\": 0}", { "[]", F }, { "[ ]", F }, { "[1]", N });
    CHECK("{\"type\": \"array\", \"minItems\": 1}", { "[[]]", F }, { "[]", N });
    CHECK("{\"type\": \"array\", \"items\": false}", { "[]", F }, { "[1]", N });
    CHECK("{\"type\": \"array\", \"items\": {\"type\": \"array\", \"items\": {\"enum\": [\"x\", 2]}, \"maxItems\": 1}}",
          { "[[\"x\"], [2], []]", F }, { "[[\"x\", 2]]", N });
    CHECK("{\"type\": \"array\", \"uniqueItems\": false}", { "[1, 1]", F });
}

Test(schema, enum_const_anyof_ref)
{
    CHECK("{\"enum\": [\"red\", 1.5, null, {\"a\": [1]}, true]}", { "\"red\"", F }, { "1.5", F }, { "null", F },
          { "{\"a\":[1]}", F }, { "true", F }, { "\"blue\"", N }, { "{\"a\": [1]}", N } /* compact form only */);
    CHECK("{\"type\": \"string\", \"enum\": [\"a\", 1, \"b\"]}", { "\"a\"", F }, { "1", N });
    CHECK("{\"const\": \"\xC3\xA9t\xC3\xA9\\n\"}", { "\"\xC3\xA9t\xC3\xA9\\n\"", F }, { "\"x\"", N });
    CHECK("{\"anyOf\": [{\"type\": \"integer\", \"minimum\": 5}, {\"type\": \"string\", \"maxLength\": 1}]}",
          { "7", F }, { "\"a\"", F }, { "4", P } /* of 40 */, { "-4", N }, { "\"ab\"", N });
    const char *tree =
        "{\"$defs\": {\"node\": {\"type\": \"object\", \"properties\": {"
        "\"v\": {\"type\": \"integer\"}, \"kids\": {\"type\": \"array\", \"items\": {\"$ref\": \"#/$defs/node\"}}}, "
        "\"required\": [\"v\", \"kids\"]}}, \"$ref\": \"#/$defs/node\"}";
    CHECK(tree,
          { "{\"v\": 1, \"kids\": [{\"v\": 2, \"kids\": []}, {\"v\": 3, \"kids\": [{\"v\": 4, \"kids\": []}]}]}", F },
          { "{\"v\": 1, \"kids\": [{\"v\": 2}]}", N });
    CHECK("{\"definitions\": {\"a\": {\"type\": \"boolean\"}}, \"type\": \"array\", \"items\": {\"$ref\": "
          "\"#/definitions/a\"}}",
          { "[true, false]", F }, { "[1]", N });
    /* "#": the root itself, recursively */
    CHECK("{\"anyOf\": [{\"type\": \"null\"}, {\"type\": \"array\", \"items\": {\"$ref\": \"#\"}, \"maxItems\": 2}]}",
          { "[[null, []], null]", F }, { "[1]", N });
    /* a pointer with ~1 (slash) and ~0 (tilde) */
    CHECK("{\"$defs\": {\"a/b~c\": {\"const\": 1}}, \"$ref\": \"#/$defs/a~1b~0c\"}", { "1", F });
}

Test(schema, strings)
{
    /* lengths count code points: an escape or a multi-byte character is one */
    CHECK("{\"type\": \"string\", \"minLength\": 2, \"maxLength\": 3}", { "\"ab\"", F }, { "\"abc\"", F },
          { "\"a\"", N }, { "\"abcd\"", N }, { "\"\xC3\xA9\xE2\x82\xAC\"", F }, { "\"\\n\\u00e9\\\"\"", F },
          { "\"\xF0\x9F\x98\x80\xF0\x9F\x98\x80\"", F }, { "\"\\ud83d\\ude00\"", N } /* no surrogate escapes */);
    CHECK("{\"type\": \"string\", \"maxLength\": 0}", { "\"\"", F }, { "\"a\"", N });
    CHECK("{\"type\": \"string\", \"minLength\": 1}", { "\"\"", N }, { "\"abcdefghijklmnop\"", F });
}

Test(schema, patterns)
{
    CHECK("{\"type\": \"string\", \"pattern\": \"^[A-Z][a-z]+ \\\\d{2}$\"}", { "\"Bob 12\"", F }, { "\"bob 12\"", N },
          { "\"Bob 123\"", N }, { "\"Bo", P }, { "\"Bo\"", N });
    /* unanchored: anywhere in the string */
    CHECK("{\"type\": \"string\", \"pattern\": \"ab+c\"}", { "\"xxabbbcyy\"", F }, { "\"ac\"", N }, { "\"abc\"", F });
    CHECK("{\"type\": \"string\", \"pattern\": \"^ab\"}", { "\"abzz\"", F }, { "\"zab\"", N });
    CHECK("{\"type\": \"string\", \"pattern\": \"ab$\"}", { "\"zzab\"", F }, { "\"abz\"", N });
    /* alternation with anchors per alternative, groups, quantifiers */
    CHECK("{\"type\": \"string\", \"pattern\": \"^(?:yes|no)$|^maybe\"}", { "\"yes\"", F }, { "\"no\"", F },
          { "\"maybe later\"", F }, { "\"yesno\"", N });
    CHECK("{\"type\": \"string\", \"pattern\": \"^(ab){2,3}c?$\"}", { "\"abab\"", F }, { "\"abababc\"", F },
          { "\"ab\"", N }, { "\"abababab\"", N });
    /* the characters JSON escapes: the pattern is about the decoded string */
    CHECK("{\"type\": \"string\", \"pattern\": \"^[\\\"\\\\\\\\\\n]+$\"}", { "\"\\\"\\\\\\n\"", F }, { "\"a\"", N },
          { "\"\n\"", N } /* a raw newline is never valid JSON */);
    CHECK("{\"type\": \"string\", \"pattern\": \"^.$\"}", { "\"\\\"\"", F }, { "\"\xE2\x82\xAC\"", F },
          { "\"\\n\"", N }, { "\"ab\"", N });
    CHECK("{\"type\": \"string\", \"pattern\": \"^[^a-c]$\"}", { "\"d\"", F }, { "\"\\\\\"", F }, { "\"b\"", N });
    CHECK("{\"type\": \"string\", \"pattern\": \"^\\\\w\\\\s\\\\.\\\\x41\\\\u00e9$\"}", { "\"_\\t.A\xC3\xA9\"", F },
          { "\"_ .A\xC3\xA9\"", F }, { "\"- .A\xC3\xA9\"", N });
    CHECK("{\"type\": \"string\", \"pattern\": \"^a+?b*?$\"}", { "\"aab\"", F }); /* lazy: same strings */
}

/* ---- Ranges against arithmetic --------------------------------------------------------- */

static void integer_window(const char *bounds, long long lo, long long hi, long long from, long long to)
{
    char schema[256];
    snprintf(schema, sizeof schema, "{\"type\": \"integer\", %s}", bounds);
    sampler_grammar *g = compile_schema(schema);
    for (long long v = from; v <= to; v++) {
        char t[32];
        snprintf(t, sizeof t, "%lld", v);
        int want = v >= lo && v <= hi ? F : N;
        int got = match(g, t);
        if (want == N && got == P) got = N; /* e.g. "1" under minimum 10: a prefix of "10" */
        cr_assert_eq(got, want, "%s: %lld got %d", schema, v, got);
    }
    sampler_grammar_free(g);
}

Test(schema, integer_ranges_equal_arithmetic)
{
    integer_window("\"minimum\": 0, \"maximum\": 120", 0, 120, -300, 1300);
    integer_window("\"minimum\": -57, \"maximum\": 1234", -57, 1234, -1500, 1500);
    integer_window("\"minimum\": -1234, \"maximum\": -57", -1234, -57, -1500, 100);
    integer_window("\"minimum\": 7, \"maximum\": 7", 7, 7, -20, 80);
    integer_window("\"exclusiveMinimum\": 9, \"exclusiveMaximum\": 1000", 10, 999, -20, 1100);
    integer_window("\"minimum\": 2.5, \"maximum\": 99.5", 3, 99, -10, 1000);
    integer_window("\"minimum\": 18", 18, 1000000000000000, -100, 5000);
    integer_window("\"maximum\": -3", -1000000000000000, -3, -5000, 100);
    integer_window("\"minimum\": 95, \"exclusiveMinimum\": 99, \"maximum\": 10000, \"exclusiveMaximum\": 99999", 100,
                   10000, 0, 11000);
    /* leading zeros, "-0" and fractions are never produced */
    sampler_grammar *g = compile_schema("{\"type\": \"integer\", \"minimum\": -5, \"maximum\": 5}");
    cr_assert_eq(match(g, "-0"), N);
    cr_assert_eq(match(g, "05"), N);
    cr_assert_eq(match(g, "5.0"), N);
    sampler_grammar_free(g);
    /* big values near the unbounded limit */
    g = compile_schema("{\"type\": \"integer\", \"minimum\": 999999999999990}");
    cr_assert_eq(match(g, "999999999999990"), F);
    cr_assert_eq(match(g, "999999999999989"), P); /* of 9999999999999890 */
    cr_assert_eq(match(g, "99999999999998"), P);
    cr_assert_eq(match(g, "-999999999999990"), N);
    cr_assert_eq(match(g, "1000000000000000"), F);
    cr_assert_eq(match(g, "9999999999999999"), F);
    sampler_grammar_free(g);
}

static void number_window(const char *bounds, double lo, int lo_ex, double hi, int hi_ex)
{
    char schema[256];
    snprintf(schema, sizeof schema, "{\"type\": \"number\", %s}", bounds);
    sampler_grammar *g = compile_schema(schema);
    static const char *fmts[] = { "%.0f", "%.1f", "%.2f", "%.3f", "%.6f" };
    for (int k = -480; k <= 480; k++) {
        double v = k / 16.0;
        for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
            char t[64];
            snprintf(t, sizeof t, fmts[f], v);
            double pv = strtod(t, NULL);
            if (t[0] == '-' && pv == 0.0) continue; /* "-0...": never generated, and equal to 0 */
            int in = (lo_ex ? pv > lo : pv >= lo) && (hi_ex ? pv < hi : pv <= hi);
            int got = match(g, t);
            if (!in && got == P) got = N;
            cr_assert_eq(got, in ? F : N, "%s: [%s] got %d", schema, t, got);
        }
    }
    sampler_grammar_free(g);
}

Test(schema, number_ranges_equal_arithmetic)
{
    number_window("\"minimum\": -2, \"maximum\": 3", -2, 0, 3, 0);
    number_window("\"exclusiveMinimum\": -2, \"exclusiveMaximum\": 3", -2, 1, 3, 1);
    number_window("\"minimum\": 0, \"exclusiveMaximum\": 1", 0, 0, 1, 1);
    number_window("\"exclusiveMinimum\": 0", 0, 1, INFINITY, 0);
    number_window("\"maximum\": -1", -INFINITY, 0, -1, 0);
    number_window("\"exclusiveMaximum\": 0", -INFINITY, 0, 0, 1);
    number_window("\"minimum\": 5, \"maximum\": 5", 5, 0, 5, 0);
    number_window("\"minimum\": -10, \"exclusiveMaximum\": -9", -10, 0, -9, 1);
    number_window("\"minimum\": -1, \"maximum\": 0", -1, 0, 0, 0);
}

/* ---- Refusals ------------------------------------------------------------------------------- */

typedef struct {
    const char *schema;
    const char *path;
    const char *message;
} refusal;

Test(schema, refusals_name_the_keyword_path)
{
    static const refusal cs[] = {
        { "{\"type\": \"object\", \"properties\": {\"age\": {\"type\": \"integer\", \"format\": \"int32\"}}}",
          "properties.age.format", "unsupported JSON Schema keyword 'format'" },
        { "{\"oneOf\": [{}]}", "oneOf", "use anyOf" },
        { "{\"allOf\": [{}]}", "allOf", "unsupported" },
        { "{\"not\": {}}", "not", "unsupported" },
        { "{\"type\": \"object\", \"patternProperties\": {}}", "patternProperties", "unsupported" },
        { "{\"type\": \"object\", \"minProperties\": 1}", "minProperties", "unsupported" },
        { "{\"type\": \"array\", \"prefixItems\": []}", "prefixItems", "unsupported" },
        { "{\"type\": \"number\", \"multipleOf\": 2}", "multipleOf", "unsupported" },
        { "{\"type\": \"array\", \"uniqueItems\": true}", "uniqueItems", "not supported" },
        { "{\"type\": \"array\", \"items\": [{}]}", "items", "prefixItems" },
        { "{\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"array\", \"items\": {\"if\": {}}}]}", "anyOf[1].items.if",
          "unsupported" },
        { "{\"type\": \"objekt\"}", "type", "must be one of" },
        { "{\"type\": []}", "type", "empty" },
        { "false", "", "matches nothing" },
        { "{\"properties\": {\"a\": false}}", "properties.a", "matches nothing" },
        { "3", "", "object or a boolean" },
        { "{\"type\": \"string\", \"minimum\": 1}", "minimum", "does not apply" },
        { "{\"type\": \"integer\", \"maxLength\": 1}", "maxLength", "does not apply" },
        { "{\"type\": \"string\", \"minLength\": -1}", "minLength", "non-negative integer" },
        { "{\"type\": \"string\", \"minLength\": 1.5}", "minLength", "non-negative integer" },
        { "{\"type\": \"string\", \"minLength\": 200000}", "minLength", "above" },
        { "{\"type\": \"string\", \"minLength\": 3, \"maxLength\": 2}", "maxLength", "below" },
        { "{\"type\": \"string\", \"pattern\": \"a\", \"maxLength\": 3}", "maxLength", "cannot be combined" },
        { "{\"type\": \"array\", \"minItems\": 3, \"maxItems\": 1}", "maxItems", "below" },
        { "{\"type\": \"integer\", \"minimum\": 5, \"maximum\": 4}", "maximum", "no integer" },
        { "{\"type\": \"integer\", \"exclusiveMinimum\": true}", "exclusiveMinimum", "draft 4" },
        { "{\"type\": \"integer\", \"minimum\": 1e16}", "minimum", "not supported" },
        { "{\"type\": \"number\", \"minimum\": 0.5}", "minimum", "whole number" },
        { "{\"type\": \"number\", \"maximum\": 2e9}", "maximum", "not supported" },
        { "{\"type\": \"number\", \"exclusiveMinimum\": 1, \"exclusiveMaximum\": 1}", "exclusiveMaximum", "no number" },
        { "{\"enum\": []}", "enum", "non-empty" },
        { "{\"type\": \"string\", \"enum\": [1, 2]}", "enum", "no value" },
        { "{\"enum\": [1], \"minimum\": 0}", "minimum", "beside 'enum'" },
        { "{\"anyOf\": []}", "anyOf", "non-empty" },
        { "{\"anyOf\": [{}], \"type\": \"string\"}", "type", "beside 'anyOf'" },
        { "{\"$ref\": \"#/$defs/missing\"}", "$ref", "does not resolve" },
        { "{\"$ref\": \"http://example.com/s.json\"}", "$ref", "does not resolve" },
        { "{\"$defs\": {\"a\": {}}, \"$ref\": \"#/$defs/a\", \"type\": \"object\"}", "type", "beside '$ref'" },
        { "{\"$defs\": {\"a\": {\"type\": \"integer\", \"format\": \"x\"}}, \"$ref\": \"#/$defs/a\"}", "$defs.a.format",
          "unsupported" },
        { "{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/b\"}, \"b\": {\"$ref\": \"#/$defs/a\"}}, \"$ref\": \"#/$defs/a\"}",
          "$defs", "no finite instance" },
        { "{\"type\": \"object\", \"properties\": {\"x\": {\"$ref\": \"#\"}}, \"required\": [\"x\"]}", "properties.x",
          "no finite instance" },
        { "{\"type\": \"object\", \"properties\": {\"a\": {}}, \"additionalProperties\": {\"type\": \"string\"}}",
          "additionalProperties", "true or false" },
        { "{\"type\": \"object\", \"required\": [\"a\", \"a\"]}", "required", "twice" },
        { "{\"type\": \"object\", \"required\": [1]}", "required[0]", "strings" },
        { "{\"properties\": {\"p\": {\"$id\": \"x\"}}}", "properties.p.$id", "unsupported" },
        { "{\"nullable\": true}", "nullable", "unsupported" },
        /* patterns */
        { "{\"type\": \"string\", \"pattern\": \"(?=a)\"}", "pattern", "lookarounds" },
        { "{\"type\": \"string\", \"pattern\": \"\\\\bword\"}", "pattern", "'\\b' is not supported" },
        { "{\"type\": \"string\", \"pattern\": \"\\\\D\"}", "pattern", "not supported" },
        { "{\"type\": \"string\", \"pattern\": \"[^\\\\d]\"}", "pattern", "Unicode meaning" },
        { "{\"type\": \"string\", \"pattern\": \"(a\"}", "pattern", "missing ')'" },
        { "{\"type\": \"string\", \"pattern\": \"a)\"}", "pattern", "unmatched ')'" },
        { "{\"type\": \"string\", \"pattern\": \"a{2,1}\"}", "pattern", "out of range" },
        { "{\"type\": \"string\", \"pattern\": \"a{5000}\"}", "pattern", "out of range" },
        { "{\"type\": \"string\", \"pattern\": \"a{x}\"}", "pattern", "repetition" },
        { "{\"type\": \"string\", \"pattern\": \"*a\"}", "pattern", "needs something before" },
        { "{\"type\": \"string\", \"pattern\": \"a**\"}", "pattern", "cannot follow" },
        { "{\"type\": \"string\", \"pattern\": \"a^b\"}", "pattern", "'^'" },
        { "{\"type\": \"string\", \"pattern\": \"a$b\"}", "pattern", "'$'" },
        { "{\"type\": \"string\", \"pattern\": \"[z-a]\"}", "pattern", "reversed" },
        { "{\"type\": \"string\", \"pattern\": \"[abc\"}", "pattern", "unterminated" },
        { "{\"type\": \"string\", \"pattern\": \"\\\\uD800\"}", "pattern", "surrogate" },
        { "{\"type\": \"string\", \"pattern\": \"a++\"}", "pattern", "possessive" },
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        json_error_t je;
        json_t *s = json_loads(cs[k].schema, JSON_DECODE_ANY, &je);
        cr_assert_not_null(s, "bad test JSON %s", cs[k].schema);
        sampler_grammar *g = NULL;
        schema_error e;
        int rc = schema_compile(s, &g, &e);
        cr_expect_eq(rc, SCHEMA_EINVAL, "%s compiled", cs[k].schema);
        cr_expect_null(g);
        if (!strcmp(cs[k].path, "$defs"))
            cr_expect(!strncmp(e.path, "$defs.", 6), "%s: path [%s]", cs[k].schema, e.path);
        else
            cr_expect_str_eq(e.path, cs[k].path, "%s: path [%s] want [%s] (%s)", cs[k].schema, e.path, cs[k].path,
                             e.message);
        cr_expect(strstr(e.message, cs[k].message) != NULL, "%s: message [%s] lacks [%s]", cs[k].schema, e.message,
                  cs[k].message);
        /* schema_to_gbnf refuses the same (the grammar-level ones apart) */
        char *text = NULL;
        int rc2 = schema_to_gbnf(s, &text, NULL, &e);
        if (rc2 == SCHEMA_OK)
            cr_expect(strstr(cs[k].message, "finite") != NULL, "%s: only grammar-level refusals may pass here",
                      cs[k].schema);
        free(text);
        json_decref(s);
    }
}

/* ---- json_object and choice --------------------------------------------------------------- */

Test(schema, json_object_and_choice)
{
    sampler_grammar *g = NULL;
    cr_assert_eq(schema_compile_json_object(&g), SCHEMA_OK);
    cr_assert_eq(match(g, "{\"a\": [1, {\"b\": null}]}"), F);
    cr_assert_eq(match(g, " {}"), F);
    cr_assert_eq(match(g, "[1]"), N);
    cr_assert_eq(match(g, "\"s\""), N);
    cr_assert_eq(match(g, "{\"a\": 1"), P);
    sampler_grammar_free(g);

    const char *ch[] = { "yes", "no", "y\"e\\s\n", "\xC3\xA9t\xC3\xA9", "no way" };
    size_t len[] = { 3, 2, 6, 5, 6 };
    schema_error e;
    cr_assert_eq(schema_compile_choice(ch, len, 5, &g, &e), SCHEMA_OK);
    cr_assert_eq(match(g, "yes"), F);
    cr_assert_eq(match(g, "no"), F); /* complete, and a prefix of "no way" */
    cr_assert_eq(match(g, "no way"), F);
    cr_assert_eq(match(g, "no w"), P);
    cr_assert_eq(match(g, "y\"e\\s\n"), F);
    cr_assert_eq(match(g, "\xC3\xA9t\xC3\xA9"), F);
    cr_assert_eq(match(g, "\"yes\""), N, "choices are raw text, not JSON strings");
    cr_assert_eq(match(g, "yes "), N);
    cr_assert_eq(match(g, "maybe"), N);
    sampler_grammar_free(g);
    cr_assert_eq(schema_compile_choice(ch, len, 0, &g, &e), SCHEMA_EINVAL);
}

/* ---- Random texts of the automaton, checked by jansson and by hand --------------------------
 * A byte-level vocabulary (the 256 bytes, plus a few longer pieces) drives the
 * constraint with seeded random logits until the text is complete. */

static const char *pieces[] = { "{\"", "\":", ", \"", "\"", "true", "null", "12", " ", "\n  ", "\xC3\xA9" };
enum { NPIECES = sizeof pieces / sizeof pieces[0], VOCAB = 256 + 1 + NPIECES };

static const char *bytes_of(void *user, int32_t id, size_t *len)
{
    static char one[256];
    (void)user;
    if (id < 256) {
        one[id] = (char)id;
        *len = 1;
        return &one[id];
    }
    if (id == 256) return NULL; /* the end token */
    *len = strlen(pieces[id - 257]);
    return pieces[id - 257];
}

static size_t cp_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

Test(schema, sampled_texts_parse_and_validate)
{
    const char *schema =
        "{\"type\": \"object\", \"properties\": {"
        "\"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 4}, "
        "\"age\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 130}, "
        "\"score\": {\"type\": \"number\", \"exclusiveMinimum\": -1, \"maximum\": 1}, "
        "\"tags\": {\"type\": \"array\", \"items\": {\"enum\": [\"a\", \"b\", 3]}, \"minItems\": 1, \"maxItems\": 2}, "
        "\"pet\": {\"anyOf\": [{\"type\": \"null\"}, {\"$ref\": \"#/$defs/pet\"}]}}, "
        "\"required\": [\"name\", \"age\", \"tags\", \"pet\"], \"additionalProperties\": false, "
        "\"$defs\": {\"pet\": {\"type\": \"object\", \"properties\": {\"kind\": {\"const\": \"cat\"}}, "
        "\"required\": [\"kind\"]}}}";
    sampler_grammar *g = compile_schema(schema);
    sampler_vocab *v = NULL;
    int32_t end = 256;
    cr_assert_eq(sampler_vocab_new(&v, VOCAB, bytes_of, NULL, &end, 1), SAMPLER_OK);
    float lg[VOCAB];
    int complete = 0;
    for (uint64_t seed = 1; seed <= 40; seed++) {
        sampler_constraint *c = sampler_constraint_new(g, v);
        sampler_params p = { .temperature = 1.0f, .seed = seed, .constraint = c };
        sampler *s = sampler_new(VOCAB, &p);
        sampler_rng r;
        sampler_rng_seed(&r, seed * 7919);
        char text[8192];
        size_t n = 0;
        int32_t ids[1] = { 0 };
        int status = SAMPLER_CONSTRAINT_OPEN;
        for (int step = 0; step < 400 && status != SAMPLER_CONSTRAINT_COMPLETE; step++) {
            for (int k = 0; k < VOCAB; k++) lg[k] = 4.0f * sampler_rng_uniform(&r);
            lg[end] += 2.0f;
            sampler_choice ch;
            cr_assert_eq(sampler_step(s, lg, ids, 1, 0, SAMPLER_TOKEN_ONLY, &ch), SAMPLER_OK);
            status = ch.constraint;
            if (ch.token != end) {
                size_t len = 0;
                const char *b = bytes_of(NULL, ch.token, &len);
                cr_assert_lt(n + len, sizeof text);
                memcpy(text + n, b, len);
                n += len;
            }
        }
        text[n] = 0;
        if (status != SAMPLER_CONSTRAINT_COMPLETE) {
            cr_assert_eq(match(g, text), P, "seed %llu: an unfinished text must be a prefix: %s",
                         (unsigned long long)seed, text);
            goto next;
        }
        complete++;
        json_error_t je;
        json_t *o = json_loads(text, 0, &je);
        cr_assert_not_null(o, "seed %llu: not JSON (%s): %s", (unsigned long long)seed, je.text, text);
        cr_assert(json_is_object(o));
        json_t *name = json_object_get(o, "name"), *age = json_object_get(o, "age");
        json_t *score = json_object_get(o, "score"), *tags = json_object_get(o, "tags");
        json_t *pet = json_object_get(o, "pet");
        cr_assert(json_is_string(name) && cp_len(json_string_value(name)) >= 1 && cp_len(json_string_value(name)) <= 4,
                  "%s", text);
        cr_assert(json_is_integer(age) && json_integer_value(age) >= 0 && json_integer_value(age) <= 130, "%s", text);
        if (score)
            cr_assert(json_is_number(score) && json_number_value(score) > -1 && json_number_value(score) <= 1, "%s",
                      text);
        cr_assert(json_is_array(tags) && json_array_size(tags) >= 1 && json_array_size(tags) <= 2, "%s", text);
        for (size_t i = 0; i < json_array_size(tags); i++) {
            json_t *t = json_array_get(tags, i);
            cr_assert(
                (json_is_string(t) && (!strcmp(json_string_value(t), "a") || !strcmp(json_string_value(t), "b"))) ||
                    (json_is_integer(t) && json_integer_value(t) == 3),
                "%s", text);
        }
        cr_assert(json_is_null(pet) || (json_is_object(pet) && json_is_string(json_object_get(pet, "kind")) &&
                                        !strcmp(json_string_value(json_object_get(pet, "kind")), "cat")),
                  "%s", text);
        cr_assert_leq(json_object_size(o), 5);
        json_decref(o);
    next:
        sampler_free(s);
        sampler_constraint_free(c);
    }
    cr_assert_geq(complete, 20, "only %d of 40 texts were completed", complete);
    sampler_vocab_free(v);
    sampler_grammar_free(g);
}
