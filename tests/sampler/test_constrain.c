/* test_constrain.c -- the constraint (sampler/constrain.c, constrain_vocab.c) and its
 * place in the sampler (choose.c, step.c, generate.c):
 *   - masks equal a brute-force check over the whole vocabulary (each token tried
 *     by running the automaton from the start over the text + the token's bytes),
 *     step after step along seeded random walks, for several grammars, also with a
 *     cache so small that it is dropped before every new mask;
 *   - the status (open / may end / complete / stuck) equals its definition;
 *   - in the sampler: the constraint runs first (a logit_bias cannot revive a
 *     forbidden token), greedy takes the argmax of the allowed tokens, logprobs stay
 *     the raw distribution's, seeded runs repeat, generation ends when the text is
 *     complete, and every generated text matches the grammar. */
#include "sampler/sampler.h"
#include "sampler/sampler_internal.h"
#include "tests/sampler/json_gbnf.h"
#include "toy_lm.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

/* ---- A synthetic vocabulary, shaped like a SentencePiece one ---------------------
 * 0 <unk> and 1 <s>: control tokens (no bytes); 2 </s>: the end token; 3..258 the
 * 256 byte tokens; then every printable ASCII character again as a normal piece
 * (two tokens with the same bytes); then pieces glued from JSON-ish fragments,
 * partial UTF-8 sequences included; one empty token. */

typedef struct {
    int n;
    char *bytes[2048];
    size_t len[2048];
} tvocab;

static const char *frags[] = {
    "{",        "}",        "[",        "]",    "\"",   ":",   ",",        " ",    "\n",        "  ",
    "\t",       "true",     "false",    "null", "0",    "1",   "12",       "-",    ".",         "e",
    "E",        "+",        "\\",       "u",    "n",    "a",   "b",        "c",    "d",         "x",
    "yes",      "no",       "maybe",    " so",  "name", "age", "\xC3\xA9", "\xC3", "\xA9",      "\xE2\x82\xAC",
    "\xE2\x82", "\xF0\x9F", "\x98\x80", "(",    ")",    "!",   "ab",       "t",    "\xC3\xA9t", "00",
    "9",        "5",        "d8",       "00e9",
};

static void tv_add(tvocab *v, const char *b, size_t n)
{
    cr_assert_lt(v->n, 2048);
    v->bytes[v->n] = malloc(n + 1);
    memcpy(v->bytes[v->n], b, n);
    v->bytes[v->n][n] = 0;
    v->len[v->n] = n;
    v->n++;
}

static void tv_build(tvocab *v, int n_glued, uint64_t seed)
{
    memset(v, 0, sizeof *v);
    tv_add(v, "<unk>", 5);
    tv_add(v, "<s>", 3);
    tv_add(v, "</s>", 4);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        tv_add(v, &c, 1);
    }
    for (int c = 0x20; c < 0x7f; c++) {
        char ch = (char)c;
        tv_add(v, &ch, 1);
    }
    tv_add(v, "", 0);
    sampler_rng r;
    sampler_rng_seed(&r, seed);
    int nf = (int)(sizeof frags / sizeof frags[0]);
    for (int k = 0; k < n_glued; k++) {
        char buf[64];
        size_t n = 0;
        int parts = 1 + (int)(sampler_rng_next(&r) % 3);
        for (int q = 0; q < parts; q++) {
            const char *f = frags[sampler_rng_next(&r) % (uint64_t)nf];
            memcpy(buf + n, f, strlen(f));
            n += strlen(f);
        }
        tv_add(v, buf, n);
    }
}

static void tv_free(tvocab *v)
{
    for (int k = 0; k < v->n; k++) free(v->bytes[k]);
}

static const char *tv_bytes(void *user, int32_t id, size_t *len)
{
    tvocab *v = user;
    if (id <= 1) /* control tokens */
        return NULL;
    *len = v->len[id];
    return v->bytes[id];
}

