/* test_engine.c -- the scheduler (server/engine.c) driven in-process on a random-weight
 * model, step by step, no sockets: admission and the bounded queue, n choices,
 * cancellation between steps, the context crop, chunked prefill under the step
 * budget, identical tokens whatever the batch, shutdown, and the output stage's
 * limit.  Token and score comparisons are exact (memcmp): the engine promises
 * bit-identical results, not close ones. */
#include "tests/server/engine_fixture.h"

#include <math.h>
#include <time.h>

static ef_model F;
static void setup(void) { ef_random_model(&F, 64, 11, 2); }
static void teardown(void) { ef_model_free(&F); }
TestSuite(engine, .init = setup, .fini = teardown, .timeout = 120);

/* Two scores are equal: token, log-probability and the top entries asked for. */
static int score_eq(const sampler_choice *a, const sampler_choice *b, int n)
{
    for (int i = 0; i < n; i++) {
        if (a[i].token != b[i].token || a[i].n_top != b[i].n_top ||
            memcmp(&a[i].logprob, &b[i].logprob, sizeof a[i].logprob) != 0 ||
            memcmp(a[i].top, b[i].top, sizeof a[i].top[0] * (size_t)a[i].n_top) != 0)
            return 0;
    }
    return 1;
}

static ef_result *result_new(void)
{
    ef_result *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    return r;
}

/* EOS banned, so the random model always runs to max_tokens. */
#define NO_EOS "\"logit_bias\": {\"2\": -100}"

Test(engine, admission_and_bounded_queue)
{
    engine *e = ef_engine(F.m, 2, 64, 1, 16, 64);
    const char *body = "{\"prompt\": \"abc\", \"max_tokens\": 4, \"temperature\": 0, " NO_EOS "}";
    job *j[4];
    for (int i = 0; i < 4; i++) j[i] = ef_job(F.m, 64, JOB_COMPLETION, body);
    cr_assert_eq(engine_submit(e, j[0]), 0);
    cr_assert_eq(engine_submit(e, j[1]), 0);
    cr_assert_eq(engine_submit(e, j[2]), 0, "one request may wait (--queue 1)");
    cr_assert_eq(engine_submit(e, j[3]), -1, "a second waiting request is refused (503)");
    int q, rr, rs;
    engine_stats(e, &q, &rr, &rs);
    cr_assert_eq(q, 1, "the first two fit in the free slots, the third waits");
    cr_assert_eq(rs, 0);
    cr_assert(engine_step(e, NULL));
    engine_stats(e, &q, &rr, &rs);
    cr_assert_eq(rs, 2, "two sequences admitted at the first step");
    cr_assert_eq(rr, 2);
    cr_assert_eq(q, 1);
    ef_run(e, 1000);
    engine_stats(e, &q, &rr, &rs);
    cr_assert_eq(q + rr + rs, 0);
    ef_result *r = result_new();
    for (int i = 0; i < 3; i++) {
        memset(r, 0, sizeof *r);
        ef_collect(j[i], r);
        cr_assert(r->ended);
        cr_assert_eq(r->end.error, JOB_OK);
        cr_assert_eq(r->ch[0].n_tok, 4);
        cr_assert_str_eq(r->ch[0].finish, "length");
        cr_assert_eq(r->end.completion_tokens, 4);
        cr_assert_eq(atomic_load(&j[i]->refs), 1, "the engine kept a reference");
    }
    /* the queue is free again */
    cr_assert_eq(engine_submit(e, j[3]), 0);
    ef_run(e, 1000);
    memset(r, 0, sizeof *r);
    ef_collect(j[3], r);
    cr_assert(r->ended);
    for (int i = 0; i < 4; i++) job_unref(j[i]);
    free(r);
    engine_stop(e);
}

