/* server_internal.h -- types shared by the files of server/ (never included elsewhere
 * except by tests/server).  See server.h for the design.
 *
 * Ownership: a `job` is reference-counted.  References are held by the HTTP request
 * that created it (until MHD's completed callback), by the engine (from submit until
 * it ends the job) and by the ready list (while queued for the loop thread).
 *
 * Thread tags on every field (keep them true):
 *   [const]   set before engine_submit, never changed after;
 *   [engine]  touched only by the engine thread;
 *   [loop]    touched only by the loop thread (the output stage runs there);
 *   [qmu]     under the engine's queue mutex (engine_submit on the loop thread,
 *             admission on the engine thread);
 *   [mu]      under job->mu (the engine appends events, the loop thread takes them);
 *   [atomic]  any thread.
 */
#ifndef LMSERVE_SERVER_INTERNAL_H
#define LMSERVE_SERVER_INTERNAL_H

#include "server/server.h"
#include "sampler/sampler.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- Small helpers (respond.c) ------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} sbuf;

int sbuf_append(sbuf *b, const void *p, size_t n);
int sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(sbuf *b);

double srv_now(void); /* monotonic seconds */

/* Length of the longest prefix of s[0..n) that is valid UTF-8. */
size_t utf8_valid_prefix(const char *s, size_t n);
/* Number of code points in s[0..n) (counting lead bytes). */
size_t utf8_count(const char *s, size_t n);
/* A JSON string from arbitrary bytes: invalid sequences become U+FFFD. */
json_t *json_bytes(const char *s, size_t n);
/* 1 if an allocation of jansson's failed on this thread since the last call (then
 * cleared): jansson reports some of them as syntax errors.  Its allocator is set by
 * server_run (http.c); without it this is always 0. */
int json_alloc_failed(void);

/* ---- Errors (respond.c) --------------------------------------------------------- */

typedef struct {
    int status;        /* HTTP status */
    const char *type;  /* "invalid_request_error", ... */
    const char *param; /* offending field or NULL */
    const char *code;  /* machine-readable code or NULL */
    char message[256];
    char param_buf[320]; /* storage for a param built at run time (a path inside a schema) */
} api_error;

void api_error_set(api_error *e, int status, const char *type, const char *param, const char *code, const char *fmt,
                   ...) __attribute__((format(printf, 6, 7)));
/* {"error": {...}} as a malloc'd string. */
char *api_error_json(const api_error *e);

/* ---- Request parameters (validate.c) -------------------------------------------- */

enum { JOB_COMPLETION = 0, JOB_CHAT = 1 };
#define JOB_MAX_STOPS         5 /* 4 from the client + the chat template's own */
#define JOB_MAX_LOGPROBS      5
#define JOB_MAX_TOP_LOGPROBS  20
#define JOB_MAX_SAMPLER_TRACE SAMPLER_TRACE_MAX

typedef struct {
    int kind; /* JOB_* */
    int stream, include_usage;
    int max_tokens;
    int n; /* choices per prompt */
    int n_prompts;
    int32_t **prompts; /* n_prompts token lists */
    int *prompt_lens;
    int *echo_from;    /* first token echoed (1 when BOS was added) */
    int logprobs;      /* -1: none; else number of top entries (completions 0..5, chat 0..20) */
    int sampler_trace; /* 0: off; else N of every step's trace (1..JOB_MAX_SAMPLER_TRACE) */
    int echo;
    char *stops[JOB_MAX_STOPS];
    int n_stops;
    sampler_params sp; /* bias arrays owned (bias_ids/bias_values malloc'd) */
    int has_seed;
    int context_overflow; /* SAMPLER_CROP_*: past the window, slide, shift or stop */
    int has_stop_token;   /* chat: the template's end-of-turn token ends a choice like EOS */
    int32_t stop_token;
    sampler_constraint_cache *constraint; /* response_format/grammar/choice: an owned
                                             reference, or NULL (constraint.h) */
} job_params;

