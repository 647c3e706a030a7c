/* test_prefix.c -- the prefix cache (server/prefix.c) through the scheduler, on a
 * random-weight model, step by step: every request is also run on an engine without
 * the cache (--cache-mb 0), and tokens, logprobs, prompt scores and text must be
 * EQUAL (memcmp) -- reuse may change how much is computed, never a bit of what comes
 * out.  Covered: a repeated prompt (greedy, seeded), n choices prefilled once,
 * 16 requests sharing a long prefix with different suffixes at once, eviction under
 * a tiny budget, a prefix left by a cancelled request, scoring (echo + logprobs)
 * reusing scores, the context crop, and the counts reported (cached_tokens, metrics). */
#include "tests/server/engine_fixture.h"

static ef_model F;
#define CTX 256
static void setup(void) { ef_random_model(&F, CTX, 23, 2); }
static void teardown(void) { ef_model_free(&F); }
TestSuite(prefix, .init = setup, .fini = teardown, .timeout = 240);

#define NO_EOS "\"logit_bias\": {\"2\": -100}"

/* ---- helpers ------------------------------------------------------------------------------ */

static engine *pf_engine(int parallel, int ctx, int chunk, int budget, size_t cache, metrics *met)
{
    engine_config c = { .model = F.m,
                        .parallel = parallel,
                        .ctx = ctx,
                        .queue = 64,
                        .prefill_chunk = chunk,
                        .step_budget = budget,
                        .outbox_limit = 1 << 20,
                        .cache_bytes = cache,
                        .metrics = met };
    engine *e = NULL;
    cr_assert_eq(engine_new(&e, &c), 0);
    return e;
}

/* n token ids: a BOS, then ids from the letter pieces, a function of (seed, i). */
static void pf_ids(int32_t *out, int n, int seed)
{
    out[0] = 1;
    for (int i = 1; i < n; i++) out[i] = 259 + (int32_t)((i * 37 + seed * 101 + (i * i) % 13) % 240);
}

/* A request body whose prompt is ids[0..n) and whose other fields are `rest`. */
static char *pf_body(const int32_t *ids, int n, const char *rest)
{
    size_t cap = (size_t)n * 8 + strlen(rest) + 64;
    char *b = malloc(cap);
    cr_assert_not_null(b);
    size_t o = (size_t)snprintf(b, cap, "{\"prompt\": [");
    for (int i = 0; i < n; i++) o += (size_t)snprintf(b + o, cap - o, "%s%d", i ? "," : "", ids[i]);
    snprintf(b + o, cap - o, "], %s}", rest);
    return b;
}

static job *pf_job(const int32_t *ids, int n, const char *rest)
{
    char *b = pf_body(ids, n, rest);
    job *j = ef_job(F.m, CTX, JOB_COMPLETION, b);
    free(b);
    return j;
}

/* What a job produced, with the prompt scores EV_PROMPT carries. */
typedef struct {
    ef_result r;
    sampler_choice pscore[EF_MAX_CHOICES][CTX];
    int n_pscore[EF_MAX_CHOICES];
} pf_result;

static void pf_prompt_scores(const job_event *ev, void *ctx)
{
    pf_result *out = ctx;
    if (!ev->scores) return;
    cr_assert_leq(ev->n_ids, CTX);
    memcpy(out->pscore[ev->choice], ev->scores, sizeof *ev->scores * (size_t)ev->n_ids);
    out->n_pscore[ev->choice] = ev->n_ids;
}

/* pf_run polls every job after each step, also after it ended (nothing more comes) */
static void pf_collect(job *j, pf_result *out)
{
    if (!out->r.ended) ef_collect_with(j, &out->r, pf_prompt_scores, out);
}

/* Step e until idle, collecting jobs[0..n) as events come; returns the prompt (and
 * window) rows fed. */
static int pf_run(engine *e, job **jobs, int n, pf_result *res)
{
    int prefill = 0, steps = 0;
    engine_step_info info;
    while (engine_step(e, &info)) {
        prefill += info.prefill_rows;
        cr_assert_lt(++steps, 100000);
        for (int i = 0; i < n; i++) pf_collect(jobs[i], &res[i]);
    }
    for (int i = 0; i < n; i++) {
        pf_collect(jobs[i], &res[i]);
        cr_assert(res[i].r.ended, "job %d did not end", i);
    }
    return prefill;
}