Test(engine, n_choices_are_seeded_with_seed_plus_index)
{
    engine *e = ef_engine(F.m, 2, 64, 4, 16, 64); /* 3 choices through 2 slots */
    ef_result *all = result_new(), *one = result_new();
    job *j = ef_job(F.m, 64, JOB_COMPLETION,
                    "{\"prompt\": \"the cat\", \"n\": 3, \"max_tokens\": 12, \"temperature\": 0.9,"
                    " \"seed\": 7, \"logprobs\": 2, " NO_EOS "}");
    ef_complete(e, j, all);
    cr_assert_eq(all->end.completion_tokens, 36);
    for (int c = 0; c < 3; c++) {
        cr_assert_eq(all->ch[c].n_tok, 12);
        cr_assert_eq(all->ch[c].n_finish, 1);
        char body[256];
        snprintf(body, sizeof body,
                 "{\"prompt\": \"the cat\", \"max_tokens\": 12, \"temperature\": 0.9, \"seed\": %d,"
                 " \"logprobs\": 2, " NO_EOS "}",
                 7 + c);
        job *k = ef_job(F.m, 64, JOB_COMPLETION, body);
        ef_complete(e, k, one);
        cr_assert_eq(memcmp(one->ch[0].tok, all->ch[c].tok, 12 * sizeof(int32_t)), 0, "choice %d", c);
        cr_assert(score_eq(one->ch[0].score, all->ch[c].score, 12));
        job_unref(k);
    }
    cr_assert_neq(memcmp(all->ch[0].tok, all->ch[1].tok, 12 * sizeof(int32_t)), 0,
                  "two choices drew the same 12 tokens: seeds not distinct?");
    job_unref(j);
    free(all);
    free(one);
    engine_stop(e);
}

Test(engine, cancellation_between_steps_frees_the_slot)
{
    engine *e = ef_engine(F.m, 1, 64, 4, 16, 64);
    job *a =
        ef_job(F.m, 64, JOB_COMPLETION, "{\"prompt\": \"abc\", \"max_tokens\": 200, \"temperature\": 0, " NO_EOS "}");
    job *b =
        ef_job(F.m, 64, JOB_COMPLETION, "{\"prompt\": \"xyz\", \"max_tokens\": 3, \"temperature\": 0, " NO_EOS "}");
    cr_assert_eq(engine_submit(e, a), 0);
    for (int i = 0; i < 4; i++) cr_assert(engine_step(e, NULL));
    ef_result *r = result_new();
    ef_collect(a, r);
    cr_assert_eq(r->ch[0].n_tok, 4, "prefill + 3 decode steps: 4 tokens");
    cr_assert_eq(engine_submit(e, b), 0);
    engine_cancel(e, a, CANCEL_CLIENT);
    engine_step_info info;
    cr_assert(engine_step(e, &info));
    ef_collect(a, r);
    cr_assert(r->ended, "the cancelled job ended at the next step");
    cr_assert_eq(r->ch[0].n_tok, 4, "no token after the cancel");
    cr_assert_eq(r->ch[0].n_finish, 0, "a cancelled choice has no finish");
    int q, rr, rs;
    engine_stats(e, &q, &rr, &rs);
    cr_assert_eq(rs, 1, "the slot went to the waiting job at once");
    cr_assert_eq(info.items, 1);
    cr_assert_eq(atomic_load(&a->refs), 1);
    ef_run(e, 100);
    memset(r, 0, sizeof *r);
    ef_collect(b, r);
    cr_assert(r->ended);
    cr_assert_eq(r->ch[0].n_tok, 3);
    /* cancelled while still queued: ends without running */
    job *c = ef_job(F.m, 64, JOB_COMPLETION, "{\"prompt\": \"q\", \"max_tokens\": 3}");
    cr_assert_eq(engine_submit(e, c), 0);
    engine_cancel(e, c, CANCEL_CLIENT);
    ef_run(e, 10);
    memset(r, 0, sizeof *r);
    ef_collect(c, r);
    cr_assert(r->ended);
    cr_assert_eq(r->events, 0);
    job_unref(a);
    job_unref(b);
    job_unref(c);
    free(r);
    engine_stop(e);
}

/* ---- the context window ----------------------------------------------------------------- */

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy continuation where every step is computed afresh (a new cache, the whole
 * window in one model_forward call) from hist[win..n), win following the shift
 * rule: when the window no longer fits W, keep its last W/2 tokens. */
static void ref_greedy_shift(model *m, const int32_t *prompt, int n_prompt, int W, int n_new, int32_t *out)
{
    int V = model_get_info(m)->vocab_size;
    int32_t *hist = malloc(sizeof *hist * (size_t)(n_prompt + n_new));
    float *logits = malloc(sizeof *logits * (size_t)V);
    memcpy(hist, prompt, sizeof *hist * (size_t)n_prompt);
    int n = n_prompt, win = 0;
    for (int t = 0; t < n_new; t++) {
        if (n - win > W) win = n - W / 2;
        model_seq *s = model_seq_new(m, W);
        model_batch_item it = { .seq = s, .tokens = hist + win, .n_tokens = n - win, .logits = logits };
        cr_assert_eq(model_forward(m, &it, 1), 0);
        model_seq_free(s);
        logits[2] = -INFINITY; /* the request bans EOS */
        hist[n++] = out[t] = argmax(logits, V);
    }
    free(hist);
    free(logits);
}