/* What validation needs to know about the model and the limits. */
typedef struct {
    const char *model_id;
    int vocab;
    int ctx; /* per-sequence context */
    int add_bos;
    int32_t bos_id; /* -1 if none */
    int max_tokens_limit;
    int max_choices;
    int context_overflow;  /* the server's default SAMPLER_CROP_* */
    size_t response_limit; /* bytes a non-streamed answer may hold (0: no limit) */
    /* tokenizer: returns count (may exceed cap) or < 0 */
    int (*tokenize)(void *cls, const char *text, size_t len, int add_bos, int32_t *out, int cap);
    void *tok_cls;
    /* chat through the model's template (server/chat.c): messages -> prompt tokens, 0 or -1
     * with err set.  NULL: the plain "role: content" rendering (chat_render). */
    int (*chat_prompt)(void *cls, json_t *messages, int32_t **out, int *n_out, api_error *err);
    void *chat_cls;
    int32_t chat_stop_token;              /* with chat_prompt: the template's end of turn, -1 if none */
    const char *chat_stop_text;           /* with chat_prompt: a stop string for it, or NULL */
    struct constraint_table *constraints; /* compiled grammars (constraint.h); NULL: a
                                             constrained request is refused */
} validate_ctx;

/* Parse and check a /v1/completions (kind JOB_COMPLETION) or /v1/chat/completions
 * body.  0 and *out filled (free with job_params_clear), or -1 and *err filled
 * (400 naming the parameter, 404 model_not_found, 503 out of memory). */
int validate_request(const validate_ctx *vc, int kind, const char *body, size_t len, job_params *out, api_error *err);
void job_params_clear(job_params *p);

/* The rules every chat's messages follow, whatever renders them: a non-empty array of
 * objects with a non-empty "role" string and a "content" that is a string, null, or an
 * array of {"text": string} parts.  0, or -1 with a 400 in err naming "messages". */
int chat_check_messages(json_t *messages, api_error *err);

/* Render chat messages with the documented base-model template:
 * "<role>: <content>\n" per message, then "assistant:".  malloc'd; NULL + err on bad input. */
char *chat_render(json_t *messages, api_error *err);

/* Tokenize text with vc->tokenize into a malloc'd array: 0, VALIDATE_ENOMEM, or the
 * tokenizer's negative code. */
#define VALIDATE_ENOMEM (-12)
int validate_tokenize(const validate_ctx *vc, const char *text, size_t len, int add_bos, int32_t **out, int *n_out);

/* ---- Stop strings (respond.c) ------------------------------------------------------
 * Text is released only once it can no longer be the start of a stop string. */
typedef struct {
    sbuf pending; /* produced but held back */
} stop_matcher;

/* Append text; write how many bytes of pending may be released into *release and
 * return 1 if a stop string matched (pending is then cut at the match and
 * *release covers everything before it), else 0.  -1 if out of memory (nothing
 * appended, *release 0). */
int stop_matcher_push(stop_matcher *sm, char *const *stops, int n_stops, const char *text, size_t n, size_t *release);
/* Drop the first n bytes of pending. */
void stop_matcher_consume(stop_matcher *sm, size_t n);
void stop_matcher_free(stop_matcher *sm);

/* ---- Events: what the engine reports, for the output stage ---------------------------
 * The engine thread describes each choice's progress with typed events (token ids,
 * scores, text the detokenizer released) and appends them to the job (job_emit); the
 * output stage (output.c, on the loop thread) takes them in order and alone turns
 * them into response bytes.  Nothing here is JSON. */

enum {
    EV_PROMPT = 1, /* a choice's prompt is processed: the echoed part, with per-token scores */
    EV_TOKEN,      /* a choice generated a token; text: what was released with it */
    EV_FINISH,     /* a choice ended; text: the rest that was held back */
};

typedef struct job_event {
    struct job_event *next;
    int type;   /* EV_* */
    int choice; /* index into the job's choices: prompt * n + k */
    /* EV_TOKEN */
    sampler_choice tok; /* the token; logprob and top entries when `scored` */
    int scored;         /* the request asked for logprobs */
    size_t offset;      /* code points of the choice's text before this token */
    /* EV_PROMPT: n_ids prompt tokens from prompt position pos0 on (position 0 has no
     * score: nothing precedes it) */
    int n_ids, pos0;
    const int32_t *ids;           /* (n_ids) */
    const sampler_choice *scores; /* (n_ids), NULL when no logprobs were asked */
    const size_t *offsets;        /* (n_ids) code points before each token */
    /* EV_FINISH */
    const char *finish;   /* "stop" or "length" */
    sampler_trace *trace; /* EV_TOKEN, and EV_FINISH for an end-of-text token: the
                                * step's trace when the request asked for one, else NULL;
                                * a malloc'd block freed with the event */
    size_t text_len;      /* text: UTF-8 released by the detokenizer and the stop matcher */
    char text[];          /* EV_PROMPT's arrays follow the text */
} job_event;