static sampler_vocab *tv_vocab(tvocab *v)
{
    sampler_vocab *sv = NULL;
    int32_t end = 2;
    cr_assert_eq(sampler_vocab_new(&sv, v->n, tv_bytes, v, &end, 1), SAMPLER_OK);
    cr_assert_eq(sampler_vocab_size(sv), v->n);
    return sv;
}

static sampler_grammar *compile(const char *text)
{
    sampler_grammar *g = NULL;
    sampler_grammar_error e;
    cr_assert_eq(sampler_grammar_parse(&g, text, strlen(text), &e), SAMPLER_OK, "%s", e.message);
    return g;
}

/* ---- Brute force ------------------------------------------------------------------ */

typedef struct {
    char text[4096];
    size_t n;
} tbuf;

static int bf_allowed(const sampler_grammar *g, const tvocab *v, const tbuf *t, int id)
{
    if (id == 2) return sampler_grammar_match(g, t->text, t->n) == SAMPLER_MATCH_FULL;
    if (id <= 1 || v->len[id] == 0) return 0;
    char buf[4096 + 64];
    memcpy(buf, t->text, t->n);
    memcpy(buf + t->n, v->bytes[id], v->len[id]);
    int m = sampler_grammar_match(g, buf, t->n + v->len[id]);
    cr_assert_geq(m, 0);
    return m != SAMPLER_MATCH_NONE;
}

/* Walk: at each step compare the mask and the status with the brute force, then
 * take a random allowed token.  Returns the number of steps taken. */
static int walk_and_check_in(sampler_constraint_cache *cc, const sampler_grammar *g, const tvocab *tv,
                             const sampler_vocab *sv, uint64_t seed, int max_steps, size_t cache_limit, int *n_complete)
{
    sampler_constraint *c = cc ? sampler_constraint_new_shared(cc) : sampler_constraint_new(g, sv);
    cr_assert_not_null(c);
    if (cache_limit) sampler__constraint_set_cache_limit(c, cache_limit);
    sampler_rng r;
    sampler_rng_seed(&r, seed);
    tbuf t = { .n = 0 };
    float *zero = calloc((size_t)tv->n, sizeof *zero), *out = malloc((size_t)tv->n * sizeof *out);
    int32_t *allowed = malloc((size_t)tv->n * sizeof *allowed);
    int steps = 0;
    for (; steps < max_steps; steps++) {
        cr_assert_eq(sampler_constraint_apply(c, zero, out, tv->n), SAMPLER_OK);
        int n_allowed = 0, any_text = 0;
        for (int id = 0; id < tv->n; id++) {
            int want = bf_allowed(g, tv, &t, id);
            int got = out[id] == 0.0f;
            cr_assert(got || out[id] == -INFINITY, "mask values are the logit or -INFINITY");
            cr_assert_eq(got, want, "seed %llu step %d text [%.*s]: token %d [%s] got %d want %d",
                         (unsigned long long)seed, steps, (int)t.n, t.text, id, tv->bytes[id], got, want);
            if (got) allowed[n_allowed++] = id;
            if (got && id != 2) any_text = 1;
        }
        int full = sampler_grammar_match(g, t.text, t.n) == SAMPLER_MATCH_FULL;
        int want_status = full ? (any_text ? SAMPLER_CONSTRAINT_MAY_END : SAMPLER_CONSTRAINT_COMPLETE)
                               : (any_text ? SAMPLER_CONSTRAINT_OPEN : SAMPLER_CONSTRAINT_STUCK);
        cr_assert_eq(sampler_constraint_status(c), want_status, "step %d text [%.*s]", steps, (int)t.n, t.text);
        if (want_status == SAMPLER_CONSTRAINT_COMPLETE) {
            (*n_complete)++;
            break;
        }
        cr_assert_gt(n_allowed, 0);
        /* prefer text tokens; take the end token one time in eight when allowed */
        int32_t pick = allowed[sampler_rng_next(&r) % (uint64_t)n_allowed];
        if (full && sampler_rng_next(&r) % 8 == 0)
            pick = 2;
        else if (pick == 2 && any_text)
            pick = allowed[n_allowed - 1] == 2 ? allowed[0] : allowed[n_allowed - 1];
        /* a forbidden token is refused and changes nothing */
        for (int id = 3; id < tv->n; id++) {
            if (out[id] == -INFINITY) {
                cr_assert_eq(sampler_constraint_accept(c, id), SAMPLER_EINVAL);
                break;
            }
        }
        cr_assert_eq(sampler_constraint_accept(c, pick), SAMPLER_OK);
        if (pick == 2) {
            cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_COMPLETE);
            cr_assert_eq(sampler_constraint_apply(c, zero, out, tv->n), SAMPLER_EINVAL);
            cr_assert_eq(sampler_constraint_accept(c, 3 + 'a'), SAMPLER_EINVAL);
            (*n_complete)++;
            steps++;
            break;
        }
        cr_assert_lt(t.n + tv->len[pick], sizeof t.text);
        memcpy(t.text + t.n, tv->bytes[pick], tv->len[pick]);
        t.n += tv->len[pick];
    }
    free(zero);
    free(out);
    free(allowed);
    sampler_constraint_free(c);
    return steps;
}