Test(engine, context_crop_keeps_half_the_window)
{
    int W = 16;
    engine *e = ef_engine(F.m, 4, W, 4, 8, 16);
    job *j = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 40, \"temperature\": 0,"
                    " \"context_overflow\": \"shift\", " NO_EOS "}");
    ef_result *r = result_new();
    ef_complete(e, j, r);
    cr_assert_eq(r->ch[0].n_tok, 40);
    int32_t want[40], prompt[5] = { 1, 300, 301, 302, 303 };
    ref_greedy_shift(F.m, prompt, 5, W, 40, want);
    for (int t = 0; t < 40; t++) cr_assert_eq(r->ch[0].tok[t], want[t], "token %d", t);
    job_unref(j);
    free(r);
    engine_stop(e);
}

/* The course's loop run directly on the model: every step a fresh cache and one
 * model_forward over full[-W:] (the last W tokens, at positions 0..W-1), then the
 * project's sampler on those logits (the same sampler_step the engine calls, seeded
 * as the engine seeds choice `choice`).  No scheduler, no chunks, no cache reuse.
 * The engine must give the same tokens and scores bit for bit: model_forward's rows
 * do not depend on how a window is cut into chunks or batched. */
static void ref_course(model *m, const job *j, int choice, int W, int32_t *tok, sampler_choice *sc)
{
    int V = model_get_info(m)->vocab_size;
    const int32_t *prompt = j->p.prompts[choice / j->p.n];
    int n_prompt = j->p.prompt_lens[choice / j->p.n], n_new = j->p.max_tokens;
    sampler_params sp = j->p.sp;
    sp.seed += (uint64_t)choice;
    sampler *smp = sampler_new(V, &sp);
    int32_t *full = malloc(sizeof *full * (size_t)(n_prompt + n_new));
    float *logits = malloc(sizeof *logits * (size_t)V);
    cr_assert(smp && full && logits);
    memcpy(full, prompt, sizeof *full * (size_t)n_prompt);
    int n = n_prompt;
    int n_top = j->p.logprobs > 0 ? j->p.logprobs : j->p.logprobs == 0 ? 0 : SAMPLER_TOKEN_ONLY;
    for (int t = 0; t < n_new; t++) {
        int start = n > W ? n - W : 0;
        model_seq *s = model_seq_new(m, W);
        model_batch_item it = { .seq = s, .tokens = full + start, .n_tokens = n - start, .logits = logits };
        cr_assert_eq(model_forward(m, &it, 1), 0);
        model_seq_free(s);
        cr_assert_eq(sampler_step(smp, logits, full, n, t, n_top, &sc[t]), 0);
        full[n++] = tok[t] = sc[t].token;
    }
    sampler_free(smp);
    free(full);
    free(logits);
}

static void check_against_course(ef_result *r, job *j, int W)
{
    for (int c = 0; c < j->n_choices; c++) {
        int32_t want[EF_MAX_TOKENS];
        sampler_choice wsc[EF_MAX_TOKENS];
        ref_course(F.m, j, c, W, want, wsc);
        cr_assert_eq(r->ch[c].n_tok, j->p.max_tokens, "choice %d", c);
        for (int t = 0; t < j->p.max_tokens; t++) cr_assert_eq(r->ch[c].tok[t], want[t], "choice %d token %d", c, t);
        cr_assert(score_eq(r->ch[c].score, wsc, j->p.max_tokens), "choice %d: scores differ", c);
    }
}

/* slide, the default: 4 windows past a 16-token window, greedy and seeded, n = 2,
 * alone and beside 7 other streams (some sliding too). */