/* Submit one job, run it alone to the end; returns the prefill rows. */
static int pf_one(engine *e, job *j, pf_result *res)
{
    memset(res, 0, sizeof *res);
    cr_assert_eq(engine_submit(e, j), 0);
    return pf_run(e, &j, 1, res);
}

/* One request of ids[0..n) with the parameters rest, run alone on e to its end. */
static int pf_request(engine *e, const int32_t *ids, int n, const char *rest, pf_result *res)
{
    job *j = pf_job(ids, n, rest);
    int rows = pf_one(e, j, res);
    job_unref(j);
    return rows;
}

static pf_result *pf_new(int n)
{
    pf_result *r = calloc((size_t)n, sizeof *r);
    cr_assert_not_null(r);
    return r;
}

static int score_eq(const sampler_choice *a, const sampler_choice *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i].token != b[i].token || a[i].n_top != b[i].n_top ||
            memcmp(&a[i].logprob, &b[i].logprob, sizeof a[i].logprob) != 0 ||
            memcmp(a[i].top, b[i].top, sizeof a[i].top[0] * (size_t)a[i].n_top) != 0)
            return 0;
    return 1;
}

/* The two results are the same, choice by choice, bit for bit. */
static void pf_assert_same(const pf_result *a, const pf_result *b, int n_choices, const char *what)
{
    cr_assert_eq(a->r.end.error, JOB_OK, "%s", what);
    cr_assert_eq(b->r.end.error, JOB_OK, "%s", what);
    for (int c = 0; c < n_choices; c++) {
        const ef_choice *x = &a->r.ch[c], *y = &b->r.ch[c];
        cr_assert_gt(x->n_tok + a->n_pscore[c], 0, "%s: choice %d produced nothing", what, c);
        cr_assert_eq(x->n_tok, y->n_tok, "%s: choice %d: %d tokens vs %d", what, c, x->n_tok, y->n_tok);
        cr_assert_eq(memcmp(x->tok, y->tok, sizeof(int32_t) * (size_t)x->n_tok), 0, "%s: choice %d tokens", what, c);
        cr_assert(score_eq(x->score, y->score, x->n_tok), "%s: choice %d logprobs differ", what, c);
        cr_assert_str_eq(x->text, y->text, "%s: choice %d text", what, c);
        cr_assert_eq(a->n_pscore[c], b->n_pscore[c]);
        cr_assert(score_eq(a->pscore[c], b->pscore[c], a->n_pscore[c]), "%s: choice %d prompt scores differ", what, c);
        cr_assert_str_eq(x->finish ? x->finish : "", y->finish ? y->finish : "", "%s", what);
    }
}

#define MB ((size_t)1 << 20)

/* ---- tests --------------------------------------------------------------------------------- */

/* The second of two identical requests computes only the prompt's last token: its
 * chunks start at the end of the reused prefix (other boundaries than the first's
 * 64, 64, 64, 48), and every token and logprob is the cache-off engine's. */
static void repeat_prompt(const char *params)
{
    int32_t ids[240];
    pf_ids(ids, 240, 1);
    engine *off = pf_engine(4, CTX, 64, 128, 0, NULL), *on = pf_engine(4, CTX, 64, 128, 64 * MB, NULL);
    pf_result *r = pf_new(3);
    int rows_off = pf_request(off, ids, 240, params, &r[0]);
    cr_assert_eq(rows_off, 240);
    cr_assert_eq(r[0].r.end.cached_tokens, 0);
    int rows1 = pf_request(on, ids, 240, params, &r[1]);
    cr_assert_eq(rows1, 240, "the first request computes its whole prompt");
    cr_assert_eq(r[1].r.end.cached_tokens, 0);
    int rows2 = pf_request(on, ids, 240, params, &r[2]);
    cr_assert_eq(rows2, 1, "a repeated prompt computes only its last position (got %d rows)", rows2);
    cr_assert_eq(r[2].r.end.cached_tokens, 239);
    pf_assert_same(&r[0], &r[1], 1, "first request, cache on");
    pf_assert_same(&r[0], &r[2], 1, "repeated request, cache on");
    free(r);
    engine_stop(off);
    engine_stop(on);
}