static int walk_and_check(const sampler_grammar *g, const tvocab *tv, const sampler_vocab *sv, uint64_t seed,
                          int max_steps, size_t cache_limit, int *n_complete)
{
    return walk_and_check_in(NULL, g, tv, sv, seed, max_steps, cache_limit, n_complete);
}

static const char *mask_grammars[] = {
    JSON_GBNF,
    "root ::= \"yes\" | \"no\" | \"maybe so\" | \"\xC3\xA9t\xC3\xA9\"",
    "root ::= ([^a-z] | \"ab\")* \"!\"",
    "root ::= [a-z]{2,5} (\"-\" [0-9]{1,3})?",
    "root ::= \"(\" root \")\" root | \"\"",
    "root ::= \"{\" ( \"\\\"\" [a-e]{0,3} \"\\\"\" | [0-9]+ ) \"}\" \" \"?",
};

Test(constrain, masks_equal_brute_force_along_random_walks)
{
    tvocab tv;
    tv_build(&tv, 500, 42);
    sampler_vocab *sv = tv_vocab(&tv);
    int total_steps = 0, completes = 0;
    for (size_t k = 0; k < sizeof mask_grammars / sizeof mask_grammars[0]; k++) {
        sampler_grammar *g = compile(mask_grammars[k]);
        for (uint64_t seed = 1; seed <= 3; seed++)
            total_steps += walk_and_check(g, &tv, sv, seed * 100 + k, 24, 0, &completes);
        sampler_grammar_free(g);
    }
    cr_assert_gt(total_steps, 150, "the walks took %d steps", total_steps);
    cr_assert_geq(completes, 4, "only %d walks reached a complete text", completes);
    sampler_vocab_free(sv);
    tv_free(&tv);
}

Test(constrain, masks_stay_exact_when_the_cache_is_dropped)
{
    tvocab tv;
    tv_build(&tv, 300, 7);
    sampler_vocab *sv = tv_vocab(&tv);
    int completes = 0;
    sampler_grammar *g = compile(JSON_GBNF);
    int steps = walk_and_check(g, &tv, sv, 5, 30, 1, &completes);
    cr_assert_geq(steps, 20);
    sampler_grammar_free(g);
    g = compile(mask_grammars[4]);
    steps = walk_and_check(g, &tv, sv, 6, 30, 1, &completes);
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
    tv_free(&tv);
}