Test(engine, slide_is_the_course_loop)
{
    int W = 16;
    const char *bodies[] = {
        "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 70, \"temperature\": 0, \"n\": 2,"
        " \"logprobs\": 2, " NO_EOS "}",
        "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 70, \"temperature\": 0.9, \"top_k\": 50,"
        " \"seed\": 99, \"n\": 2, \"logprobs\": 2, \"repetition_penalty\": 1.1, " NO_EOS "}",
    };
    ef_result *r = result_new();
    for (int b = 0; b < 2; b++) {
        engine *e = ef_engine(F.m, 2, W, 4, 8, 16);
        job *j = ef_job(F.m, W, JOB_COMPLETION, bodies[b]);
        ef_complete(e, j, r);
        check_against_course(r, j, W);
        cr_assert_eq(r->end.prompt_tokens_dropped, 0);
        job_unref(j);
        engine_stop(e);

        /* under load: 7 other requests, long and short, sliding and not, before and after */
        e = ef_engine(F.m, 9, W, 16, 8, 16);
        job *others[7];
        for (int i = 0; i < 7; i++) {
            char body[256];
            snprintf(body, sizeof body, "{\"prompt\": \"%.*s\", \"max_tokens\": %d, \"seed\": %d%s}", 2 + 3 * i,
                     "the brown fox and the lazy dog", 5 + 13 * i, i, i % 2 ? ", \"context_overflow\": \"shift\"" : "");
            others[i] = ef_job(F.m, W, JOB_COMPLETION, body);
            if (i < 3) cr_assert_eq(engine_submit(e, others[i]), 0);
        }
        engine_step(e, NULL);
        engine_step(e, NULL);
        job *k = ef_job(F.m, W, JOB_COMPLETION, bodies[b]);
        cr_assert_eq(engine_submit(e, k), 0);
        for (int i = 3; i < 7; i++) cr_assert_eq(engine_submit(e, others[i]), 0);
        ef_run(e, 100000);
        memset(r, 0, sizeof *r);
        ef_collect(k, r);
        check_against_course(r, k, W);
        for (int i = 0; i < 7; i++) job_unref(others[i]);
        job_unref(k);
        engine_stop(e);
    }
    free(r);
}

/* A prompt longer than the window: the course's loop crops it to its last W tokens. */
Test(engine, slide_crops_a_long_prompt)
{
    int W = 16;
    char body[512] = "{\"prompt\": [1";
    for (int i = 1; i < 40; i++) snprintf(body + strlen(body), sizeof body - strlen(body), ", %d", 260 + 7 * i % 250);
    strcat(body, "], \"max_tokens\": 50, \"temperature\": 0.8, \"seed\": 5, \"logprobs\": 1, " NO_EOS "}");
    engine *e = ef_engine(F.m, 2, W, 4, 8, 16);
    job *j = ef_job(F.m, W, JOB_COMPLETION, body);
    ef_result *r = result_new();
    engine_step_info info;
    cr_assert_eq(engine_submit(e, j), 0);
    int prefill = 0;
    while (r->ch[0].n_tok == 0) {
        cr_assert(engine_step(e, &info));
        prefill += info.prefill_rows;
        ef_collect(j, r);
    }
    cr_assert_eq(prefill, W, "only the last W prompt tokens are computed");
    ef_run(e, 10000);
    ef_collect(j, r);
    check_against_course(r, j, W);
    cr_assert_eq(r->end.prompt_tokens, 40);
    cr_assert_eq(r->end.prompt_tokens_dropped, 40 - W);
    job_unref(j);
    free(r);
    engine_stop(e);
}

/* echo + logprobs over a prompt longer than the window: position t is scored from
 * its own window full[max(0, t - W):t], as the course's loop would see it. */
