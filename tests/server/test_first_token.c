/* test_first_token.c -- how many engine steps a new request waits for its first token
 * while the other slots decode (server/engine.c's admission and prefill).
 *
 * The promise: a request that finds a free slot is admitted at the next step
 * boundary and its prompt (up to --prefill-chunk tokens) is fed in that step beside
 * the decoding sequences, so its first token comes from the first or second step
 * that begins after it was submitted -- whatever the number of streams decoding --
 * and the decoding streams lose no step meanwhile.  Counted in engine steps, not in
 * time: a step's length depends on the machine, the count does not. */
#include "tests/server/engine_fixture.h"

#include <time.h>

#define CTX 2048
static ef_model F;
static void setup(void) { ef_random_model(&F, CTX, 29, 2); }
static void teardown(void) { ef_model_free(&F); }
TestSuite(first_token, .init = setup, .fini = teardown, .timeout = 120);

#define NO_EOS  "\"logit_bias\": {\"2\": -100}"
#define DECODER "{\"prompt\": \"the dog\", \"max_tokens\": 2000, \"temperature\": 0, " NO_EOS "}"

typedef struct {
    job *j[15];
    ef_result *r[15];
} decoders;

/* 15 streams in 16 slots, stepped until every one has its first token. */
static void start_decoders(engine *e, decoders *d)
{
    for (int i = 0; i < 15; i++) {
        d->j[i] = ef_job(F.m, CTX, JOB_COMPLETION, DECODER);
        d->r[i] = calloc(1, sizeof *d->r[i]);
        cr_assert_not_null(d->r[i]);
        cr_assert_eq(engine_submit(e, d->j[i]), 0);
    }
    for (int steps = 0;; steps++) {
        cr_assert_lt(steps, 10, "15 short prompts took more than 10 steps");
        int all = 1;
        for (int i = 0; i < 15; i++) {
            ef_collect(d->j[i], d->r[i]);
            all &= d->r[i]->ch[0].n_tok > 0;
        }
        if (all) break;
        cr_assert(engine_step(e, NULL));
    }
}

static void end_decoders(engine *e, decoders *d)
{
    engine_stop(e);
    for (int i = 0; i < 15; i++) {
        job_unref(d->j[i]);
        free(d->r[i]);
    }
}

/* A prompt of n token ids (BOS first). */
static void prompt_body(char *body, size_t cap, int n, int max_tokens)
{
    snprintf(body, cap, "{\"prompt\": [1");
    for (int i = 1; i < n; i++) snprintf(body + strlen(body), cap - strlen(body), ", %d", 300 + i % 200);
    snprintf(body + strlen(body), cap - strlen(body), "], \"max_tokens\": %d, \"temperature\": 0, " NO_EOS "}",
             max_tokens);
}

/* Step until the newcomer has a token; every decoder must gain one token per step.
 * Returns the steps taken. */
static int steps_to_first_token(engine *e, decoders *d, job *nj)
{
    ef_result *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    int steps = 0;
    while (r->ch[0].n_tok == 0) {
        int before[15];
        for (int i = 0; i < 15; i++) before[i] = d->r[i]->ch[0].n_tok;
        engine_step_info info;
        cr_assert(engine_step(e, &info));
        steps++;
        for (int i = 0; i < 15; i++) {
            ef_collect(d->j[i], d->r[i]);
            cr_assert_eq(d->r[i]->ch[0].n_tok, before[i] + 1, "decoder %d lost step %d", i, steps);
        }
        ef_collect(nj, r);
        cr_assert_lt(steps, 20, "no first token in 20 steps beside 15 decoders");
    }
    cr_assert_eq(atomic_load(&nj->stat_steps), steps, "the job's own step count (log line) says %d",
                 atomic_load(&nj->stat_steps));
    free(r);
    return steps;
}

/* Engine steps until a prompt of prompt_tokens tokens, submitted while 15 streams
 * decode, gets its first token.  Defaults of lmserve serve: --prefill-chunk 64
 * --step-budget 128. */