Test(constrain, a_shared_cache_gives_the_same_masks_and_saves_the_work)
{
    tvocab tv;
    tv_build(&tv, 300, 11);
    sampler_vocab *sv = tv_vocab(&tv);
    sampler_grammar *g = compile(JSON_GBNF);
    sampler_constraint_cache *cc = sampler_constraint_cache_new(g, sv); /* owns g now */
    cr_assert_not_null(cc);
    cr_assert_eq(sampler_constraint_cache_grammar(cc), g);
    int completes = 0;
    for (uint64_t seed = 1; seed <= 3; seed++) walk_and_check_in(cc, g, &tv, sv, seed, 20, 0, &completes);
    /* the same walk again: every state and mask is already there */
    sampler_constraint *probe = sampler_constraint_new_shared(cc);
    int before = sampler__constraint_cached_states(probe);
    walk_and_check_in(cc, g, &tv, sv, 2, 20, 0, &completes);
    cr_assert_eq(sampler__constraint_cached_states(probe), before, "a repeated walk added states");
    sampler_constraint_free(probe);
    /* tables past the cache's limit: the next constraints start new ones, still exact */
    sampler__constraint_cache_set_limit(cc, 1);
    for (uint64_t seed = 4; seed <= 5; seed++) walk_and_check_in(cc, g, &tv, sv, seed, 20, 0, &completes);
    /* a constraint outlives the holder's reference */
    sampler_constraint *late = sampler_constraint_new_shared(cc);
    sampler_constraint_cache_free(cc);
    cr_assert_eq(sampler_constraint_accept(late, 3 + '{'), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(late), SAMPLER_CONSTRAINT_OPEN);
    sampler_constraint_free(late);
    sampler_vocab_free(sv);
    tv_free(&tv);
}

/* Several threads walk one cache at once; each compares every mask with what a
 * private constraint fed the same tokens gives. */
typedef struct {
    sampler_constraint_cache *cc;
    const sampler_grammar *g;
    const tvocab *tv;
    const sampler_vocab *sv;
    uint64_t seed;
    int mismatches, steps;
} thread_job;

static int thread_walk(void *arg)
{
    thread_job *j = arg;
    int V = j->tv->n;
    float *zero = calloc((size_t)V, sizeof *zero), *a = malloc((size_t)V * sizeof *a),
          *b = malloc((size_t)V * sizeof *b);
    for (int rep = 0; rep < 4; rep++) {
        sampler_constraint *shared = sampler_constraint_new_shared(j->cc), *own = sampler_constraint_new(j->g, j->sv);
        sampler_rng r;
        sampler_rng_seed(&r, j->seed * 31 + (uint64_t)rep);
        for (int step = 0; step < 40; step++) {
            if (sampler_constraint_apply(shared, zero, a, V) || sampler_constraint_apply(own, zero, b, V)) {
                j->mismatches++;
                break;
            }
            j->mismatches += memcmp(a, b, (size_t)V * sizeof *a) != 0;
            int n_ok = 0;
            for (int id = 3; id < V; id++) n_ok += a[id] == 0.0f;
            if (!n_ok) break;
            int k = (int)(sampler_rng_next(&r) % (uint64_t)n_ok), pick = -1;
            for (int id = 3; id < V && pick < 0; id++)
                if (a[id] == 0.0f && k-- == 0) pick = id;
            j->mismatches += sampler_constraint_accept(shared, pick) != SAMPLER_OK;
            j->mismatches += sampler_constraint_accept(own, pick) != SAMPLER_OK;
            j->mismatches += sampler_constraint_status(shared) != sampler_constraint_status(own);
            j->steps++;
        }
        sampler_constraint_free(shared);
        sampler_constraint_free(own);
    }
    free(zero), free(a), free(b);
    return 0;
}

Test(constrain, threads_share_a_cache)
{
    tvocab tv;
    tv_build(&tv, 400, 21);
    sampler_vocab *sv = tv_vocab(&tv);
    sampler_grammar *g = compile(JSON_GBNF), *g2 = compile(JSON_GBNF);
    sampler_constraint_cache *cc = sampler_constraint_cache_new(g2, sv);
    enum { T = 4 };
    thrd_t th[T];
    thread_job jobs[T];
    for (int k = 0; k < T; k++) {
        jobs[k] = (thread_job){ cc, g, &tv, sv, (uint64_t)k + 1, 0, 0 };
        cr_assert_eq(thrd_create(&th[k], thread_walk, &jobs[k]), thrd_success);
    }
    int steps = 0;
    for (int k = 0; k < T; k++) {
        thrd_join(th[k], NULL);
        cr_assert_eq(jobs[k].mismatches, 0, "thread %d: %d mismatches", k, jobs[k].mismatches);
        steps += jobs[k].steps;
    }
    cr_assert_gt(steps, 200);
    sampler_constraint_cache_free(cc);
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
    tv_free(&tv);
}