Test(engine, slide_scores_each_prompt_position_from_its_own_window)
{
    int W = 16, N = 30, V = model_get_info(F.m)->vocab_size;
    char body[512] = "{\"prompt\": [1";
    int32_t prompt[30] = { 1 };
    for (int i = 1; i < N; i++) {
        prompt[i] = 260 + 11 * i % 250;
        snprintf(body + strlen(body), sizeof body - strlen(body), ", %d", prompt[i]);
    }
    strcat(body, "], \"max_tokens\": 3, \"temperature\": 0, \"echo\": true, \"logprobs\": 3, " NO_EOS "}");
    engine *e = ef_engine(F.m, 2, W, 4, 8, 16);
    job *j = ef_job(F.m, W, JOB_COMPLETION, body);
    cr_assert_eq(engine_submit(e, j), 0);
    ef_run(e, 10000);
    /* the scores travel in the EV_PROMPT event: read them from the job's queue */
    int ended = 0;
    job_end end;
    job_event *ev = job_take_events(j, &ended, &end), *pe = NULL;
    for (job_event *x = ev; x; x = x->next)
        if (x->type == EV_PROMPT) pe = x;
    cr_assert_not_null(pe);
    cr_assert_eq(pe->n_ids, N);
    cr_assert_eq(pe->pos0, 0);
    float *logits = malloc(sizeof *logits * (size_t)V);
    for (int t = 1; t < N; t++) {
        int start = t > W ? t - W : 0;
        model_seq *s = model_seq_new(F.m, W);
        model_batch_item it = { .seq = s, .tokens = prompt + start, .n_tokens = t - start, .logits = logits };
        cr_assert_eq(model_forward(F.m, &it, 1), 0);
        model_seq_free(s);
        sampler_choice want;
        sampler_logprobs(logits, V, prompt[t], 3, &want);
        cr_assert(score_eq(&pe->scores[t], &want, 1), "prompt position %d", t);
    }
    /* and the generation after it: from the last W prompt tokens */
    int n_tok = 0;
    for (job_event *x = ev; x; x = x->next) n_tok += x->type == EV_TOKEN;
    cr_assert_eq(n_tok, 3);
    cr_assert(ended);
    while (ev) {
        job_event *next = ev->next;
        job_event_free(ev);
        ev = next;
    }
    free(logits);
    job_unref(j);
    engine_stop(e);
}

/* A window that repeats one token: each slide finds all but the last position still
 * in the cache (an entry depends only on the tokens up to it), computes one token,
 * and still gives the course's loop's tokens and scores. */
Test(engine, slide_reuses_what_the_cache_still_holds)
{
    int W = 16;
    metrics m;
    cr_assert_eq(metrics_init(&m), 0);
    engine_config c = {
        .model = F.m, .parallel = 2, .ctx = W, .queue = 4, .prefill_chunk = 8, .step_budget = 16, .metrics = &m
    };
    engine *e = NULL;
    cr_assert_eq(engine_new(&e, &c), 0);
    job *j = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 300, 300, 300], \"max_tokens\": 40, \"temperature\": 0, \"logprobs\": 1,"
                    " \"logit_bias\": {\"300\": 100}}");
    ef_result *r = result_new();
    cr_assert_eq(engine_submit(e, j), 0);
    int steps = ef_run(e, 200);
    ef_collect(j, r);
    cr_assert(r->ended);
    for (int t = 0; t < 40; t++) cr_assert_eq(r->ch[0].tok[t], 300);
    check_against_course(r, j, W);
    cr_assert_eq(steps, 1 + 40, "prefill, then one step per token");
    cr_assert_eq(m.window_moves, 4 + 40 - 1 - W);
    cr_assert_eq(m.recomputed, (uint64_t)(W - 1), "only the first slide (the BOS leaves) recomputes");
    job_unref(j);
    free(r);
    engine_stop(e);
    metrics_destroy(&m);
}

Test(engine, stop_ends_at_the_window)
{
    int W = 16;
    engine *e = ef_engine(F.m, 2, W, 4, 8, 16);
    job *j = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 40, \"temperature\": 0,"
                    " \"context_overflow\": \"stop\", " NO_EOS "}");
    ef_result *r = result_new();
    ef_complete(e, j, r);
    cr_assert_eq(r->ch[0].n_tok, W - 5, "prompt + completion = the window");
    cr_assert_str_eq(r->ch[0].finish, "length");
    /* the same tokens as slide up to there */
    job *k = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 40, \"temperature\": 0, " NO_EOS "}");
    ef_result *r2 = result_new();
    ef_complete(e, k, r2);
    cr_assert_eq(memcmp(r->ch[0].tok, r2->ch[0].tok, sizeof(int32_t) * (size_t)(W - 5)), 0);
    /* a prompt that fills the window: nothing to generate, no model call */
    job *f = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], \"max_tokens\": 4,"
                    " \"context_overflow\": \"stop\"}");
    memset(r, 0, sizeof *r);
    cr_assert_eq(engine_submit(e, f), 0);
    engine_step_info info;
    engine_step(e, &info);
    cr_assert_eq(info.rows, 0);
    ef_collect(f, r);
    cr_assert(r->ended);
    cr_assert_eq(r->ch[0].n_tok, 0);
    cr_assert_str_eq(r->ch[0].finish, "length");
    job_unref(j);
    job_unref(k);
    job_unref(f);
    free(r);
    free(r2);
    engine_stop(e);
}