/* One allocation holding text[0..n) and extra bytes after it (aligned), or NULL. */
job_event *job_event_new(int type, int choice, const char *text, size_t n, size_t extra);
void job_event_free(job_event *ev);
/* The extra bytes of job_event_new (aligned for any type). */
void *job_event_extra(job_event *ev);

/* How a job ended, set by the engine after its last event. */
enum { JOB_OK = 0, JOB_ERR_MODEL = 1, JOB_ERR_NOMEM = 2, JOB_ERR_SHUTDOWN = 3 };
typedef struct {
    int error;         /* JOB_OK or JOB_ERR_* */
    int prompt_tokens; /* every prompt token of every choice's prompt (counted once per prompt) */
    int completion_tokens;
    int prompt_tokens_dropped; /* of those, before the window the generation started from (slide) */
    int cached_tokens;         /* of the prompt tokens, those taken from the prefix cache (per
                                * prompt, the fewest any of its choices took) */
} job_end;

/* ---- Jobs (job.c) -------------------------------------------------------------- */

enum {
    CANCEL_NONE = 0,
    CANCEL_CLIENT = 1,   /* the client left: no answer */
    CANCEL_SHUTDOWN = 2, /* the server is stopping: an error answer */
    CANCEL_OVERFLOW = 3, /* the output passed the job's limit: no answer */
    CANCEL_FAILED = 4,   /* out of memory or a model error: an error answer */
};

typedef struct out_choice out_choice; /* output.c */
struct model;
typedef struct server server;
typedef struct http_req http_req;

typedef struct job {
    atomic_int refs;
    /* [const] */
    job_params p;
    int n_choices; /* n * n_prompts */
    char id[48];
    long created;
    const char *model_id;
    double t_submit;
    int prompt_tokens;         /* sum of the prompts' lengths */
    size_t out_limit;          /* bytes the output may hold (0: no limit); set by engine_submit:
                                * a stream's unsent bytes, or a whole non-streamed answer */
    struct metrics *met;       /* the server's response-bytes gauge (NULL: none); set by engine_submit */
    const struct model *model; /* whose tokens the events name; set by engine_submit */
    int prompt_dropped;        /* prompt tokens cropped away (slide); set by engine_submit */
    server *srv;
    /* [qmu] */
    int in_queue;
    struct job *q_next;
    int n_admitted, n_active;
    unsigned long step_submit; /* engine steps begun before it was queued */
    /* [engine] */
    int n_done;
    int error; /* JOB_ERR_* once something failed */
    int completion_tokens;
    double t_admit; /* its first choice got a slot (0: not yet) */
    double t_fwd;   /* start of the first model_forward that fed one of its tokens */
    double t_first; /* first generated token (0: none yet) */
    int *cached;    /* (n_prompts) with a prefix cache: per prompt, the fewest positions
                                * one of its ended choices took from it (-1: none ended yet) */
    /* [mu] */
    uv_mutex_t mu;
    job_event *ev_head, *ev_tail; /* emitted, not yet taken by the output stage */
    int ended;                    /* the engine is done with the job: `end` is set */
    job_end end;
    /* [loop] the output stage (output.c) */
    sbuf out; /* bytes not yet taken by the connection */
    size_t out_off;
    size_t out_held;  /* bytes held for the answer: out from out_off + the choices' */
    out_choice *outc; /* (n_choices) a non-streamed answer in the making */
    int out_failed;   /* 0, or why the answer is an error: out of memory, or too large */
    int done;         /* the answer is complete in `out` */
    int status;       /* HTTP status of a non-streamed answer */
    /* [atomic] */
    atomic_int cancel;                       /* CANCEL_* */
    atomic_int stat_prompt, stat_completion; /* live counts for the log line and metrics */
    atomic_int stat_cached;                  /* prompt tokens taken from the prefix cache, once the job ended */
    _Atomic double stat_ttft;                /* seconds, < 0 if none */
    /* The timeline up to the first token (seconds, set with stat_ttft): submitted ->
     * admitted into a slot (queue) -> first model_forward with its tokens begins (wait)
     * -> first token sampled (fwd); and how many engine steps began from submission to
     * the first token (the step that produced it included). */
    _Atomic double stat_queue, stat_wait, stat_fwd;
    atomic_int stat_steps;
    /* [loop] */
    http_req *req;
    /* ready list, under srv->ready_mu */
    int in_ready;
    struct job *ready_next;
} job;

