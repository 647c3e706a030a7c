/* test_prefix_take.c -- the prefix cache (server/prefix.c) taking a retained sequence
 * whole instead of copying from it: when every token the retained sequence holds
 * starts the new window and the new sequence has no memory yet, the new sequence gets
 * the retained model_seq itself (the same memory, no copy) and the entry leaves the
 * store; otherwise the prefix is copied and the entry stays.  Either way the logits
 * that follow are bitwise those of a sequence that computed everything itself. */
#include "tests/server/engine_fixture.h"

static ef_model F;
#define CTX 128
static void setup(void) { ef_random_model(&F, CTX, 41, 2); }
static void teardown(void) { ef_model_free(&F); }
TestSuite(prefix_take, .init = setup, .fini = teardown, .timeout = 120);

static void ids(int32_t *out, int n, int seed)
{
    out[0] = 1;
    for (int i = 1; i < n; i++) out[i] = 259 + (int32_t)((i * 31 + seed * 97 + (i * i) % 11) % 240);
}

/* Feed tokens[0..n) to s (which holds nothing past `from`), in one item; logits of
 * the last position into lg (may be NULL). */
static void feed(model_seq *s, const int32_t *tokens, int from, int n, float *lg)
{
    float *tmp = lg ? NULL : malloc(sizeof(float) * (size_t)model_get_info(F.m)->vocab_size);
    model_batch_item it = { .seq = s, .tokens = tokens + from, .n_tokens = n - from, .logits = lg ? lg : tmp };
    cr_assert_eq(model_forward(F.m, &it, 1), 0);
    free(tmp);
}

/* The logits after w[0..n) computed from position 0 by a fresh sequence. */
static float *reference(const int32_t *w, int n)
{
    int V = model_get_info(F.m)->vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)V);
    model_seq *s = model_seq_new(F.m, CTX);
    cr_assert(lg && s);
    feed(s, w, 0, n, lg);
    model_seq_free(s);
    return lg;
}

typedef struct {
    kv_store *st;
    seq_kv a, b;
} two;

static void two_open(two *t)
{
    memset(t, 0, sizeof *t);
    cr_assert_eq(kv_store_new(&t->st, (size_t)64 << 20, 2), 0);
    kv_store_attach(t->st, &t->a);
    kv_store_attach(t->st, &t->b);
    cr_assert_eq(seq_kv_open(&t->a, F.m, CTX), 0);
    cr_assert_eq(seq_kv_open(&t->b, F.m, CTX), 0);
}

static void two_close(two *t)
{
    seq_kv_close(&t->a);
    seq_kv_close(&t->b);
    kv_store_free(t->st);
}

static kv_store_stats stats(const two *t)
{
    kv_store_stats s;
    kv_store_get_stats(t->st, &s);
    return s;
}

/* b continues w after taking what a retained, and must end with the reference logits. */
static void finish_and_compare(two *t, const int32_t *w, int n)
{
    int V = model_get_info(F.m)->vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)V);
    cr_assert_not_null(lg);
    feed(t->b.seq, w, seq_kv_len(&t->b), n, lg);
    float *want = reference(w, n);
    cr_assert_eq(memcmp(lg, want, sizeof(float) * (size_t)V), 0, "logits differ from a full computation");
    free(lg);
    free(want);
}

Test(prefix_take, a_retained_sequence_that_starts_the_window_is_taken_whole)
{
    two t;
    two_open(&t);
    int32_t w[40];
    ids(w, 40, 1);
    feed(t.a.seq, w, 0, 30, NULL); /* a: the first 30 tokens of b's window */
    const struct model_seq *a_seq = t.a.seq;
    seq_kv_retain(&t.a);
    cr_assert_eq(stats(&t).entries, 1);
    cr_assert_null(t.a.seq, "the finished sequence went to the store");
    cr_assert_eq(model_seq_bytes(t.b.seq), 0, "b has no memory of its own yet");
    cr_assert_eq(seq_kv_reuse(&t.b, w, 40, -1, NULL, 1), 30);
    cr_assert_eq((const void *)t.b.seq, (const void *)a_seq, "the retained sequence was copied, not taken");
    cr_assert_eq(seq_kv_len(&t.b), 30);
    kv_store_stats s = stats(&t);
    cr_assert_eq(s.taken, 1);
    cr_assert_eq(s.entries, 0, "the taken entry is still in the store");
    cr_assert_eq(s.bytes, 0);
    finish_and_compare(&t, w, 40);
    two_close(&t);
}

Test(prefix_take, the_same_window_again_takes_all_but_its_last_position)
{
    two t;
    two_open(&t);
    int32_t w[24];
    ids(w, 24, 2);
    feed(t.a.seq, w, 0, 24, NULL);
    const struct model_seq *a_seq = t.a.seq;
    seq_kv_retain(&t.a);
    cr_assert_eq(seq_kv_reuse(&t.b, w, 24, -1, NULL, 1), 23, "the last token is always fed again");
    cr_assert_eq((const void *)t.b.seq, (const void *)a_seq);
    cr_assert_eq(seq_kv_len(&t.b), 23);
    finish_and_compare(&t, w, 24);
    two_close(&t);
}

