/* server_internal.h -- types shared by the files of server/ (never included elsewhere
 * except by tests/server).  See server.h for the design.
 *
 * Ownership: a `job` is reference-counted.  References are held by the HTTP request
 * that created it (until MHD's completed callback), by the engine (from submit until
 * it finishes the job) and by the ready list (while queued for the loop thread).
 * Fields marked [const] never change after submit; [engine] are touched only by the
 * engine thread; [loop] only by the loop thread; [mu] under job->mu.
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

/* ---- Errors (respond.c) --------------------------------------------------------- */

typedef struct {
    int status;            /* HTTP status */
    const char *type;      /* "invalid_request_error", ... */
    const char *param;     /* offending field or NULL */
    const char *code;      /* machine-readable code or NULL */
    char message[256];
} api_error;

void api_error_set(api_error *e, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error": {...}} as a malloc'd string. */
char *api_error_json(const api_error *e);

/* ---- Request parameters (validate.c) -------------------------------------------- */

enum { JOB_COMPLETION = 0, JOB_CHAT = 1 };
#define JOB_MAX_STOPS 5   /* 4 from the client + the chat template's own */
#define JOB_MAX_LOGPROBS 5
#define JOB_MAX_TOP_LOGPROBS 20

typedef struct {
    int kind;                  /* JOB_* */
    int stream, include_usage;
    int max_tokens;
    int n;                     /* choices per prompt */
    int n_prompts;
    int32_t **prompts;         /* n_prompts token lists */
    int *prompt_lens;
    int *echo_from;            /* first token echoed (1 when BOS was added) */
    int logprobs;              /* -1: none; else number of top entries (completions 0..5, chat 0..20) */
    int echo;
    char *stops[JOB_MAX_STOPS];
    int n_stops;
    sampler_params sp;         /* bias arrays owned (bias_ids/bias_values malloc'd) */
    int has_seed;
} job_params;

/* What validation needs to know about the model and the limits. */
typedef struct {
    const char *model_id;
    int vocab;
    int ctx;                   /* per-sequence context */
    int add_bos;
    int32_t bos_id;            /* -1 if none */
    int max_tokens_limit;
    int max_choices;
    /* tokenizer: returns count (may exceed cap) or < 0 */
    int (*tokenize)(void *cls, const char *text, size_t len, int add_bos, int32_t *out, int cap);
    void *tok_cls;
} validate_ctx;

/* Parse and check a /v1/completions (kind JOB_COMPLETION) or /v1/chat/completions
 * body.  0 and *out filled (free with job_params_clear), or -1 and *err filled
 * (400 naming the parameter, 404 model_not_found). */
int validate_request(const validate_ctx *vc, int kind, const char *body, size_t len,
                     job_params *out, api_error *err);
void job_params_clear(job_params *p);

/* Render chat messages with the documented base-model template:
 * "<role>: <content>\n" per message, then "assistant:".  malloc'd; NULL + err on bad input. */
char *chat_render(json_t *messages, api_error *err);

/* Tokenize text with vc->tokenize into a malloc'd array. */
int validate_tokenize(const validate_ctx *vc, const char *text, size_t len, int add_bos,
                      int32_t **out, int *n_out);

/* ---- Stop strings (respond.c) ------------------------------------------------------
 * Text is released only once it can no longer be the start of a stop string. */
typedef struct {
    sbuf pending;              /* produced but held back */
} stop_matcher;

/* Append text; write how many bytes of pending may be released into *release and
 * return 1 if a stop string matched (pending is then cut at the match and
 * *release covers everything before it), else 0. */
int stop_matcher_push(stop_matcher *sm, char *const *stops, int n_stops,
                      const char *text, size_t n, size_t *release);
/* Drop the first n bytes of pending. */
void stop_matcher_consume(stop_matcher *sm, size_t n);
void stop_matcher_free(stop_matcher *sm);

/* ---- Jobs (job.c) -------------------------------------------------------------- */

enum { CANCEL_NONE = 0, CANCEL_CLIENT = 1, CANCEL_SHUTDOWN = 2, CANCEL_OVERFLOW = 3 };

typedef struct job_choice {    /* [engine] results of one choice */
    sbuf text;
    json_t *logprobs;          /* completions: {tokens, token_logprobs, top_logprobs, text_offset}; chat: {content: []} */
    const char *finish_reason;
    int n_gen;
    int started;               /* chat stream: role delta sent */
} job_choice;

typedef struct server server;
typedef struct http_req http_req;

typedef struct job {
    atomic_int refs;
    /* [const] */
    job_params p;
    int n_choices;             /* n * n_prompts */
    char id[48];
    long created;
    const char *model_id;
    double t_submit;
    server *srv;
    /* [engine] */
    job_choice *choices;
    int n_admitted, n_active, n_done;
    int in_queue;
    struct job *q_next;
    int failed;                /* model error: 500 */
    int prompt_tokens, completion_tokens;
    double t_first;            /* first generated token (0: none yet) */
    /* [mu] */
    uv_mutex_t mu;
    sbuf out;                  /* bytes not yet taken by the connection */
    size_t out_off;
    int done;                  /* no more output will come */
    int status;                /* HTTP status of a non-streamed answer */
    /* any thread */
    atomic_int cancel;         /* CANCEL_* */
    atomic_int stat_prompt, stat_completion; /* live counts for the log line and metrics */
    _Atomic double stat_ttft;  /* seconds, < 0 if none */
    /* [loop] */
    http_req *req;
    /* ready list, under srv->ready_mu */
    int in_ready;
    struct job *ready_next;
} job;

/* Takes ownership of *p (cleared). */
job *job_new(server *srv, job_params *p, const char *model_id);
void job_ref(job *j);
void job_unref(job *j);
/* Append output; returns -1 if the outbox would exceed limit (nothing appended). */
int job_out_append(job *j, const char *data, size_t n, size_t limit);
/* Copy up to max bytes out; returns bytes copied (0 if empty). *done set when done and empty. */
size_t job_out_take(job *j, char *buf, size_t max, int *done);

/* ---- Metrics (metrics.c) --------------------------------------------------------- */

#define METRICS_NBUCKETS 14
typedef struct {
    uv_mutex_t mu;
    uint64_t by_status[600];
    uint64_t prompt_tokens, completion_tokens;
    uint64_t ttft_buckets[METRICS_NBUCKETS + 1], ttft_count;
    double ttft_sum;
    uint64_t tok_buckets[METRICS_NBUCKETS + 1], tok_count;
    double tok_sum;
    uint64_t steps, rows;      /* engine: batched forward calls, token rows fed */
    double forward_seconds;
} metrics;

int metrics_init(metrics *m);
void metrics_destroy(metrics *m);
void metrics_request(metrics *m, int status, int prompt_tokens, int completion_tokens);
void metrics_ttft(metrics *m, double seconds);
void metrics_token_latency(metrics *m, double seconds);
void metrics_step(metrics *m, int rows, double seconds);
/* Prometheus text exposition into b. */
int metrics_render(metrics *m, sbuf *b, int queued, int running_requests, int running_seqs,
                   int slots);

/* ---- Engine (engine.c) ---------------------------------------------------------- */

struct model;
typedef struct engine engine;

typedef struct {
    struct model *model;
    int parallel;
    int ctx;
    int queue;
    int prefill_chunk;
    int step_budget;
    size_t outbox_limit;
    metrics *metrics;
    void (*notify)(void *cls, job *j);   /* called from the engine thread when j has news */
    void *notify_cls;
} engine_config;

int engine_start(engine **out, const engine_config *c);
/* Queue a job (takes a reference).  0, or -1 if the queue is full (503). */
int engine_submit(engine *e, job *j);
/* Ask the engine to drop j at its next step (any thread). */
void engine_cancel(engine *e, job *j, int reason);
/* Cancel every queued and running job. */
void engine_cancel_all(engine *e, int reason);
void engine_stats(engine *e, int *queued, int *running_requests, int *running_seqs);
/* Finish what is running (after engine_cancel_all it ends quickly) and join. */
void engine_stop(engine *e);

/* ---- Response building (respond.c) ---------------------------------------------- */

/* Streaming chunk for one choice; text may be empty; lp may be NULL (stolen). */
char *respond_chunk(const job *j, int index, const char *text, size_t n, json_t *lp,
                    const char *finish_reason, int role_delta);
char *respond_usage_chunk(const job *j);
/* Whole non-streamed answer. */
char *respond_final(const job *j);

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