Test(prefix, repeated_prompt_greedy)
{
    repeat_prompt("\"max_tokens\": 12, \"temperature\": 0, \"logprobs\": 3, " NO_EOS);
}
Test(prefix, repeated_prompt_seeded)
{
    repeat_prompt("\"max_tokens\": 12, \"temperature\": 0.8, \"seed\": 99, \"logprobs\": 2, " NO_EOS);
}

/* A prompt that continues a retained one computes only its new part, and one that
 * shares only a start takes that start. */
Test(prefix, longest_common_prefix_of_retained_sequences)
{
    int32_t a[200], b[200];
    pf_ids(a, 200, 2);
    memcpy(b, a, sizeof b);
    for (int i = 150; i < 200; i++) b[i] = 259 + (b[i] - 259 + 7) % 240; /* b = a[0..150) + other */
    const char *params = "\"max_tokens\": 6, \"temperature\": 0.8, \"seed\": 5, \"logprobs\": 1, " NO_EOS;
    engine *off = pf_engine(2, CTX, 32, 64, 0, NULL), *on = pf_engine(2, CTX, 32, 64, 64 * MB, NULL);
    pf_result *r = pf_new(2);
    cr_assert_eq(pf_request(on, a, 120, params, &r[0]), 120); /* a's first 120 */
    /* the first retained a[0..120) and 5 of its tokens; those may by chance go on as a does */
    int same = 0;
    while (same < 5 && r[0].r.ch[0].tok[same] == a[120 + same]) same++;
    int rows = pf_request(on, a, 200, params, &r[1]);
    cr_assert_eq(r[1].r.end.cached_tokens, 120 + same, "got %d", r[1].r.end.cached_tokens);
    cr_assert_eq(rows, 80 - same);
    pf_request(off, a, 200, params, &r[0]);
    pf_assert_same(&r[0], &r[1], 1, "continued prompt");
    rows = pf_request(on, b, 200, params, &r[1]); /* shares 150 with the retained a */
    cr_assert_eq(r[1].r.end.cached_tokens, 150);
    cr_assert_eq(rows, 50);
    pf_request(off, b, 200, params, &r[0]);
    pf_assert_same(&r[0], &r[1], 1, "prompt sharing a start");
    free(r);
    engine_stop(off);
    engine_stop(on);
}

/* n = 4: the prompt is prefilled once (the other choices wait for it, then compute
 * only its last position), and each choice is what it is without the cache. */
Test(prefix, n_choices_prefill_the_prompt_once)
{
    int32_t ids[100];
    pf_ids(ids, 100, 3);
    const char *params = "\"n\": 4, \"max_tokens\": 10, \"temperature\": 0.8, \"seed\": 17, \"logprobs\": 2, " NO_EOS;
    engine *off = pf_engine(4, CTX, 16, 64, 0, NULL), *on = pf_engine(4, CTX, 16, 64, 64 * MB, NULL);
    pf_result *r = pf_new(2);
    cr_assert_eq(pf_request(off, ids, 100, params, &r[0]), 400, "without the cache each choice prefills");
    int rows = pf_request(on, ids, 100, params, &r[1]);
    cr_assert_eq(rows, 100 + 3, "the prompt once, then the last position for each other choice (got %d)", rows);
    cr_assert_eq(r[1].r.end.cached_tokens, 0, "the request computed its prompt: nothing was cached before it");
    pf_assert_same(&r[0], &r[1], 4, "n = 4");
    cr_assert_neq(memcmp(r[1].r.ch[0].tok, r[1].r.ch[1].tok, sizeof(int32_t) * 10), 0, "choices not distinct");
    /* n choices through fewer slots than choices: the later ones reuse too */
    engine *on2 = pf_engine(2, CTX, 16, 64, 64 * MB, NULL);
    pf_request(on2, ids, 100, params, &r[1]);
    pf_assert_same(&r[0], &r[1], 4, "n = 4 through 2 slots");
    free(r);
    engine_stop(off);
    engine_stop(on);
    engine_stop(on2);
}

/* 16 requests at once, one long shared prefix and different suffixes, seeded: each
 * is what it is alone without the cache; the prefix is computed once. */