/* Takes ownership of *p (cleared).  NULL if out of memory (p untouched). */
job *job_new(server *srv, job_params *p, const char *model_id);
void job_ref(job *j);
void job_unref(job *j);
/* Ask for the job to end with CANCEL_* `reason` unless another reason came first. */
void job_cancel(job *j, int reason);

/* Engine side: append an event (ownership passes to the job). */
void job_emit(job *j, job_event *ev);
/* Engine side: the job has no more events; end says how it went. */
void job_set_end(job *j, const job_end *end);
/* Output side: detach the events emitted so far (oldest first; free each with
 * job_event_free).  *ended is set once the engine is done and then *end is filled. */
job_event *job_take_events(job *j, int *ended, job_end *end);

/* Copy up to max bytes of output out (formatting pending events first); returns
 * bytes copied (0 if none).  *done is set when the answer is complete and taken. */
size_t job_out_take(job *j, char *buf, size_t max, int *done);

/* ---- Output stage (output.c): events -> OpenAI JSON / SSE, on the loop thread ------
 * Streams get `data: {chunk}\n\n` per event (and, at the end, the usage chunk when
 * asked, then `data: [DONE]\n\n`); a non-streamed answer is built per choice as events
 * come and written whole when the job ends.  Every byte passes one append path that
 * enforces job->out_limit: past it the job is cancelled with CANCEL_OVERFLOW. */

/* Take the job's pending events and format them.  Sets job->done (and status) when
 * the answer is complete. */
void output_drain(job *j);
/* Free the output stage's per-job state (job_unref calls it). */
void output_free(job *j);
/* The answer's held bytes changed by delta (job->out_held and the metrics gauge). */
void output_account(job *j, ptrdiff_t delta);
/* The fewest bytes one token adds to a non-streamed answer: its smallest logprobs
 * entry (kind JOB_*, logprobs as in job_params: -1 none, else the top count), 0
 * without logprobs.  The admission estimate of --response-limit uses it. */
size_t output_min_token_bytes(int kind, int logprobs, int vocab);

/* One step's sampler trace as the API shows it (trace_json.c); token_text gives a
 * candidate's text (a new JSON string).  NULL if out of memory. */
json_t *trace_json(const sampler_trace *t, json_t *(*token_text)(void *cls, int32_t id), void *cls);

/* ---- Metrics (metrics.c) --------------------------------------------------------- */

#define METRICS_NBUCKETS 14
typedef struct metrics {
    uv_mutex_t mu;
    uint64_t by_status[600];
    uint64_t prompt_tokens, completion_tokens;
    uint64_t ttft_buckets[METRICS_NBUCKETS + 1], ttft_count;
    double ttft_sum;
    uint64_t tok_buckets[METRICS_NBUCKETS + 1], tok_count;
    double tok_sum;
    uint64_t steps, rows; /* engine: batched forward calls, token rows fed */
    double forward_seconds;
    uint64_t window_moves;       /* engine: a window slid or shifted past the context */
    uint64_t recomputed;         /* engine: tokens fed again because their window moved */
    atomic_llong response_bytes; /* output stage: bytes answers hold (built, or not yet sent) */
    uint64_t prompt_computed;    /* engine: prompt positions fed to the model (every choice's) */
    uint64_t prompt_reused;      /* engine: prompt positions taken from the prefix cache instead */
    size_t cache_budget;         /* --cache-mb in bytes (0: no prefix cache) */
    size_t cache_bytes;          /* the prefix cache's retained entries */
    int cache_entries;
    uint64_t cache_evictions;
} metrics;

