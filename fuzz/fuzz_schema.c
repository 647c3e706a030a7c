/* fuzz_schema.c -- libFuzzer target: JSON text -> the schema compiler (server/schema.c).
 *
 * Checked, for any input that is JSON:
 *   - schema_to_gbnf gives OK (with text), EINVAL (with a message) or ENOMEM;
 *   - GBNF it produced always compiles, except for the two refusals that only the
 *     grammar compiler can see (a schema with no finite instance, a size limit),
 *     and schema_compile agrees with that verdict -- a syntax error in generated
 *     GBNF would be a generator bug;
 *   - texts drawn from the compiled automaton with a byte vocabulary stay inside
 *     its language, and every complete one is JSON that jansson parses. */
#include "server/schema.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_CHECK(cond, what)                            \
    do {                                                \
        if (!(cond)) {                                  \
            fprintf(stderr, "fuzz_schema: %s\n", what); \
            abort();                                    \
        }                                               \
    } while (0)

enum { END = 256, VOCAB = 257 };

static const char *bytes_of(void *user, int32_t id, size_t *len)
{
    static char one[256];
    (void)user;
    if (id == END) return NULL;
    one[id] = (char)id;
    *len = 1;
    return &one[id];
}

static sampler_vocab *g_vocab;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_vocab) {
        int32_t end = END;
        FZ_CHECK(sampler_vocab_new(&g_vocab, VOCAB, bytes_of, NULL, &end, 1) == SAMPLER_OK, "vocab");
    }
    json_t *s = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!s) return 0;
    char *text = NULL;
    size_t len = 0;
    schema_error e;
    int rc = schema_to_gbnf(s, &text, &len, &e);
    FZ_CHECK(rc == SCHEMA_OK || rc == SCHEMA_EINVAL || rc == SCHEMA_ENOMEM, "unexpected result");
    if (rc == SCHEMA_EINVAL) FZ_CHECK(e.message[0] != 0, "an error without a message");
    sampler_grammar *g = NULL;
    int grc = SAMPLER_EINVAL;
    if (rc == SCHEMA_OK) {
        FZ_CHECK(text && strlen(text) == len, "text length");
        sampler_grammar_error ge;
        grc = sampler_grammar_parse(&g, text, len, &ge);
        if (grc == SAMPLER_EINVAL) {
            if (!strstr(ge.message, "can never finish") && !strstr(ge.message, "too large")) {
                fprintf(stderr, "generated GBNF does not compile: %d:%d %s\n%s\n", ge.line, ge.column, ge.message,
                        text);
                abort();
            }
        }
    }
    sampler_grammar *g2 = NULL;
    schema_error e2;
    int rc2 = schema_compile(s, &g2, &e2);
    if (rc != SCHEMA_ENOMEM && grc != SAMPLER_ENOMEM && rc2 != SCHEMA_ENOMEM)
        FZ_CHECK((rc2 == SCHEMA_OK) == (rc == SCHEMA_OK && grc == SAMPLER_OK), "schema_compile disagrees");
    sampler_grammar_free(g2);
    free(text);
    if (g) {
        uint32_t h = 2166136261u;
        for (size_t k = 0; k < size; k++) h = (h ^ data[k]) * 16777619u;
        for (int walk = 0; walk < 2; walk++) {
            sampler_constraint *c = sampler_constraint_new(g, g_vocab);
            FZ_CHECK(c != NULL, "constraint");
            static float zero[VOCAB], out[VOCAB];
            char buf[600];
            size_t n = 0;
            int st = SAMPLER_CONSTRAINT_OPEN;
            while (n < 512) {
                st = sampler_constraint_status(c);
                FZ_CHECK(st >= SAMPLER_CONSTRAINT_OPEN && st != SAMPLER_CONSTRAINT_STUCK, "status");
                if (st == SAMPLER_CONSTRAINT_COMPLETE) break;
                FZ_CHECK(sampler_constraint_apply(c, zero, out, VOCAB) == SAMPLER_OK, "apply");
                int allowed[VOCAB], na = 0;
                for (int id = 0; id < VOCAB; id++)
                    if (out[id] == 0.0f) allowed[na++] = id;
                FZ_CHECK(na > 0, "open but nothing allowed");
                h = h * 1664525u + 1013904223u;
                /* prefer closing characters now and then, so that texts finish */
                int pick = allowed[(h >> 8) % (uint32_t)na];
                if (walk == 1 && (h & 3) == 0)
                    for (int q = na - 1; q >= 0; q--)
                        if (allowed[q] == '}' || allowed[q] == ']' || allowed[q] == '"' || allowed[q] == END)
                            pick = allowed[q];
                FZ_CHECK(sampler_constraint_accept(c, pick) == SAMPLER_OK, "an allowed token is refused");
                if (pick == END) {
                    st = SAMPLER_CONSTRAINT_COMPLETE;
                    break;
                }
                buf[n++] = (char)pick;
            }
            FZ_CHECK(sampler_grammar_match(g, buf, n) != SAMPLER_MATCH_NONE, "the text left the language");
            if (st == SAMPLER_CONSTRAINT_COMPLETE) {
                json_error_t je;
                json_t *v = json_loadb(buf, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
                if (!v) {
                    fprintf(stderr, "a complete text is not JSON (%s): %.*s\n", je.text, (int)n, buf);
                    abort();
                }
                json_decref(v);
            }
            sampler_constraint_free(c);
        }
        sampler_grammar_free(g);
    }
    json_decref(s);
    return 0;
}
