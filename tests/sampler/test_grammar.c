/* test_grammar.c -- the GBNF compiler (sampler/grammar.c) and the automaton's
 * acceptance of byte strings (sampler_grammar_match in sampler/constrain.c):
 * every construct of the documented subset, UTF-8 handling, the errors with
 * their positions, the limits, and a JSON grammar against hand-checked JSON. */
#include "sampler/sampler.h"
#include "tests/sampler/json_gbnf.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sampler_grammar *compile(const char *text)
{
    sampler_grammar *g = NULL;
    sampler_grammar_error e;
    int rc = sampler_grammar_parse(&g, text, strlen(text), &e);
    cr_assert_eq(rc, SAMPLER_OK, "grammar %s: %d:%d %s", text, e.line, e.column, e.message);
    cr_assert_not_null(g);
    return g;
}

static int match(const sampler_grammar *g, const char *s) { return sampler_grammar_match(g, s, strlen(s)); }

enum { N = SAMPLER_MATCH_NONE, P = SAMPLER_MATCH_PREFIX, F = SAMPLER_MATCH_FULL };

typedef struct {
    const char *grammar;
    const char *text;
    int want;
} accept_case;

static void run_cases(const accept_case *cs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        sampler_grammar *g = compile(cs[k].grammar);
        int got = match(g, cs[k].text);
        cr_expect_eq(got, cs[k].want, "grammar [%s] text [%s]: got %d, want %d", cs[k].grammar, cs[k].text, got,
                     cs[k].want);
        sampler_grammar_free(g);
    }
}

Test(grammar, literals_sequences_alternatives_groups)
{
    static const accept_case cs[] = {
        { "root ::= \"abc\"", "abc", F },
        { "root ::= \"abc\"", "ab", P },
        { "root ::= \"abc\"", "", P },
        { "root ::= \"abc\"", "abcd", N },
        { "root ::= \"abc\"", "abd", N },
        { "root ::= \"a\" \"b\" \"c\"", "abc", F },
        { "root ::= \"a\" | \"bc\" | \"\"", "", F },
        { "root ::= \"a\" | \"bc\" | \"\"", "b", P },
        { "root ::= \"a\" | \"bc\" | \"\"", "bc", F },
        { "root ::= \"a\" | \"bc\" | \"\"", "c", N },
        { "root ::= (\"x\" | \"y\") (\"1\" | (\"2\" \"3\"))", "y23", F },
        { "root ::= (\"x\" | \"y\") (\"1\" | (\"2\" \"3\"))", "x2", P },
        { "root ::= (\"x\" | \"y\") (\"1\" | (\"2\" \"3\"))", "x3", N },
        { "root ::= (\"a\" | )", "", F },
        { "root ::= ab\nab ::= \"a\" \"b\"", "ab", F },
        /* a rule continues after '|' at the end of a line and inside parentheses */
        { "root ::= \"a\" |\n  \"b\"", "b", F },
        { "root ::= (\n  \"a\"\n  \"b\"\n)", "ab", F },
        { "root ::= \"a\" # comment\n# whole-line comment\n", "a", F },
        { "root ::= \"a\"\r\nx ::= \"b\"\r\n", "a", F },
        /* names: letters, digits, '-', '_'; references before definitions */
        { "root ::= my-rule_2\nmy-rule_2 ::= \"z\"", "z", F },
    };
    run_cases(cs, sizeof cs / sizeof cs[0]);
}

Test(grammar, escapes_name_code_points)
{
    sampler_grammar *g = compile("root ::= \"a\\nb\\t\\r\\\"\\\\\\x41\\u00e9\\U0001F600\\[\\]\\-\\^\\/\\'\"");
    cr_assert_eq(match(g, "a\nb\t\r\"\\A\xC3\xA9\xF0\x9F\x98\x80[]-^/'"), F);
    sampler_grammar_free(g);
    /* \xHH names a code point: U+00FF is two bytes in UTF-8, never the raw byte FF */
    g = compile("root ::= \"\\xff\"");
    cr_assert_eq(match(g, "\xC3\xBF"), F);
    cr_assert_eq(match(g, "\xFF"), N);
    sampler_grammar_free(g);
    /* raw UTF-8 in a literal */
    g = compile("root ::= \"\xE2\x82\xAC\"");
    cr_assert_eq(match(g, "\xE2\x82\xAC"), F);
    cr_assert_eq(match(g, "\xE2\x82"), P);
    sampler_grammar_free(g);
}