int metrics_init(metrics *m);
void metrics_destroy(metrics *m);
void metrics_request(metrics *m, int status, int prompt_tokens, int completion_tokens);
void metrics_ttft(metrics *m, double seconds);
void metrics_token_latency(metrics *m, double seconds);
void metrics_step(metrics *m, int rows, double seconds);
/* A sequence's window moved; `recomputed` tokens it had already been fed must be fed again. */
void metrics_context(metrics *m, int recomputed);
/* Bytes held by answers changed by delta (any thread; no lock). */
void metrics_response_bytes(metrics *m, ptrdiff_t delta);
/* Prompt positions computed and reused since the last call; the prefix cache's
 * budget (0: none), the bytes and entries it holds and the evictions so far. */
void metrics_prefix(metrics *m, int computed, int reused, size_t budget, size_t bytes, int entries, uint64_t evictions);
/* Prometheus text exposition into b. */
int metrics_render(metrics *m, sbuf *b, int queued, int running_requests, int running_seqs, int slots);

/* ---- A sequence's key/value cache (kv.c) --------------------------------------------
 * The engine says which window of tokens (positions 0, 1, ...) the next logits must be
 * computed from; the cache keeps what it can of what it holds and says how many of the
 * window's leading tokens are already computed.  model_forward computes the rest.
 * Each engine slot owns one seq_kv; with a prefix cache (prefix.c) a window may also
 * start from entries another sequence computed, and a finished sequence's entries are
 * kept for later ones. */
struct model_seq;
typedef struct kv_store kv_store;
typedef struct {
    struct model_seq *seq; /* NULL until opened (and after its entries went to the store) */
    kv_store *store;       /* the prefix cache it shares with (NULL: none); kv_store_attach */
    /* Prompt scores (echo + logprobs) of the held tokens, kept so a later request that
     * scores the same prefix can take them with the entries: scores[t] for t in
     * [1, n_scores) is token t's score given the tokens before it, computed with
     * score_top alternatives.  n_scores <= the held length (trimmed with it). */
    sampler_choice *scores; /* (cap_scores) or NULL */
    int n_scores, cap_scores, score_top;
} seq_kv;

/* 0, or -1 if out of memory.  ctx: positions the cache may hold. */
int seq_kv_open(seq_kv *kv, struct model *m, int ctx);
void seq_kv_close(seq_kv *kv);
/* Make the cache hold a prefix of window[0..n): with reuse, the longest common
 * prefix of what it holds and window[0..n-1) (exact: an entry depends only on the
 * tokens at and before its position; the last token is always left to compute,
 * for its logits); without, nothing.  Returns the number of window tokens held. */
int seq_kv_sync(seq_kv *kv, const int32_t *window, int n, int reuse);
int seq_kv_len(const seq_kv *kv);

/* ---- The prefix cache (prefix.c): KV entries shared between sequences -----------------
 * Every engine slot's seq_kv is attached to the store; a sequence starting a window
 * takes the longest exact prefix of it that any other slot or any retained entry
 * holds (seq_kv_reuse); a finished sequence's entries are retained within a byte
 * budget, least recently used evicted first (seq_kv_retain).  All on the engine thread. */

/* A store with room for `budget` bytes of retained entries and `slots` attached
 * sequences.  0 and *out, or -1 if out of memory. */
int kv_store_new(kv_store **out, size_t budget, int slots);
/* Frees every retained entry (not the attached seq_kvs).  Accepts NULL. */
void kv_store_free(kv_store *st);
/* kv becomes a source for the others and may retain into st (at most `slots` of them). */
void kv_store_attach(kv_store *st, seq_kv *kv);
/* The --cache-mb default: room for 4 full windows of ctx positions, at least 64 MiB. */
size_t kv_store_default_budget(const struct model *m, int ctx);

typedef struct {
    size_t bytes; /* held by retained entries */
    int entries;
    unsigned long long evictions;
    unsigned long long taken; /* entries a new sequence took whole instead of copying from */
} kv_store_stats;
void kv_store_get_stats(const kv_store *st, kv_store_stats *out);