Test(engine, window_moves_are_counted)
{
    int W = 16;
    metrics m;
    cr_assert_eq(metrics_init(&m), 0);
    engine_config c = {
        .model = F.m, .parallel = 2, .ctx = W, .queue = 4, .prefill_chunk = 8, .step_budget = 16, .metrics = &m
    };
    engine *e = NULL;
    cr_assert_eq(engine_new(&e, &c), 0);
    job *j = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 40, \"temperature\": 0, " NO_EOS "}");
    ef_result *r = result_new();
    ef_complete(e, j, r);
    /* a move for every token appended past the window but the last: 5 + 40 - 1 - 16 */
    cr_assert_eq(m.window_moves, 28);
    cr_assert_leq(m.recomputed, 28 * (uint64_t)(W - 1));
    cr_assert_geq(m.recomputed, 28 * (uint64_t)(W - 1) / 2, "%llu", (unsigned long long)m.recomputed);
    job *k = ef_job(F.m, W, JOB_COMPLETION,
                    "{\"prompt\": [1, 300, 301, 302, 303], \"max_tokens\": 40, \"temperature\": 0,"
                    " \"context_overflow\": \"shift\", " NO_EOS "}");
    ef_complete(e, k, r);
    cr_assert_eq(m.window_moves, 28 + 4, "shift: when 17, 26, 35 and 44 tokens no longer fit");
    job_unref(j);
    job_unref(k);
    free(r);
    engine_stop(e);
    metrics_destroy(&m);
}

/* ---- chunked prefill -------------------------------------------------------------------- */

Test(engine, chunked_prefill_under_the_step_budget)
{
    int chunk = 8, budget = 16;
    engine *e = ef_engine(F.m, 4, 64, 4, chunk, budget);
    job *d[2];
    for (int i = 0; i < 2; i++) {
        d[i] =
            ef_job(F.m, 64, JOB_COMPLETION, "{\"prompt\": \"ab\", \"max_tokens\": 30, \"temperature\": 0, " NO_EOS "}");
        cr_assert_eq(engine_submit(e, d[i]), 0);
    }
    cr_assert(engine_step(e, NULL)); /* both prompts in one step: 3 tokens each (BOS a b) */
    char body[1024] = "{\"prompt\": [1";
    for (int i = 1; i < 60; i++) snprintf(body + strlen(body), sizeof body - strlen(body), ", %d", 300 + i);
    strcat(body, "], \"max_tokens\": 2, \"temperature\": 0, " NO_EOS "}");
    job *big[2];
    for (int i = 0; i < 2; i++) {
        big[i] = ef_job(F.m, 64, JOB_COMPLETION, body);
        cr_assert_eq(engine_submit(e, big[i]), 0);
    }
    ef_result *rd[2] = { result_new(), result_new() }, *rb = result_new();
    int steps = 0, first_token_step = -1;
    while (first_token_step < 0) {
        engine_step_info info;
        int before[2];
        for (int i = 0; i < 2; i++) {
            ef_collect(d[i], rd[i]);
            before[i] = rd[i]->ch[0].n_tok;
        }
        cr_assert(engine_step(e, &info));
        steps++;
        cr_assert_leq(info.prefill_rows, budget, "step %d fed %d prompt tokens", steps, info.prefill_rows);
        cr_assert_eq(info.prefill_rows % chunk == 0 || info.prefill_rows % chunk == 60 % chunk, 1);
        for (int i = 0; i < 2; i++) {
            ef_collect(d[i], rd[i]);
            cr_assert_eq(rd[i]->ch[0].n_tok, before[i] + 1, "stream %d missed a token at step %d", i, steps);
        }
        ef_collect(big[0], rb);
        if (rb->ch[0].n_tok > 0) first_token_step = steps;
        cr_assert_lt(steps, 50);
    }
    /* 60 tokens in chunks of 8 = 8 chunks; two long prompts share the 16-token budget */
    cr_assert_eq(first_token_step, 8, "first token after %d steps", first_token_step);
    ef_run(e, 1000);
    for (int i = 0; i < 2; i++) {
        job_unref(d[i]);
        job_unref(big[i]);
        free(rd[i]);
    }
    free(rb);
    engine_stop(e);
}

/* ---- batch independence ----------------------------------------------------------------- */