Test(prefix_take, a_retained_sequence_holding_more_than_the_window_shares_is_copied)
{
    two t;
    two_open(&t);
    int32_t w[40], other[40];
    ids(w, 40, 3);
    memcpy(other, w, sizeof other);
    for (int i = 20; i < 40; i++) other[i] = 300 + i; /* the same 20 tokens, then others */
    cr_assert_neq(other[20], w[20]);
    feed(t.a.seq, other, 0, 30, NULL);
    const struct model_seq *a_seq = t.a.seq;
    seq_kv_retain(&t.a);
    cr_assert_eq(seq_kv_reuse(&t.b, w, 40, -1, NULL, 1), 20);
    cr_assert_neq((const void *)t.b.seq, (const void *)a_seq, "taking it would lose positions 20..29 of `other`");
    kv_store_stats s = stats(&t);
    cr_assert_eq(s.taken, 0);
    cr_assert_eq(s.entries, 1, "the entry stays for a request continuing `other`");
    finish_and_compare(&t, w, 40);
    two_close(&t);
}

Test(prefix_take, a_sequence_with_memory_of_its_own_copies)
{
    two t;
    two_open(&t);
    int32_t w[40], x[16];
    ids(w, 40, 4);
    ids(x, 16, 5);
    feed(t.b.seq, x, 0, 16, NULL); /* b held something before: it has memory */
    seq_kv_sync(&t.b, NULL, 0, 0);
    cr_assert_gt(model_seq_bytes(t.b.seq), 0);
    const struct model_seq *b_seq = t.b.seq;
    feed(t.a.seq, w, 0, 30, NULL);
    seq_kv_retain(&t.a);
    cr_assert_eq(seq_kv_reuse(&t.b, w, 40, -1, NULL, 1), 30);
    cr_assert_eq((const void *)t.b.seq, (const void *)b_seq, "b keeps its own memory and copies into it");
    cr_assert_eq(stats(&t).taken, 0);
    cr_assert_eq(stats(&t).entries, 1);
    finish_and_compare(&t, w, 40);
    two_close(&t);
}

Test(prefix_take, scores_come_with_a_taken_sequence)
{
    two t;
    two_open(&t);
    int32_t w[32];
    ids(w, 32, 6);
    int V = model_get_info(F.m)->vocab_size, n = 32, n_top = 2;
    float *all = malloc(sizeof(float) * (size_t)V * (size_t)n);
    sampler_choice plp[32], got[32];
    cr_assert_not_null(all);
    memset(plp, 0, sizeof plp);
    memset(got, 0, sizeof got);
    /* a scores its whole window, as an echo + logprobs request does */
    model_batch_item it = { .seq = t.a.seq, .tokens = w, .n_tokens = n, .logits = all, .all_logits = 1 };
    cr_assert_eq(model_forward(F.m, &it, 1), 0);
    for (int p = 0; p + 1 < n; p++) sampler_logprobs(all + (size_t)p * (size_t)V, V, w[p + 1], n_top, &plp[p + 1]);
    seq_kv_scored(&t.a, plp, n, n_top);
    const struct model_seq *a_seq = t.a.seq;
    seq_kv_retain(&t.a);
    /* b scores the same prompt: it takes a's positions with their scores */
    int k = seq_kv_reuse(&t.b, w, n, n_top, got, 1);
    cr_assert_gt(k, 0);
    cr_assert_eq((const void *)t.b.seq, (const void *)a_seq);
    cr_assert_eq(t.b.n_scores, k, "b holds the scores of the tokens it holds");
    cr_assert_eq(memcmp(got + 1, plp + 1, sizeof *got * (size_t)k), 0, "the scores handed to the request differ");
    cr_assert_eq(memcmp(t.b.scores + 1, plp + 1, sizeof *plp * (size_t)(k - 1)), 0);
    free(all);
    two_close(&t);
}

Test(prefix_take, a_sequence_whose_window_may_move_copies)
{
    two t;
    two_open(&t);
    int32_t w[40];
    ids(w, 40, 7);
    feed(t.a.seq, w, 0, 30, NULL);
    const struct model_seq *a_seq = t.a.seq;
    seq_kv_retain(&t.a);
    /* a window that may slide would drop what it took: the entry must stay in the store */
    cr_assert_eq(seq_kv_reuse(&t.b, w, 40, -1, NULL, 0), 30);
    cr_assert_neq((const void *)t.b.seq, (const void *)a_seq);
    cr_assert_eq(stats(&t).taken, 0);
    cr_assert_eq(stats(&t).entries, 1);
    finish_and_compare(&t, w, 40);
    two_close(&t);
}