Test(grammar, classes_ranges_negation_utf8)
{
    static const accept_case cs[] = {
        { "root ::= [a-c]", "b", F },
        { "root ::= [a-c]", "d", N },
        { "root ::= [a-cx0-9_]", "_", F },
        { "root ::= [a-cx0-9_]", "7", F },
        { "root ::= [a-cx0-9_]", "w", N },
        { "root ::= [-a]", "-", F },
        { "root ::= [a-]", "-", F },
        { "root ::= [\\]]", "]", F },
        { "root ::= [^a]", "b", F },
        { "root ::= [^a]", "a", N },
        { "root ::= [^a]", "\n", F },
        /* a negated class holds every other code point, in UTF-8 */
        { "root ::= [^a]", "\xC3\xA9", F },         /* U+00E9 */
        { "root ::= [^a]", "\xC3", P },             /* its first byte: a prefix */
        { "root ::= [^a]", "\xE2\x82\xAC", F },     /* U+20AC */
        { "root ::= [^a]", "\xF0\x9F\x98\x80", F }, /* U+1F600 */
        { "root ::= [^a]", "\xF4\x8F\xBF\xBF", F }, /* U+10FFFF */
        /* never invalid UTF-8 */
        { "root ::= [^a]", "\xC0\x80", N }, /* overlong */
        { "root ::= [^a]", "\xC1", N },
        { "root ::= [^a]", "\xE0\x80", N },         /* overlong 3-byte */
        { "root ::= [^a]", "\xED\xA0\x80", N },     /* a surrogate */
        { "root ::= [^a]", "\xF4\x90\x80\x80", N }, /* past U+10FFFF */
        { "root ::= [^a]", "\xF5", N },
        { "root ::= [^a]", "\x80", N }, /* a lone continuation byte */
        { "root ::= [^a]", "\xC3\xA9\xA9", N },
        /* ranges across UTF-8 lengths */
        { "root ::= [\\x70-\\u0800]", "p", F },
        { "root ::= [\\x70-\\u0800]", "\xDF\xBF", F },     /* U+07FF */
        { "root ::= [\\x70-\\u0800]", "\xE0\xA0\x80", F }, /* U+0800 */
        { "root ::= [\\x70-\\u0800]", "\xE0\xA0\x81", N }, /* U+0801 */
        { "root ::= [\\x70-\\u0800]", "o", N },
        { "root ::= [\xC3\xA9-\xC3\xAB]", "\xC3\xAA", F },
        { "root ::= [\xC3\xA9-\xC3\xAB]", "\xC3\xAC", N },
        { "root ::= [\\uD7FF-\\uE000]", "\xED\x9F\xBF", F }, /* U+D7FF */
        { "root ::= [\\uD7FF-\\uE000]", "\xEE\x80\x80", F }, /* U+E000 */
        { "root ::= [\\uD7FF-\\uE000]", "\xED\xA0\x80", N }, /* surrogates are never in a class */
        /* '.' is any one scalar value, newline included */
        { "root ::= .", "\n", F },
        { "root ::= .", "\xF0\x9F\x98\x80", F },
        { "root ::= .", "ab", N },
        { "root ::= .", "", P },
        { "root ::= [^]", "x", F },
    };
    run_cases(cs, sizeof cs / sizeof cs[0]);
}