Test(prefix, sixteen_concurrent_requests_sharing_a_prefix)
{
    enum { N = 16, PRE = 160, SUF = 12 };
    int32_t ids[N][PRE + SUF];
    for (int i = 0; i < N; i++) {
        pf_ids(ids[i], PRE, 4);
        for (int k = 0; k < SUF; k++) ids[i][PRE + k] = 259 + (i * 13 + k * 5) % 240;
    }
    char params[160];
    pf_result *alone = pf_new(N), *load = pf_new(N);
    engine *off = pf_engine(1, CTX, 64, 64, 0, NULL);
    job *jobs[N];
    for (int i = 0; i < N; i++) {
        snprintf(params, sizeof params,
                 "\"max_tokens\": %d, \"temperature\": 0.8, \"top_p\": 0.9, \"seed\": %d, \"logprobs\": 1, " NO_EOS,
                 8 + i % 5, 1000 + i);
        pf_request(off, ids[i], PRE + SUF, params, &alone[i]);
        jobs[i] = pf_job(ids[i], PRE + SUF, params);
    }
    engine_stop(off);
    engine *on = pf_engine(16, CTX, 64, 128, 64 * MB, NULL);
    for (int i = 0; i < N; i++) cr_assert_eq(engine_submit(on, jobs[i]), 0);
    int rows = pf_run(on, jobs, N, load);
    for (int i = 0; i < N; i++) {
        char what[64];
        snprintf(what, sizeof what, "request %d of 16", i);
        pf_assert_same(&alone[i], &load[i], 1, what);
        job_unref(jobs[i]);
    }
    cr_assert_eq(rows, PRE + N * SUF, "the shared prefix once and every suffix (got %d rows)", rows);
    free(alone);
    free(load);
    engine_stop(on);
}

/* A budget that holds about one retained sequence: requests alternate between prompts,
 * so entries are evicted all the time; outputs do not change, the budget holds. */
Test(prefix, eviction_under_a_tiny_budget)
{
    metrics met;
    cr_assert_eq(metrics_init(&met), 0);
    size_t per = model_seq_position_bytes(F.m);
    size_t budget = per * 200; /* one 130-position sequence (allocated 256) does not fit two */
    engine *off = pf_engine(2, CTX, 32, 64, 0, NULL), *on = pf_engine(2, CTX, 32, 64, budget, &met);
    pf_result *r = pf_new(2);
    int32_t ids[3][120];
    for (int p = 0; p < 3; p++) pf_ids(ids[p], 120, 10 + p);
    int reused = 0;
    for (int round = 0; round < 9; round++) {
        int p = (round / 2) % 3; /* each prompt twice: the second takes it from the first */
        char params[128];
        snprintf(params, sizeof params, "\"max_tokens\": 8, \"temperature\": 0.7, \"seed\": %d, " NO_EOS, round);
        pf_request(off, ids[p], 120 - round, params, &r[0]);
        pf_request(on, ids[p], 120 - round, params, &r[1]);
        reused += r[1].r.end.cached_tokens;
        pf_assert_same(&r[0], &r[1], 1, "tiny budget");
        uv_mutex_lock(&met.mu);
        cr_assert_leq(met.cache_bytes, budget, "the cache holds %zu bytes over its budget %zu", met.cache_bytes,
                      budget);
        uv_mutex_unlock(&met.mu);
    }
    cr_assert_gt(met.cache_evictions, 0, "nothing was evicted");
    cr_assert_gt(reused, 0, "nothing was reused");
    cr_assert_eq(met.prompt_reused, (uint64_t)reused);
    free(r);
    engine_stop(off);
    engine_stop(on);
    metrics_destroy(&met);
}

/* A request cancelled in the middle of its prefill leaves the chunks it completed;
 * the next request with that prompt takes them, and its output is the cache-off one. */
Test(prefix, prefix_left_by_a_cancelled_request)
{
    int32_t ids[200];
    pf_ids(ids, 200, 6);
    const char *params = "\"max_tokens\": 10, \"temperature\": 0.9, \"seed\": 3, \"logprobs\": 2, " NO_EOS;
    engine *off = pf_engine(2, CTX, 32, 32, 0, NULL), *on = pf_engine(2, CTX, 32, 32, 64 * MB, NULL);
    pf_result *r = pf_new(2);
    pf_request(off, ids, 200, params, &r[0]);
    job *a = pf_job(ids, 200, params);
    cr_assert_eq(engine_submit(on, a), 0);
    for (int i = 0; i < 3; i++) cr_assert(engine_step(on, NULL)); /* 3 chunks of 32 */
    engine_cancel(on, a, CANCEL_CLIENT);
    ef_run(on, 10);
    job_unref(a);
    int rows = pf_request(on, ids, 200, params, &r[1]);
    cr_assert_eq(r[1].r.end.cached_tokens, 96, "the 3 chunks computed before the cancel (got %d)",
                 r[1].r.end.cached_tokens);
    cr_assert_eq(rows, 200 - 96);
    pf_assert_same(&r[0], &r[1], 1, "after a cancelled request");
    free(r);
    engine_stop(off);
    engine_stop(on);
}