/* The positions a sequence with window w[0..n) could take from one whose window is
 * src[0..n_src) once that one has computed it (scoring: positions must come with
 * their scores, which the source computes for its tokens 1..n_src-1).  The engine
 * uses it to let a sequence wait for another that is computing what it needs. */
int seq_kv_reuse_len(const int32_t *w, int n, const int32_t *src, int n_src, int scoring);
/* Take from the attached sequences and the retained entries the longest prefix of
 * window w[0..n) any of them holds beyond what kv holds (a prefix of w: call
 * seq_kv_sync first), never the window's last token (its logits are needed).  When
 * scoring (n_top >= 0), only positions whose scores come with them, computed with
 * n_top alternatives, and those scores are written into plp[1..] (plp indexed like w).
 * may_take: the caller's window never moves before kv is retained (it only appends),
 * so a retained entry whose tokens all start w is taken whole (kv's empty sequence goes
 * instead; the entry comes back, grown, when kv is retained) if kv has no memory of its
 * own yet; anything else is copied.
 * Returns the positions gained (0: nothing better, or out of memory). */
int seq_kv_reuse(seq_kv *kv, const int32_t *w, int n, int n_top, sampler_choice *plp, int may_take);
/* Scoring: the scores of the held tokens [1, to) are plp[1..to) (n_top alternatives);
 * recorded with the entries (best effort: nothing is recorded if out of memory). */
void seq_kv_scored(seq_kv *kv, const sampler_choice *plp, int to, int n_top);
/* The sequence is done: its entries go to the store (unless they add nothing to what
 * it already holds, or there is no store), evicting the least recently used beyond
 * the budget.  kv is left open-able (seq_kv_open gives it a new model_seq). */
void seq_kv_retain(seq_kv *kv);

/* ---- Engine (engine.c): the scheduler ----------------------------------------------- */

typedef struct engine engine;

typedef struct {
    struct model *model;
    int parallel; /* slots; at most SERVER_MAX_PARALLEL */
    int ctx;      /* positions per sequence */
    int queue;
    int prefill_chunk;
    int step_budget;
    size_t outbox_limit;               /* a stream's output limit (job->out_limit) */
    size_t response_limit;             /* a non-streamed answer's limit (job->out_limit; 0: none) */
    size_t cache_bytes;                /* the prefix cache's budget (prefix.c); 0: no KV reuse at all */
    metrics *metrics;                  /* NULL: not recorded */
    void (*notify)(void *cls, job *j); /* called from the engine thread when j has news */
    void *notify_cls;
} engine_config;

/* What one step did (engine_step; tests and benchmarks). */
typedef struct {
    int items;        /* sequences in the model_forward call */
    int rows;         /* tokens fed */
    int prefill_rows; /* of which prompt or window recompute tokens */
    int sampled;      /* sequences that produced a token */
} engine_step_info;

/* Create an engine (no thread yet).  0, or -1 if out of memory. */
int engine_new(engine **out, const engine_config *c);
/* Run the engine on its own thread.  0 or -1. */
int engine_run_thread(engine *e);
/* engine_new + engine_run_thread. */
int engine_start(engine **out, const engine_config *c);
/* Without a thread: admit what the queue holds, drop cancelled work, run one
 * batched step.  Returns 1 if there was anything to do, 0 if idle. */
int engine_step(engine *e, engine_step_info *info);
/* Queue a job (takes a reference).  0, or -1 if the queue is full (503). */
int engine_submit(engine *e, job *j);
/* Ask the engine to drop j at its next step (any thread). */
void engine_cancel(engine *e, job *j, int reason);
/* Cancel every queued and running job. */
void engine_cancel_all(engine *e, int reason);
void engine_stats(engine *e, int *queued, int *running_requests, int *running_seqs);
/* Stop: every queued and running job ends (with the shutdown error unless it
 * finished first), the thread is joined, everything is freed.  Accepts NULL. */
void engine_stop(engine *e);

/* ---- Static files (static.c) ------------------------------------------------------ */
typedef struct {
    const char *content_type;
    const unsigned char *data;
    size_t len;
    const char *etag;
} static_file;
/* 0 and *f filled if path names a built-in asset, else -1. */
int static_lookup(const char *path, static_file *f);

#endif /* LMSERVE_SERVER_INTERNAL_H */