Test(grammar, repetitions)
{
    static const accept_case cs[] = {
        { "root ::= \"a\"*", "", F },
        { "root ::= \"a\"*", "aaaa", F },
        { "root ::= \"a\"*", "ab", N },
        { "root ::= \"a\"+", "", P },
        { "root ::= \"a\"+", "aaa", F },
        { "root ::= \"ab\"?", "", F },
        { "root ::= \"ab\"?", "a", P },
        { "root ::= \"ab\"?", "abab", N },
        { "root ::= \"a\"{3}", "aa", P },
        { "root ::= \"a\"{3}", "aaa", F },
        { "root ::= \"a\"{3}", "aaaa", N },
        { "root ::= \"a\"{2,}", "a", P },
        { "root ::= \"a\"{2,}", "aaaaaaa", F },
        { "root ::= \"a\"{2,4}", "aa", F },
        { "root ::= \"a\"{2,4}", "aaaa", F },
        { "root ::= \"a\"{2,4}", "aaaaa", N },
        { "root ::= \"a\"{,2}", "", F },
        { "root ::= \"a\"{,2}", "aa", F },
        { "root ::= \"a\"{,2}", "aaa", N },
        { "root ::= \"a\"{ 1 , 2 }", "aa", F },
        { "root ::= \"a\"{0}", "", F },
        { "root ::= \"a\"{0}", "a", N },
        { "root ::= (\"ab\" | \"c\"){2} \"!\"", "cab!", F },
        { "root ::= (\"ab\" | \"c\"){2} \"!\"", "c!", N },
        { "root ::= [0-9]{1,3} (\",\" [0-9]{3})*", "1,234,567", F },
        { "root ::= [0-9]{1,3} (\",\" [0-9]{3})*", "1,23", P },
        { "root ::= [0-9]{1,3} (\",\" [0-9]{3})*", "1234", N },
        /* postfix operators apply in turn, spaces allowed before them */
        { "root ::= \"a\" * \"b\"", "aab", F },
        { "root ::= (\"a\"?)* \"b\"", "aab", F }, /* a star of something nullable */
        { "root ::= (\"a\"?)* \"b\"", "b", F },
        { "root ::= (\"a\" | \"\")+ \"b\"", "b", F },
        { "root ::= (\"a\"* \"b\"*)*", "abba", F },
        { "root ::= \"\"*", "", F },
        /* ambiguity: several ways to read the same text */
        { "root ::= (\"a\" | \"a\" | \"aa\")* \"b\"", "aaaab", F },
    };
    run_cases(cs, sizeof cs / sizeof cs[0]);
}

Test(grammar, recursion)
{
    static const accept_case cs[] = {
        { "root ::= \"(\" root \")\" | \"\"", "((()))", F },
        { "root ::= \"(\" root \")\" | \"\"", "(()", P },
        { "root ::= \"(\" root \")\" | \"\"", "())", N },
        { "root ::= item (\",\" item)*\nitem ::= \"[\" root? \"]\" | \"x\"", "x,[x,[[x]]],[]", F },
        /* right recursion, also in tail position */
        { "root ::= \"a\" root | \"b\"", "aaab", F },
        { "root ::= \"a\" root | \"b\"", "aaa", P },
        /* cycles of tail references: followed once, they terminate */
        { "root ::= a | \"x\"\na ::= root", "x", F },
        { "root ::= a\na ::= b | \"y\"\nb ::= a | \"z\"", "z", F },
        /* a nullable prefix before a non-left-recursive reference */
        { "root ::= \"a\"? inner \"c\"\ninner ::= \"b\"", "bc", F },
    };
    run_cases(cs, sizeof cs / sizeof cs[0]);
}

typedef struct {
    const char *grammar;
    const char *message; /* substring */
    int line, column;
} error_case;

