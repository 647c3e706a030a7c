/* engine_fixture.h -- drive the scheduler (server/engine.c) in-process, no sockets.
 *
 *   ef_random_model   a small random-weight llama, written as GGUF into a temp folder
 *                     and loaded by model_load (so its tokenizer is a real one);
 *   ef_engine         an engine without a thread, stepped by the test (engine_step),
 *                     or with one (engine_run_thread);
 *   ef_job            a job made from a request body by the real validator;
 *   ef_collect        the events of a job, per choice (token ids, scores, text,
 *                     finish reason) and how it ended.
 * Header-only so any test of tests/server can use it. */
#ifndef LMSERVE_TESTS_SERVER_ENGINE_FIXTURE_H
#define LMSERVE_TESTS_SERVER_ENGINE_FIXTURE_H

#include "server/server_internal.h"
#include "model/formats/gguf_write.h"
#include "model/model.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the model ------------------------------------------------------------------------ */

typedef struct {
    char dir[64];
    char path[128];
    model *m;
} ef_model;

/* ---- a random llama written as GGUF, loaded by model_load ---- */

static inline uint64_t ef_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A (rows, cols) F32 tensor uniform in [-a, a) (a == 0: all ones). */
static inline void ef_tensor(void *w, const char *name, int rows, int cols, float a, uint64_t *s)
{
    size_t n = (size_t)rows * (size_t)cols;
    float *x = malloc(n * sizeof *x);
    cr_assert_not_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = a == 0 ? 1.0f : a * (float)((double)(ef_rng(s) >> 11) / 4503599627370496.0 - 1.0);
    int64_t ne[2] = { cols, rows };
    cr_assert_eq(gguf_writer_tensor(w, name, 0 /* F32 */, ne, rows > 1 ? 2 : 1, x, n * sizeof *x), 0);
    free(x);
}

/* Vocabulary: <unk> <s> </s>, the 256 byte tokens, then distinct lowercase pieces of
 * one to three letters, every other one with SentencePiece's space marker. */
static inline char *ef_piece(int id)
{
    char buf[32];
    if (id < 3) return strdup(id == 0 ? "<unk>" : id == 1 ? "<s>" : "</s>");
    if (id < 259) {
        snprintf(buf, sizeof buf, "<0x%02X>", id - 3);
        return strdup(buf);
    }
    int k = id - 259, v = k / 2, o = 0;
    if (k % 2) o = snprintf(buf, sizeof buf, "\xe2\x96\x81");
    int len = v < 26 ? 1 : v < 26 + 676 ? 2 : 3;
    int idx = v < 26 ? v : v < 26 + 676 ? v - 26 : v - 26 - 676;
    for (int i = len - 1; i >= 0; i--, idx /= 26) buf[o + i] = (char)('a' + idx % 26);
    buf[o + len] = '\0';
    return strdup(buf);
}

/* A random llama (vocab 512, dim 64, 2 layers, 4 heads / 2 KV heads, hidden 96, window
 * ctx) whose next-token distributions are neither flat nor one-hot: an untied output
 * matrix of moderate scale. */
static inline void ef_random_model(ef_model *f, int ctx, unsigned seed, int threads)
{
    enum { V = 512, D = 64, L = 2, NH = 4, NKV = 2, H = 96 };
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/lmserve-engine-XXXXXX");
    cr_assert_not_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/random.gguf", f->dir);
    gguf_writer *w = gguf_writer_new();
    cr_assert_not_null(w);
    uint64_t s = seed;
    int hd = D / NH, kvd = hd * NKV;
    float ad = 1.0f / sqrtf((float)D), ah = 1.0f / sqrtf((float)H);
    gguf_writer_kv_str(w, "general.architecture", "llama");
    gguf_writer_kv_u32(w, "llama.context_length", (uint32_t)ctx);
    gguf_writer_kv_u32(w, "llama.embedding_length", D);
    gguf_writer_kv_u32(w, "llama.block_count", L);
    gguf_writer_kv_u32(w, "llama.feed_forward_length", H);
    gguf_writer_kv_u32(w, "llama.attention.head_count", NH);
    gguf_writer_kv_u32(w, "llama.attention.head_count_kv", NKV);
    gguf_writer_kv_u32(w, "llama.rope.dimension_count", (uint32_t)hd);
    gguf_writer_kv_f32(w, "llama.rope.freq_base", 10000.0f);
    gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_writer_kv_str(w, "tokenizer.ggml.model", "llama");
    char *toks[V];
    float scores[V];
    int32_t types[V];
    for (int i = 0; i < V; i++) {
        toks[i] = ef_piece(i);
        cr_assert_not_null(toks[i]);
        scores[i] = i < 259 ? 0.0f : -(float)(i - 259);
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1; /* unknown, control, byte, normal */
    }
    int rc = gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, V);
    rc |= gguf_writer_kv_arr_f32(w, "tokenizer.ggml.scores", scores, V);
    rc |= gguf_writer_kv_arr_i32(w, "tokenizer.ggml.token_type", types, V);
    rc |= gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", 1);
    rc |= gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
    rc |= gguf_writer_kv_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    cr_assert_eq(rc, 0);
    for (int i = 0; i < V; i++) free(toks[i]);
    char name[64];
    ef_tensor(w, "token_embd.weight", V, D, 1.0f, &s);
    for (int l = 0; l < L; l++) {
#define EF_T(fmt, r, c, a) (snprintf(name, sizeof name, fmt, l), ef_tensor(w, name, r, c, a, &s))
        EF_T("blk.%d.attn_norm.weight", 1, D, 0);
        EF_T("blk.%d.attn_q.weight", D, D, ad);
        EF_T("blk.%d.attn_k.weight", kvd, D, ad);
        EF_T("blk.%d.attn_v.weight", kvd, D, ad);
        EF_T("blk.%d.attn_output.weight", D, D, ad);
        EF_T("blk.%d.ffn_norm.weight", 1, D, 0);
        EF_T("blk.%d.ffn_gate.weight", H, D, ad);
        EF_T("blk.%d.ffn_down.weight", D, H, ah);
        EF_T("blk.%d.ffn_up.weight", H, D, ad);
#undef EF_T
    }
    ef_tensor(w, "output_norm.weight", 1, D, 0, &s);
    ef_tensor(w, "output.weight", V, D, 0.5f, &s);
    char err[512] = "";
    cr_assert_eq(gguf_writer_write(w, f->path, err, sizeof err), 0, "%s", err);
    gguf_writer_free(w);
    model_load_opts o = { .n_threads = threads };
    cr_assert_eq(model_load(&f->m, f->path, &o, err, sizeof err), 0, "%s", err);
}