/* Scoring (echo + logprobs, max_tokens 0, as lmserve-eval's sweep and score send it):
 * prompt + continuation after prompt + another continuation takes the prompt's
 * positions WITH their scores; every score is the cache-off one.  A request asking
 * for another number of alternatives does not take them. */
Test(prefix, scoring_reuses_positions_with_their_scores)
{
    int32_t ids[3][180];
    for (int i = 0; i < 3; i++) {
        pf_ids(ids[i], 150, 7);
        for (int k = 150; k < 180; k++) ids[i][k] = 259 + (k * 11 + i * 29) % 240;
    }
    engine *off = pf_engine(2, CTX, 64, 64, 0, NULL), *on = pf_engine(2, CTX, 64, 64, 64 * MB, NULL);
    pf_result *r = pf_new(2);
    static const char *const params[3] = { "\"echo\": true, \"logprobs\": 0, \"max_tokens\": 0",
                                           "\"echo\": true, \"logprobs\": 0, \"max_tokens\": 0",
                                           "\"echo\": true, \"logprobs\": 2, \"max_tokens\": 3, \"temperature\": 0" };
    static const int want_rows[3] = { 180, 31, 180 }; /* the second: positions 149.. (the score of token
                                                      * 150, the first that differs, needs position 149) */
    for (int i = 0; i < 3; i++) {
        pf_request(off, ids[i], 180, params[i], &r[0]);
        cr_assert_geq(r[0].n_pscore[0], 179, "every prompt token echoed with its score");
        int rows = pf_request(on, ids[i], 180, params[i], &r[1]);
        cr_assert_eq(rows, want_rows[i], "request %d: %d rows", i, rows);
        pf_assert_same(&r[0], &r[1], 1, "scoring");
    }
    free(r);
    engine_stop(off);
    engine_stop(on);
}

/* Past the window the entries are the window's, computed from position 0: a sequence
 * that ran past its window and a later one whose prompt is its final window agree
 * with the cache-off engine. */
Test(prefix, context_crop)
{
    int W = 48;
    int32_t ids[40];
    pf_ids(ids, 40, 8);
    const char *params = "\"n\": 2, \"max_tokens\": 70, \"temperature\": 0.8, \"seed\": 8, \"logprobs\": 1, " NO_EOS;
    engine *off = pf_engine(2, W, 16, 32, 0, NULL), *on = pf_engine(2, W, 16, 32, 64 * MB, NULL);
    pf_result *r = pf_new(2);
    char *b = pf_body(ids, 40, params);
    job *j = ef_job(F.m, W, JOB_COMPLETION, b);
    pf_one(off, j, &r[0]);
    job_unref(j);
    j = ef_job(F.m, W, JOB_COMPLETION, b);
    pf_one(on, j, &r[1]);
    job_unref(j);
    free(b);
    pf_assert_same(&r[0], &r[1], 2, "past the window");
    /* the last W - 1 tokens of choice 0 as a prompt */
    int32_t tail[64];
    int n_all = 40 + 70;
    int32_t *all = malloc(sizeof *all * (size_t)n_all);
    cr_assert_not_null(all);
    memcpy(all, ids, sizeof ids);
    memcpy(all + 40, r[1].r.ch[0].tok, sizeof(int32_t) * 70);
    memcpy(tail, all + n_all - (W - 8), sizeof(int32_t) * (size_t)(W - 8));
    free(all);
    b = pf_body(tail, W - 8, "\"max_tokens\": 5, \"temperature\": 0, \"logprobs\": 2, " NO_EOS);
    j = ef_job(F.m, W, JOB_COMPLETION, b);
    pf_one(off, j, &r[0]);
    job_unref(j);
    j = ef_job(F.m, W, JOB_COMPLETION, b);
    pf_one(on, j, &r[1]);
    job_unref(j);
    free(b);
    pf_assert_same(&r[0], &r[1], 1, "a prompt from past the window");
    free(r);
    engine_stop(off);
    engine_stop(on);
}