Test(constrain, vocab_and_argument_checks)
{
    tvocab tv;
    tv_build(&tv, 10, 1);
    sampler_vocab *sv = tv_vocab(&tv);
    for (int b = 0; b < 256; b++) cr_assert(sampler_vocab_has_byte(sv, (unsigned char)b));
    sampler_vocab_free(sv);
    /* a vocabulary without the byte tokens */
    int32_t end = 2;
    tvocab small = { 0 };
    tv_add(&small, "<unk>", 5);
    tv_add(&small, "<s>", 3);
    tv_add(&small, "</s>", 4);
    tv_add(&small, "ab", 2);
    tv_add(&small, "a", 1);
    cr_assert_eq(sampler_vocab_new(&sv, small.n, tv_bytes, &small, &end, 1), SAMPLER_OK);
    cr_assert(sampler_vocab_has_byte(sv, 'a'));
    cr_assert(!sampler_vocab_has_byte(sv, 'b'));
    /* "b" cannot be written with these tokens after an "a": stuck */
    sampler_grammar *g = compile("root ::= \"a\" \"b\"");
    sampler_constraint *c = sampler_constraint_new(g, sv);
    cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_OPEN);
    cr_assert_eq(sampler_constraint_accept(c, 4), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_STUCK);
    float lg[5] = { 1, 2, 3, 4, 5 }, out[5] = { 9, 9, 9, 9, 9 };
    cr_assert_eq(sampler_constraint_apply(c, lg, out, 4), SAMPLER_EINVAL, "wrong vocabulary size");
    cr_assert_eq(out[0], 9.0f, "out untouched on error");
    cr_assert_eq(sampler_constraint_apply(c, lg, out, 5), SAMPLER_OK);
    for (int k = 0; k < 5; k++) cr_assert_eq(out[k], -INFINITY);
    cr_assert_eq(sampler_constraint_accept(c, -1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_constraint_accept(c, 5), SAMPLER_EINVAL);
    cr_assert_eq(sampler_constraint_accept(c, 1), SAMPLER_EINVAL, "control tokens are never allowed");
    cr_assert_eq(sampler_constraint_accept(c, 2), SAMPLER_EINVAL, "no end before the text is complete");
    sampler_constraint_free(c);
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
    tv_free(&small);
    /* bad arguments */
    cr_assert_eq(sampler_vocab_new(&sv, 0, tv_bytes, &tv, NULL, 0), SAMPLER_EINVAL);
    cr_assert_eq(sampler_vocab_new(&sv, tv.n, NULL, &tv, NULL, 0), SAMPLER_EINVAL);
    int32_t bad_end = tv.n;
    cr_assert_eq(sampler_vocab_new(&sv, tv.n, tv_bytes, &tv, &bad_end, 1), SAMPLER_EINVAL);
    cr_assert_null(sampler_constraint_new(NULL, NULL));
    sampler_constraint_free(NULL);
    sampler_vocab_free(NULL);
    tv_free(&tv);
}

Test(constrain, empty_language_is_complete_at_once)
{
    tvocab tv;
    tv_build(&tv, 10, 1);
    sampler_vocab *sv = tv_vocab(&tv);
    sampler_grammar *g = compile("root ::= \"\"");
    sampler_constraint *c = sampler_constraint_new(g, sv);
    cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_COMPLETE);
    sampler_constraint_free(c);
    sampler_grammar_free(g);
    /* a vocabulary with no end token: complete once nothing can follow */
    sampler_vocab_free(sv);
    cr_assert_eq(sampler_vocab_new(&sv, tv.n, tv_bytes, &tv, NULL, 0), SAMPLER_OK);
    g = compile("root ::= \"ab\" \"c\"?");
    c = sampler_constraint_new(g, sv);
    cr_assert_eq(sampler_constraint_accept(c, 3 + 'a'), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_accept(c, 3 + 'b'), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_MAY_END);
    cr_assert_eq(sampler_constraint_accept(c, 3 + 'c'), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_COMPLETE);
    sampler_constraint_free(c);
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
    tv_free(&tv);
}