static int first_token_beside_15_decoders(int prompt_tokens)
{
    engine *e = ef_engine(F.m, 16, CTX, 16, 64, 128);
    decoders d;
    start_decoders(e, &d);
    char body[4096];
    prompt_body(body, sizeof body, prompt_tokens, 4);
    job *nj = ef_job(F.m, CTX, JOB_COMPLETION, body);
    cr_assert_eq(engine_submit(e, nj), 0);
    int steps = steps_to_first_token(e, &d, nj);
    job_unref(nj);
    end_decoders(e, &d);
    return steps;
}

Test(first_token, short_prompt_beside_15_decoders_in_one_step)
{
    int steps = first_token_beside_15_decoders(12);
    cr_assert_leq(steps, 2, "first token after %d steps", steps);
    cr_assert_eq(steps, 1, "a 12-token prompt fits the step it is admitted in (%d steps)", steps);
}

Test(first_token, prompt_of_one_full_chunk_beside_15_decoders)
{
    int steps = first_token_beside_15_decoders(64);
    cr_assert_leq(steps, 2, "first token after %d steps", steps);
}

/* The slot frees as one stream ends and the next request takes it (a closed-loop
 * client): still within two steps, again and again. */
Test(first_token, each_replacement_stream_within_two_steps)
{
    engine *e = ef_engine(F.m, 16, CTX, 16, 64, 128);
    decoders d;
    start_decoders(e, &d);
    char body[4096];
    for (int round = 0; round < 8; round++) {
        prompt_body(body, sizeof body, 8 + 7 * round, 3);
        job *nj = ef_job(F.m, CTX, JOB_COMPLETION, body);
        cr_assert_eq(engine_submit(e, nj), 0);
        int steps = steps_to_first_token(e, &d, nj);
        cr_assert_leq(steps, 2, "round %d: first token after %d steps", round, steps);
        /* let it finish (its 3 tokens) so that the slot is free for the next round */
        ef_result *r = calloc(1, sizeof *r);
        cr_assert_not_null(r);
        for (int k = 0; k < 10 && !r->ended; k++) {
            engine_step(e, NULL);
            ef_collect(nj, r);
            for (int i = 0; i < 15; i++) ef_collect(d.j[i], d.r[i]);
        }
        cr_assert(r->ended, "round %d: the short request did not end", round);
        free(r);
        job_unref(nj);
    }
    end_decoders(e, &d);
}

/* With the engine on its own thread, requests arrive at any point of a step: the
 * job's count of steps begun from its submission to its first token is 1 (admitted
 * at the next boundary) or 2 (submitted just after a step began). */
Test(first_token, on_the_engine_thread_within_two_steps)
{
    engine *e = ef_engine(F.m, 16, CTX, 16, 64, 128);
    job *dj[15];
    for (int i = 0; i < 15; i++) {
        dj[i] = ef_job(F.m, CTX, JOB_COMPLETION, DECODER);
        cr_assert_eq(engine_submit(e, dj[i]), 0);
    }
    cr_assert_eq(engine_run_thread(e), 0);
    char body[4096];
    for (int round = 0; round < 20; round++) {
        prompt_body(body, sizeof body, 10 + round, 2);
        job *nj = ef_job(F.m, CTX, JOB_COMPLETION, body);
        cr_assert_eq(engine_submit(e, nj), 0);
        ef_result *r = calloc(1, sizeof *r);
        cr_assert_not_null(r);
        for (int k = 0; !r->ended; k++) {
            cr_assert_lt(k, 20000, "round %d: no end in 20 s", round);
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);
            ef_collect(nj, r);
        }
        cr_assert_eq(r->end.error, JOB_OK);
        int steps = atomic_load(&nj->stat_steps);
        cr_assert(steps >= 1 && steps <= 2, "round %d: first token %d steps after submission", round, steps);
        free(r);
        job_unref(nj);
    }
    /* the 15 were decoding all along: every one has tokens and is still running */
    int q, rr, rs;
    engine_stats(e, &q, &rr, &rs);
    cr_assert_eq(rs, 15, "%d sequences running at the end, not the 15 decoders", rs);
    for (int i = 0; i < 15; i++) cr_assert_gt(atomic_load(&dj[i]->stat_completion), 0, "decoder %d", i);
    engine_stop(e);
    for (int i = 0; i < 15; i++) job_unref(dj[i]);
}