static inline void ef_model_free(ef_model *f)
{
    model_free(f->m);
    f->m = NULL;
    unlink(f->path);
    rmdir(f->dir);
}

/* ---- engine and jobs ---------------------------------------------------------------------- */

static inline engine *ef_engine(model *m, int parallel, int ctx, int queue, int chunk, int budget)
{
    engine_config c = { .model = m,
                        .parallel = parallel,
                        .ctx = ctx,
                        .queue = queue,
                        .prefill_chunk = chunk,
                        .step_budget = budget,
                        .outbox_limit = 1 << 20 };
    engine *e = NULL;
    cr_assert_eq(engine_new(&e, &c), 0);
    return e;
}

static inline int ef_tokenize(void *cls, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    return model_tokenize(cls, text, len, add_bos, out, cap);
}

static inline validate_ctx ef_vc(model *m, int ctx)
{
    const model_info *mi = model_get_info(m);
    return (validate_ctx){ .model_id = "random",
                           .vocab = mi->vocab_size,
                           .ctx = ctx,
                           .add_bos = mi->add_bos,
                           .bos_id = mi->bos_id,
                           .max_tokens_limit = 4096,
                           .max_choices = 64,
                           .tokenize = ef_tokenize,
                           .tok_cls = m };
}

/* A job from a /v1/completions body (kind JOB_COMPLETION) or a chat body. */
static inline job *ef_job(model *m, int ctx, int kind, const char *body)
{
    validate_ctx vc = ef_vc(m, ctx);
    job_params p;
    api_error err;
    cr_assert_eq(validate_request(&vc, kind, body, strlen(body), &p, &err), 0, "%s: %s", body, err.message);
    job *j = job_new(NULL, &p, "random");
    cr_assert_not_null(j);
    return j;
}

/* Step until nothing is left (at most max_steps). Returns the steps taken. */
static inline int ef_run(engine *e, int max_steps)
{
    int n = 0;
    while (engine_step(e, NULL)) cr_assert_lt(++n, max_steps, "the engine did not settle in %d steps", max_steps);
    return n;
}

/* ---- collected events ------------------------------------------------------------------- */

#define EF_MAX_CHOICES 8
#define EF_MAX_TOKENS  512

typedef struct {
    int n_tok;
    int32_t tok[EF_MAX_TOKENS];
    sampler_choice score[EF_MAX_TOKENS];
    char text[8192];
    size_t text_len;
    const char *finish;
    int n_finish; /* EV_FINISH events seen (exactly 1 when done) */
    int prompt_events;
} ef_choice;

typedef struct {
    ef_choice ch[EF_MAX_CHOICES];
    int events;
    int ended;
    job_end end;
} ef_result;

/* Take the job's new events into r (r accumulates across calls); on_prompt, when
 * given, also sees every EV_PROMPT event (with its prompt scores) before it is freed. */
static inline void ef_collect_with(job *j, ef_result *r, void (*on_prompt)(const job_event *ev, void *ctx),
                                   void *ctx)
{
    int ended = 0;
    job_end end;
    job_event *ev = job_take_events(j, &ended, &end);
    while (ev) {
        job_event *next = ev->next;
        cr_assert(ev->choice >= 0 && ev->choice < EF_MAX_CHOICES);
        ef_choice *c = &r->ch[ev->choice];
        cr_assert_eq(c->n_finish, 0, "an event after the choice finished");
        if (ev->type == EV_TOKEN) {
            cr_assert_lt(c->n_tok, EF_MAX_TOKENS);
            c->score[c->n_tok] = ev->tok;
            c->tok[c->n_tok++] = ev->tok.token;
        } else if (ev->type == EV_FINISH) {
            c->finish = ev->finish;
            c->n_finish++;
        } else if (ev->type == EV_PROMPT) {
            c->prompt_events++;
            if (on_prompt) on_prompt(ev, ctx);
        }
        cr_assert_lt(c->text_len + ev->text_len, sizeof c->text);
        memcpy(c->text + c->text_len, ev->text, ev->text_len);
        c->text_len += ev->text_len;
        c->text[c->text_len] = '\0';
        r->events++;
        job_event_free(ev);
        ev = next;
    }
    if (ended) {
        cr_assert_eq(r->ended, 0, "the job ended twice");
        r->ended = 1;
        r->end = end;
    }
}

static inline void ef_collect(job *j, ef_result *r)
{
    ef_collect_with(j, r, NULL, NULL);
}

/* Submit, run to the end on a stepped engine, collect. */
static inline void ef_complete(engine *e, job *j, ef_result *r)
{
    memset(r, 0, sizeof *r);
    cr_assert_eq(engine_submit(e, j), 0);
    ef_run(e, 100000);
    ef_collect(j, r);
    cr_assert(r->ended, "the job did not end");
}

#endif