/* ---- In the sampler ------------------------------------------------------------------
 * A 32-token vocabulary for the toy model (toy_lm.h): 0 <unk>, 1 <s>, 2 </s>, then
 * pieces. */
enum { V = 32 };
static const char *toy_pieces[V] = {
    NULL, NULL, "</s>", "a", "b", "c",   "ab", "e", "abc", " ",  "{", "}",     "\"",  ":",   ",",  "1",
    "2",  "0",  "-",    "x", "y", "yes", "no", "n", "o",   "ye", "s", "\"a\"", "{\"", "\":", "12", "true",
};

static const char *toy_bytes(void *user, int32_t id, size_t *len)
{
    (void)user;
    if (!toy_pieces[id] || id == 2) return NULL;
    *len = strlen(toy_pieces[id]);
    return toy_pieces[id];
}

static sampler_vocab *toy_vocab(void)
{
    sampler_vocab *sv = NULL;
    int32_t end = 2;
    cr_assert_eq(sampler_vocab_new(&sv, V, toy_bytes, NULL, &end, 1), SAMPLER_OK);
    return sv;
}

/* A constraint's own end token (a chat template's end of turn): masked until the text
 * is whole, then allowed like EOS, and accepting it ends the text -- also for a token
 * with bytes, which then never counts as text. */