static const char *SEEDED =
    "{\"prompt\": \"the little dog ran to the park\", \"max_tokens\": 24,"
    " \"temperature\": 0.8, \"top_k\": 40, \"top_p\": 0.95, \"seed\": 4242, \"logprobs\": 3, " NO_EOS "}";

Test(engine, identical_whatever_the_batch)
{
    ef_result *alone = result_new(), *r = result_new();
    engine *e1 = ef_engine(F.m, 1, 64, 4, 8, 8);
    job *j = ef_job(F.m, 64, JOB_COMPLETION, SEEDED);
    ef_complete(e1, j, alone);
    job_unref(j);
    engine_stop(e1);
    cr_assert_eq(alone->ch[0].n_tok, 24);

    /* among 7 others: long prompts prefilled beside it, decodes of other lengths,
     * some submitted before and some after */
    engine *e = ef_engine(F.m, 8, 64, 16, 8, 16);
    job *others[7];
    for (int i = 0; i < 7; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"prompt\": \"%.*s\", \"max_tokens\": %d, \"temperature\": 1, \"seed\": %d}",
                 5 + 6 * i, "story of the big brown fox and the lazy dog who slept all day long in the sun", 10 + 5 * i,
                 i);
        others[i] = ef_job(F.m, 64, JOB_COMPLETION, body);
        if (i < 4) cr_assert_eq(engine_submit(e, others[i]), 0);
    }
    engine_step(e, NULL);
    j = ef_job(F.m, 64, JOB_COMPLETION, SEEDED);
    cr_assert_eq(engine_submit(e, j), 0);
    for (int i = 4; i < 7; i++) cr_assert_eq(engine_submit(e, others[i]), 0);
    ef_run(e, 10000);
    ef_collect(j, r);
    cr_assert_eq(r->ch[0].n_tok, 24);
    cr_assert_eq(memcmp(r->ch[0].tok, alone->ch[0].tok, sizeof(int32_t) * 24), 0);
    cr_assert(score_eq(r->ch[0].score, alone->ch[0].score, 24), "logprobs differ under load");
    cr_assert_str_eq(r->ch[0].text, alone->ch[0].text);
    for (int i = 0; i < 7; i++) job_unref(others[i]);
    job_unref(j);
    free(alone);
    free(r);
    engine_stop(e);
}

/* ---- shutdown --------------------------------------------------------------------------- */

Test(engine, shutdown_ends_every_job_once)
{
    engine *e = ef_engine(F.m, 2, 64, 8, 16, 64);
    cr_assert_eq(engine_run_thread(e), 0);
    job *j[5];
    for (int i = 0; i < 5; i++) {
        j[i] = ef_job(F.m, 64, JOB_COMPLETION,
                      i < 4 ? "{\"prompt\": \"abc\", \"max_tokens\": 4000, " NO_EOS "}"
                            : "{\"prompt\": \"abc\", \"max_tokens\": 1}");
        cr_assert_eq(engine_submit(e, j[i]), 0);
    }
    /* wait until the first two stream tokens (the rest queue behind them) */
    ef_result *r = result_new();
    for (int tries = 0; r->ch[0].n_tok < 2; tries++) {
        cr_assert_lt(tries, 5000, "no tokens from the engine thread");
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
        ef_collect(j[0], r);
    }
    engine_stop(e);
    for (int i = 0; i < 5; i++) {
        memset(r, 0, sizeof *r);
        ef_collect(j[i], r);
        cr_assert(r->ended, "job %d never ended", i);
        cr_assert_eq(r->end.error, JOB_ERR_SHUTDOWN, "job %d: error %d", i, r->end.error);
        cr_assert_eq(atomic_load(&j[i]->refs), 1, "job %d: a reference left behind", i);
        job_unref(j[i]);
    }
    free(r);
}

/* ---- through the output stage ----------------------------------------------------------- */

/* All of a job's output bytes (the output stage run as the loop thread would). */
static char *drain_all(job *j, size_t *len)
{
    sbuf b = { 0 };
    char buf[4096];
    int done = 0;
    for (;;) {
        size_t n = job_out_take(j, buf, sizeof buf, &done);
        if (n) cr_assert_eq(sbuf_append(&b, buf, n), 0);
        if (done || !n) break;
    }
    cr_assert(done, "the answer is not complete");
    *len = b.len;
    return b.data ? b.data : strdup("");
}