/* Past the window (slide) every window is computed from position 0, so what a sequence
 * retains is its last window, exact for those tokens at positions 0..W-1: a prompt that
 * IS that window takes W - 1 positions, and so does a longer prompt cropped to it; a
 * prompt whose window starts one token later shares no position with it (the same
 * tokens sit one position earlier there) and takes only what the token ids have in
 * common from position 0.  Every answer is the cache-off engine's. */
Test(prefix, reuse_across_a_slide_only_where_exact)
{
    enum { W = 48, NP = 40, NG = 30 };
    int32_t ids[NP];
    pf_ids(ids, NP, 12);
    engine *off = pf_engine(2, W, 16, 32, 0, NULL), *on = pf_engine(2, W, 16, 32, 64 * MB, NULL);
    pf_result *r = pf_new(2);
    char params[160];
    snprintf(params, sizeof params, "\"max_tokens\": %d, \"temperature\": 0.8, \"seed\": 21, \"logprobs\": 1, " NO_EOS,
             NG);
    char *b = pf_body(ids, NP, params);
    job *j = ef_job(F.m, W, JOB_COMPLETION, b);
    pf_one(off, j, &r[0]);
    job_unref(j);
    j = ef_job(F.m, W, JOB_COMPLETION, b);
    pf_one(on, j, &r[1]);
    job_unref(j);
    free(b);
    pf_assert_same(&r[0], &r[1], 1, "a sequence that slid");
    cr_assert_eq(r[1].r.ch[0].n_tok, NG);
    int32_t all[NP + NG];
    memcpy(all, ids, sizeof ids);
    memcpy(all + NP, r[1].r.ch[0].tok, sizeof(int32_t) * NG);
    /* its last token was sampled from the window all[n-1-W .. n-1): the entry it retained */
    const int n = NP + NG, last = n - 1 - W;
    struct {
        const int32_t *ids;
        int len, want_cached, want_dropped;
        const char *what;
    } cases[3] = {
        /* first, while the store holds only that entry */
        { all + last + 1, W, 0, 0, "the window one token later" },
        { all + last, W, W - 1, 0, "a prompt that is the last window" },
        { all, n - 1, W - 1, last, "a longer prompt cropped to the last window" },
    };
    /* the later window takes what its ids share with the retained one from position 0 */
    while (cases[0].want_cached < W - 1 && all[last + 1 + cases[0].want_cached] == all[last + cases[0].want_cached])
        cases[0].want_cached++;
    for (int c = 0; c < 3; c++) {
        b = pf_body(cases[c].ids, cases[c].len, "\"max_tokens\": 6, \"temperature\": 0, \"logprobs\": 2, " NO_EOS);
        j = ef_job(F.m, W, JOB_COMPLETION, b);
        pf_one(off, j, &r[0]);
        job_unref(j);
        j = ef_job(F.m, W, JOB_COMPLETION, b);
        pf_one(on, j, &r[1]);
        job_unref(j);
        free(b);
        pf_assert_same(&r[0], &r[1], 1, cases[c].what);
        cr_assert_eq(r[1].r.end.cached_tokens, cases[c].want_cached, "%s: took %d positions, want %d", cases[c].what,
                     r[1].r.end.cached_tokens, cases[c].want_cached);
        cr_assert_eq(r[1].r.end.prompt_tokens_dropped, cases[c].want_dropped, "%s", cases[c].what);
    }
    free(r);
    engine_stop(off);
    engine_stop(on);
}

/* --cache-mb 0: nothing is shared, not even between choices. */
Test(prefix, off_means_no_reuse)
{
    int32_t ids[50];
    pf_ids(ids, 50, 9);
    engine *off = pf_engine(2, CTX, 64, 128, 0, NULL);
    pf_result *r = pf_new(1);
    for (int i = 0; i < 2; i++) {
        job *j = pf_job(ids, 50, "\"n\": 2, \"max_tokens\": 2, " NO_EOS);
        cr_assert_eq(pf_one(off, j, &r[0]), 100);
        cr_assert_eq(r[0].r.end.cached_tokens, 0);
        job_unref(j);
    }
    free(r);
    engine_stop(off);
}