Test(constrain, a_constraints_own_end_token)
{
    sampler_vocab *sv = toy_vocab();
    sampler_grammar *g = compile("root ::= \"ab\" \"c\"?");
    float logits[V], out[V];
    for (int i = 0; i < V; i++) logits[i] = 0.25f * (float)i;
    sampler_constraint *plain = sampler_constraint_new(g, sv), *c = sampler_constraint_new(g, sv);
    sampler_constraint *x = sampler_constraint_new(g, sv);
    cr_assert_eq(sampler_constraint_add_end(c, 1), SAMPLER_OK); /* <s>: no bytes */
    cr_assert_eq(sampler_constraint_add_end(c, 1), SAMPLER_EINVAL, "only once");
    cr_assert_eq(sampler_constraint_add_end(x, V), SAMPLER_EINVAL);
    cr_assert_eq(sampler_constraint_add_end(x, 19), SAMPLER_OK); /* "x": bytes the grammar never takes */
    cr_assert_eq(sampler_constraint_add_end(NULL, 1), SAMPLER_EINVAL);
    /* at the start nothing is whole: neither end token may come */
    cr_assert_eq(sampler_constraint_apply(c, logits, out, V), SAMPLER_OK);
    cr_assert(isinf(out[1]) && out[1] < 0 && isinf(out[2]) && out[2] < 0);
    cr_assert_eq(out[6], logits[6], "\"ab\" may start the text");
    cr_assert_eq(sampler_constraint_accept(c, 1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_constraint_apply(x, logits, out, V), SAMPLER_OK);
    cr_assert(isinf(out[19]) && out[19] < 0);
    cr_assert_eq(sampler_constraint_accept(x, 19), SAMPLER_EINVAL);
    for (sampler_constraint **k = (sampler_constraint *[]){ plain, c, x, NULL }; *k; k++) {
        cr_assert_eq(sampler_constraint_accept(*k, 6), SAMPLER_OK);
        cr_assert_eq(sampler_constraint_status(*k), SAMPLER_CONSTRAINT_MAY_END);
    }
    /* whole: the own end token is allowed beside EOS, for that constraint alone */
    cr_assert_eq(sampler_constraint_apply(c, logits, out, V), SAMPLER_OK);
    cr_assert_eq(out[1], logits[1]);
    cr_assert_eq(out[2], logits[2]);
    cr_assert_eq(out[5], logits[5], "\"c\" may still follow");
    cr_assert_eq(sampler_constraint_apply(plain, logits, out, V), SAMPLER_OK);
    cr_assert(isinf(out[1]) && out[1] < 0);
    cr_assert_eq(sampler_constraint_accept(plain, 1), SAMPLER_EINVAL);
    cr_assert_eq(sampler_constraint_apply(x, logits, out, V), SAMPLER_OK);
    cr_assert_eq(out[19], logits[19]);
    cr_assert_eq(sampler_constraint_accept(c, 1), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(c), SAMPLER_CONSTRAINT_COMPLETE);
    cr_assert_eq(sampler_constraint_accept(x, 19), SAMPLER_OK);
    cr_assert_eq(sampler_constraint_status(x), SAMPLER_CONSTRAINT_COMPLETE);
    cr_assert_eq(sampler_constraint_status(plain), SAMPLER_CONSTRAINT_MAY_END);
    sampler_constraint_free(plain);
    sampler_constraint_free(c);
    sampler_constraint_free(x);
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
}

static void text_of(const int32_t *ids, int n, char *out)
{
    out[0] = 0;
    for (int k = 0; k < n; k++)
        if (ids[k] != 2) strcat(out, toy_pieces[ids[k]]);
}

#define TOY_JSON "root ::= \"{\" ( \"\\\"\" [abc]+ \"\\\":\" [0-9]+ ( \",\\\"\" [abc]+ \"\\\":\" [0-9]+ )* )? \"}\""

Test(constrain, sampler_step_first_warper_greedy_logprobs_seeds)
{
    static toy_lm toy;
    sampler_vocab *sv = toy_vocab();
    sampler_grammar *g = compile(TOY_JSON);
    const int32_t prompt[3] = { 1, 3, 4 };
    /* a bias of +50 on tokens the grammar forbids at the start ("a", "}") changes nothing:
     * the constraint runs first */
    int32_t bias_ids[2] = { 3, 11 };
    float bias_vals[2] = { 50.0f, 50.0f };
    const sampler_params cases[] = {
        { 0 },
        { .temperature = 1.0f, .seed = 3 },
        { .temperature = 1.5f, .top_k = 3, .seed = 4 },
        { .temperature = 1.0f, .top_p = 0.5f, .min_p = 0.1f, .seed = 5 },
        { .temperature = 0.8f,
          .repetition_penalty = 1.5f,
          .bias_ids = bias_ids,
          .bias_values = bias_vals,
          .n_bias = 2,
          .seed = 6 },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int32_t runs[2][64];
        int lens[2];
        for (int run = 0; run < 2; run++) {
            sampler_constraint *c = sampler_constraint_new(g, sv);
            sampler_params p = cases[k];
            p.constraint = c;
            sampler *s = sampler_new(V, &p);
            cr_assert_not_null(s);
            int32_t ids[64 + 3];
            memcpy(ids, prompt, sizeof prompt);
            int n = 3, status = SAMPLER_CONSTRAINT_OPEN;
            while (n < 60 && status != SAMPLER_CONSTRAINT_COMPLETE) {
                float lg[V], masked[V];
                toy_logits(TOY_WAVE, ids, n, V, lg);
                /* what the constraint allows now, computed on a second constraint
                 * fed the same tokens */
                sampler_constraint *c2 = sampler_constraint_new(g, sv);
                for (int q = 3; q < n; q++) cr_assert_eq(sampler_constraint_accept(c2, ids[q]), SAMPLER_OK);
                cr_assert_eq(sampler_constraint_apply(c2, lg, masked, V), SAMPLER_OK);
                sampler_constraint_free(c2);
                sampler_choice ch;
                cr_assert_eq(sampler_step(s, lg, ids, n, n - 3, 2, &ch), SAMPLER_OK);
                cr_assert(masked[ch.token] != -INFINITY, "case %zu: token %d is not allowed", k, ch.token);
                if (k == 0) cr_assert_eq(ch.token, sampler_argmax(masked, V), "greedy = argmax of the allowed tokens");
                sampler_choice raw;
                cr_assert_eq(sampler_logprobs(lg, V, ch.token, 2, &raw), SAMPLER_OK);
                cr_assert_eq(ch.logprob, raw.logprob, "logprobs are the raw distribution's");
                cr_assert_eq(ch.top[0].id, raw.top[0].id);
                cr_assert_eq(ch.top[0].logprob, raw.top[0].logprob);
                status = ch.constraint;
                cr_assert(status == SAMPLER_CONSTRAINT_OPEN || status == SAMPLER_CONSTRAINT_MAY_END ||
                              status == SAMPLER_CONSTRAINT_COMPLETE,
                          "status %d", status);
                ids[n++] = ch.token;
            }
            char text[512];
            text_of(ids + 3, n - 3, text);
            int m = sampler_grammar_match(g, text, strlen(text));
            if (status == SAMPLER_CONSTRAINT_COMPLETE)
                cr_assert_eq(m, SAMPLER_MATCH_FULL, "case %zu: [%s]", k, text);
            else
                cr_assert_neq(m, SAMPLER_MATCH_NONE, "case %zu: [%s]", k, text);
            memcpy(runs[run], ids + 3, (size_t)(n - 3) * sizeof *ids);
            lens[run] = n - 3;
            sampler_free(s);
            sampler_constraint_free(c);
        }
        cr_assert_eq(lens[0], lens[1], "case %zu: seeded runs differ in length", k);
        cr_assert_arr_eq(runs[0], runs[1], (size_t)lens[0] * sizeof(int32_t), "case %zu: seeded runs differ", k);
    }
    /* without a constraint, the choice says so */
    sampler_params p0 = { 0 };
    sampler *s = sampler_new(V, &p0);
    float lg[V];
    toy_logits(TOY_WAVE, prompt, 3, V, lg);
    sampler_choice ch;
    cr_assert_eq(sampler_step(s, lg, prompt, 3, 0, SAMPLER_TOKEN_ONLY, &ch), SAMPLER_OK);
    cr_assert_eq(ch.constraint, SAMPLER_CONSTRAINT_NONE);
    sampler_free(s);
    /* a constraint built for another vocabulary is refused */
    tvocab tv;
    tv_build(&tv, 5, 1);
    sampler_vocab *other = tv_vocab(&tv);
    sampler_constraint *c = sampler_constraint_new(g, other);
    sampler_params bad = { .constraint = c };
    const char *name = NULL;
    cr_assert_eq(sampler_params_validate(&bad, V, &name), SAMPLER_EINVAL);
    cr_assert_str_eq(name, "constraint");
    cr_assert_null(sampler_new(V, &bad));
    sampler_constraint_free(c);
    sampler_vocab_free(other);
    tv_free(&tv);
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
    (void)toy;
}

Test(constrain, sampler_generate_stops_when_the_text_is_complete)
{
    static toy_lm toy;
    toy_init(&toy, TOY_WAVE, V, 64);
    sampler_vocab *sv = toy_vocab();
    sampler_grammar *g = compile("root ::= \"yes\" | \"no\"");
    for (uint64_t seed = 1; seed <= 20; seed++) {
        sampler_constraint *c = sampler_constraint_new(g, sv);
        sampler_params p = { .temperature = 1.0f, .seed = seed, .constraint = c };
        const int32_t prompt[2] = { 1, 5 };
        int32_t out[2 + 40];
        int n = sampler_generate(&toy.lm, prompt, 2, 40, &p, out);
        cr_assert_gt(n, 2);
        char text[256];
        text_of(out + 2, n - 2, text);
        cr_assert(!strcmp(text, "yes") || !strcmp(text, "no"), "seed %llu: [%s]", (unsigned long long)seed, text);
        /* it stopped at once: no end token was needed, none was drawn */
        for (int k = 2; k < n; k++) cr_assert_neq(out[k], 2);
        sampler_constraint_free(c);
    }
    sampler_grammar_free(g);
    sampler_vocab_free(sv);
}