Test(engine, stream_and_whole_answer_agree)
{
    engine *e = ef_engine(F.m, 4, 64, 4, 16, 64);
    const char *bodies[2] = { "{\"prompt\": [5, 300, 301], \"max_tokens\": 10, \"temperature\": 0.7, \"seed\": 3, "
                              "\"logprobs\": 2, \"echo\": true,"
                              " " NO_EOS "}",
                              "{\"prompt\": [5, 300, 301], \"max_tokens\": 10, \"temperature\": 0.7, \"seed\": 3, "
                              "\"logprobs\": 2, \"echo\": true,"
                              " \"stream\": true, " NO_EOS "}" };
    job *j[2];
    for (int i = 0; i < 2; i++) {
        j[i] = ef_job(F.m, 64, JOB_COMPLETION, bodies[i]);
        cr_assert_eq(engine_submit(e, j[i]), 0);
    }
    ef_run(e, 1000);
    size_t n;
    char *whole = drain_all(j[0], &n);
    json_t *o = json_loads(whole, 0, NULL);
    cr_assert_not_null(o, "not JSON: %s", whole);
    json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
    json_t *lp = json_object_get(c0, "logprobs");
    const char *text = json_string_value(json_object_get(c0, "text"));
    cr_assert_not_null(text);
    /* the stream: its text and logprobs entries concatenated */
    char *stream = drain_all(j[1], &n);
    sbuf st = { 0 };
    json_t *tokens = json_array(), *lps = json_array(), *offs = json_array();
    int done = 0;
    for (char *p = stream; (p = strstr(p, "data: "));) {
        p += 6;
        char *end = strstr(p, "\n\n");
        cr_assert_not_null(end);
        *end = '\0';
        if (!strcmp(p, "[DONE]")) {
            done = 1;
            break;
        }
        json_t *ev = json_loads(p, 0, NULL);
        cr_assert_not_null(ev, "not JSON: %s", p);
        json_t *c = json_array_get(json_object_get(ev, "choices"), 0);
        const char *t = json_string_value(json_object_get(c, "text"));
        sbuf_append(&st, t, strlen(t));
        json_t *l = json_object_get(c, "logprobs");
        if (json_is_object(l)) {
            json_array_extend(tokens, json_object_get(l, "tokens"));
            json_array_extend(lps, json_object_get(l, "token_logprobs"));
            json_array_extend(offs, json_object_get(l, "text_offset"));
        }
        json_decref(ev);
        p = end + 2;
    }
    cr_assert(done, "no [DONE]");
    cr_assert_str_eq(st.data, text);
    cr_assert(json_equal(tokens, json_object_get(lp, "tokens")));
    cr_assert(json_equal(lps, json_object_get(lp, "token_logprobs")), "logprobs differ");
    cr_assert(json_equal(offs, json_object_get(lp, "text_offset")));
    cr_assert_eq(json_array_size(tokens), 3 + 10, "the echoed prompt, then 10 tokens");
    cr_assert(json_is_null(json_array_get(lps, 0)), "the first prompt token has no logprob");
    json_decref(tokens);
    json_decref(lps);
    json_decref(offs);
    sbuf_free(&st);
    json_decref(o);
    free(whole);
    free(stream);
    for (int i = 0; i < 2; i++) job_unref(j[i]);
    engine_stop(e);
}

Test(engine, output_over_its_limit_cancels_the_job)
{
    engine_config c = {
        .model = F.m, .parallel = 2, .ctx = 64, .queue = 4, .prefill_chunk = 16, .step_budget = 64, .outbox_limit = 2000
    };
    engine *e = NULL;
    cr_assert_eq(engine_new(&e, &c), 0);
    job *j = ef_job(F.m, 64, JOB_COMPLETION,
                    "{\"prompt\": \"abc\", \"max_tokens\": 1000, \"logprobs\": 5, \"stream\": true, " NO_EOS "}");
    cr_assert_eq(engine_submit(e, j), 0);
    int steps = 0;
    while (engine_step(e, NULL)) {
        output_drain(j); /* the loop thread formats, nobody reads */
        cr_assert_leq(j->out_held, 2000, "the outbox grew past its limit");
        cr_assert_lt(++steps, 1000);
    }
    output_drain(j);
    cr_assert_eq(atomic_load(&j->cancel), CANCEL_OVERFLOW);
    cr_assert(j->done);
    cr_assert_lt(j->completion_tokens, 100, "the engine kept generating for a stalled client");
    job_unref(j);
    engine_stop(e);
}
