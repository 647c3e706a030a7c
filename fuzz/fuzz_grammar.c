/* fuzz_grammar.c -- libFuzzer target: GBNF text -> sampler_grammar_parse, and the
 * automaton and masks of whatever compiles.
 *
 * Checked:
 *   - the result is OK, EINVAL or ENOMEM; on EINVAL the message is non-empty and
 *     the offset, line and column agree with the text;
 *   - on OK, a constraint over a vocabulary with a token for every byte (plus longer
 *     pieces and an end token) walks a few steps: for the first steps every
 *     token's mask bit equals a brute-force run of the automaton over text + token;
 *     the end token is allowed exactly on whole strings; the status is never
 *     "stuck" (every byte has a token); the chosen token is accepted; the text
 *     built is always a prefix or a whole string of the language. */
#include "sampler/sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_CHECK(cond, what)                             \
    do {                                                 \
        if (!(cond)) {                                   \
            fprintf(stderr, "fuzz_grammar: %s\n", what); \
            abort();                                     \
        }                                                \
    } while (0)

static const char *pieces[] = { "ab", "\"", "{\"", "\": ", "true", "  ", "\xC3\xA9", "\xE2\x82", "12", "\n" };
enum { NP = sizeof pieces / sizeof pieces[0], END = 256, VOCAB = 257 + NP };

static const char *bytes_of(void *user, int32_t id, size_t *len)
{
    static char one[256];
    (void)user;
    if (id < 256) {
        one[id] = (char)id;
        *len = 1;
        return &one[id];
    }
    if (id == END) return NULL;
    *len = strlen(pieces[id - 257]);
    return pieces[id - 257];
}

static sampler_vocab *g_vocab;

static void check_error(const uint8_t *data, size_t size, const sampler_grammar_error *e)
{
    FZ_CHECK(e->message[0] != 0, "an error without a message");
    FZ_CHECK(e->offset <= size, "error offset past the text");
    int line = 1, col = 1;
    for (size_t k = 0; k < e->offset; k++) {
        if (data[k] == '\n')
            line++, col = 1;
        else
            col++;
    }
    FZ_CHECK(e->line == line && e->column == col, "error line/column disagree with the offset");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_vocab) {
        int32_t end = END;
        FZ_CHECK(sampler_vocab_new(&g_vocab, VOCAB, bytes_of, NULL, &end, 1) == SAMPLER_OK, "vocab");
    }
    sampler_grammar *g = NULL;
    sampler_grammar_error e;
    int rc = sampler_grammar_parse(&g, (const char *)data, size, &e);
    FZ_CHECK(rc == SAMPLER_OK || rc == SAMPLER_EINVAL || rc == SAMPLER_ENOMEM, "unexpected result");
    if (rc == SAMPLER_EINVAL) check_error(data, size, &e);
    if (rc != SAMPLER_OK) {
        FZ_CHECK(g == NULL, "*out set on failure");
        return 0;
    }
    int m = sampler_grammar_match(g, (const char *)data, size);
    FZ_CHECK(m >= SAMPLER_MATCH_NONE && m <= SAMPLER_MATCH_FULL, "match result");

    sampler_constraint *c = sampler_constraint_new(g, g_vocab);
    FZ_CHECK(c != NULL, "constraint");
    static float zero[VOCAB], out[VOCAB];
    char text[1024];
    size_t n = 0;
    uint32_t h = 2166136261u;
    for (size_t k = 0; k < size; k++) h = (h ^ data[k]) * 16777619u;
    for (int step = 0; step < 8; step++) {
        FZ_CHECK(sampler_constraint_apply(c, zero, out, VOCAB) == SAMPLER_OK, "apply");
        int whole = sampler_grammar_match(g, text, n) == SAMPLER_MATCH_FULL;
        FZ_CHECK((out[END] == 0.0f) == whole, "the end token is allowed exactly on whole strings");
        int allowed[VOCAB], na = 0;
        for (int id = 0; id < VOCAB; id++) {
            if (out[id] != 0.0f) continue;
            allowed[na++] = id;
        }
        if (step < 3) {
            for (int id = 0; id < VOCAB; id++) {
                if (id == END) continue;
                size_t len;
                const char *b = bytes_of(NULL, id, &len);
                char buf[1024 + 8];
                memcpy(buf, text, n);
                memcpy(buf + n, b, len);
                int bf = sampler_grammar_match(g, buf, n + len) != SAMPLER_MATCH_NONE;
                FZ_CHECK(bf == (out[id] == 0.0f), "mask differs from the brute force");
            }
        }
        int st = sampler_constraint_status(c);
        FZ_CHECK(st != SAMPLER_CONSTRAINT_STUCK, "stuck although every byte has a token");
        if (st == SAMPLER_CONSTRAINT_COMPLETE) {
            FZ_CHECK(whole, "complete but not a whole string");
            break;
        }
        FZ_CHECK(na > 0, "open but nothing allowed");
        h = h * 1664525u + 1013904223u;
        int pick = allowed[(h >> 8) % (uint32_t)na];
        FZ_CHECK(sampler_constraint_accept(c, pick) == SAMPLER_OK, "an allowed token is refused");
        if (pick == END) break;
        size_t len;
        const char *b = bytes_of(NULL, pick, &len);
        memcpy(text + n, b, len);
        n += len;
        FZ_CHECK(sampler_grammar_match(g, text, n) != SAMPLER_MATCH_NONE, "the text left the language");
    }
    sampler_constraint_free(c);
    sampler_grammar_free(g);
    return 0;
}