Test(grammar, errors_name_the_problem_and_its_position)
{
    static const error_case cs[] = {
        { "", "no rule named 'root'", 1, 1 },
        { "x ::= \"a\"", "no rule named 'root'", 1, 1 },
        { "root ::= foo", "undefined rule 'foo'", 1, 10 },
        { "root ::= \"a\"\nroot ::= \"b\"", "defined twice", 2, 1 },
        { "root ::= \"abc", "unterminated string", 1, 10 },
        { "root ::= [abc", "unterminated character class", 1, 10 },
        { "root ::= [z-a]", "reversed", 1, 12 },
        { "root ::= [^\\x00-\\U0010FFFF]", "matches nothing", 1, 10 },
        { "root ::= \"\\q\"", "unknown escape", 1, 11 },
        { "root ::= \"\\x4\"", "2 hex digits", 1, 11 },
        { "root ::= \"\\uD800\"", "not a Unicode scalar value", 1, 11 },
        { "root ::= \"\\U00110000\"", "not a Unicode scalar value", 1, 11 },
        { "root ::= \"\xFF\"", "invalid UTF-8", 1, 11 },
        { "root ::= \"\xC3\"", "invalid UTF-8", 1, 11 },
        { "root ::= x\nx ::= x \"a\" | \"b\"", "rule 'x' is left-recursive", 2, 1 },
        { "root ::= \"a\"? root \"b\" | \"c\"", "rule 'root' is left-recursive", 1, 1 },
        { "root ::= (\"x\"* root \"b\") | \"c\"", "a group or repetition in rule 'root' is left-recursive", 1, 10 },
        { "root ::= a\na ::= \"x\" a", "rule 'a' can never finish", 2, 1 },
        { "root ::= \"a\"{3,2}", "maximum below its minimum", 1, 13 },
        { "root ::= \"a\"{100001}", "over 100000", 1, 14 },
        { "root ::= \"a\"{}", "needs a count", 1, 13 },
        { "root ::= \"a\"{2", "closing '}'", 1, 13 },
        { "root ::= <eos>", "token references", 1, 10 },
        { "root ::= (\"a\"", "expected ')'", 1, 14 },
        { "root = \"a\"", "expected '::='", 1, 6 },
        { "root ::= \"a\" )", "unexpected ')'", 1, 14 },
        { "root ::= \"a\"\n \"b\"", "expected a rule name", 2, 2 },
        { "root ::= \"a\" \\", "unexpected '\\'", 1, 14 },
        { "::= \"a\"", "expected a rule name", 1, 1 },
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        sampler_grammar *g = (sampler_grammar *)1;
        sampler_grammar_error e;
        int rc = sampler_grammar_parse(&g, cs[k].grammar, strlen(cs[k].grammar), &e);
        cr_expect_eq(rc, SAMPLER_EINVAL, "[%s] compiled", cs[k].grammar);
        cr_expect_null(g, "[%s]: *out must be NULL on error", cs[k].grammar);
        cr_expect(strstr(e.message, cs[k].message) != NULL, "[%s]: message '%s' lacks '%s'", cs[k].grammar, e.message,
                  cs[k].message);
        cr_expect(e.line == cs[k].line && e.column == cs[k].column, "[%s] (%s): at %d:%d, want %d:%d", cs[k].grammar,
                  e.message, e.line, e.column, cs[k].line, cs[k].column);
        cr_expect_eq(e.offset, strlen(cs[k].grammar) >= e.offset ? e.offset : (size_t)-1);
    }
}

Test(grammar, limits_are_errors)
{
    /* nesting */
    char deep[1024] = "root ::= ";
    for (int k = 0; k < 300; k++) strcat(deep, "(");
    strcat(deep, "\"a\"");
    for (int k = 0; k < 300; k++) strcat(deep, ")");
    sampler_grammar *g = NULL;
    sampler_grammar_error e;
    cr_assert_eq(sampler_grammar_parse(&g, deep, strlen(deep), &e), SAMPLER_EINVAL);
    cr_assert(strstr(e.message, "nested more than") != NULL, "%s", e.message);
    /* 200 levels are fine */
    char ok[1024] = "root ::= ";
    for (int k = 0; k < 200; k++) strcat(ok, "(");
    strcat(ok, "\"a\"");
    for (int k = 0; k < 200; k++) strcat(ok, ")");
    g = compile(ok);
    cr_assert_eq(match(g, "a"), F);
    sampler_grammar_free(g);
    /* size once expanded: 25 x 100000 copies */
    char big[1024] = "root ::= ";
    for (int k = 0; k < 25; k++) strcat(big, "\"a\"{100000} ");
    cr_assert_eq(sampler_grammar_parse(&g, big, strlen(big), &e), SAMPLER_EINVAL);
    cr_assert(strstr(e.message, "too large") != NULL, "%s", e.message);
    /* a large bounded repetition that fits */
    g = compile("root ::= [a-z]{0,5000} \"!\"");
    char s[5003];
    memset(s, 'q', 5000);
    strcpy(s + 5000, "!");
    cr_assert_eq(match(g, s), F);
    s[4000] = '!';
    s[4001] = 0;
    cr_assert_eq(match(g, s), F);
    sampler_grammar_free(g);
    /* NUL bytes in the text are an error, not an end */
    static const char nul[] = "root ::= \"a\"\0 x";
    cr_assert_eq(sampler_grammar_parse(&g, nul, sizeof nul - 1, &e), SAMPLER_EINVAL);
    cr_assert_eq(e.offset, 12u);
    /* bad arguments */
    cr_assert_eq(sampler_grammar_parse(NULL, "root ::= \"a\"", 12, NULL), SAMPLER_EINVAL);
    cr_assert_eq(sampler_grammar_match(NULL, "a", 1), SAMPLER_EINVAL);
    sampler_grammar_free(NULL);
}

Test(grammar, uses_byte)
{
    sampler_grammar *g = compile("root ::= \"ab\" [0-2] [^\\x00-\\x7F]?");
    cr_assert(sampler_grammar_uses_byte(g, 'a'));
    cr_assert(sampler_grammar_uses_byte(g, '1'));
    cr_assert(sampler_grammar_uses_byte(g, 0xC3));
    cr_assert(sampler_grammar_uses_byte(g, 0x80));
    cr_assert(!sampler_grammar_uses_byte(g, 'c'));
    cr_assert(!sampler_grammar_uses_byte(g, '3'));
    cr_assert(!sampler_grammar_uses_byte(g, 0xC0)); /* never valid UTF-8 */
    cr_assert(!sampler_grammar_uses_byte(g, 0xFF));
    sampler_grammar_free(g);
}

/* The JSON grammar of tests/sampler/json_gbnf.h against texts checked by hand. */
Test(grammar, json_grammar)
{
    sampler_grammar *g = compile(JSON_GBNF);
    static const struct {
        const char *text;
        int want;
    } cs[] = {
        { "{}", F },
        { "{\"a\": 1}", F },
        { "{ \"a\" : [1, -2.5e+3, true, false, null, \"x\"] , \"b\":{}}", F },
        { "{\"k\":\"\\u00e9\\n\\\"\\\\\\/\\b\\f\\r\\t\"}", F },
        { "{\"k\": \"\xC3\xA9\xE2\x82\xAC\"}", F },
        { "{\n  \"a\": 0.5,\n  \"b\": [\n    1\n  ]\n}", F },
        { "{\"a\": 1", P },
        { "{\"a\": \"unterminated", P },
        { "{\"a\": -", P },
        { "{\"a\": 1.", P },
        { "{\"a\": 1e", P },
        { "{\"a\": tr", P },
        { "", P },
        { "   ", P },
        { "[]", N },          /* an object is required at the top */
        { "{\"a\": 01}", N }, /* no leading zeros */
        { "{\"a\": .5}", N },
        { "{\"a\": +1}", N },
        { "{\"a\": 1.e5}", N },
        { "{'a': 1}", N },
        { "{\"a\": 1,}", N }, /* no trailing commas */
        { "{\"a\" 1}", N },
        { "{\"a\": \"\x01\"}", N }, /* raw control characters must be escaped */
        { "{\"a\": \"\\x\"}", N },
        { "{\"a\": \"\\ud800\"}", N }, /* lone surrogate escapes are refused */
        { "{\"a\": \"\\uD83D\"}", N },
        { "{\"a\": \"\\uE000\"}", F },
        { "{\"a\": \"\xFF\"}", N }, /* invalid UTF-8 */
        { "{} ", N },               /* nothing after the value */
        { "{\"a\": TRUE}", N },
        { "{\"a\": nul}", N },
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++)
        cr_expect_eq(match(g, cs[k].text), cs[k].want, "[%s]: got %d want %d", cs[k].text, match(g, cs[k].text),
                     cs[k].want);
    sampler_grammar_free(g);
}
