/* output.c -- the output stage: the engine's typed events become OpenAI JSON.
 *
 * Runs on the loop thread (output_drain, called when the engine signals a job
 * and before the connection reads).  A stream gets one `data: {chunk}\n\n` per
 * event that has something to say, then the usage chunk when asked and
 * `data: [DONE]\n\n`.  A non-streamed answer is kept per choice as it comes --
 * the text, and the logprobs entries and sampler-trace steps already rendered
 * as JSON text (no tree of JSON values per token) -- and written whole into the
 * outbox when the job ends.  A streamed chunk carries the trace steps of the
 * tokens it carries (trace_json.c formats one step).  Errors (model failure, shutdown, out of memory) become OpenAI error
 * bodies, or for a stream an error event before [DONE].
 *
 * Every byte goes through out_put, the one append path: it counts the bytes the
 * answer holds (job->out_held, and the server-wide total in metrics) against
 * job->out_limit and, past it, ends the job instead of growing: a stream whose
 * client does not read is cancelled with CANCEL_OVERFLOW (no answer); a
 * non-streamed answer (--response-limit) ends with a 400 response_too_large.
 * An allocation failure cancels the job with CANCEL_FAILED and the answer
 * becomes a 503.
 *
 * A non-streamed answer is built once: each token's entries are rendered into
 * the choice's buffers, moved into the outbox when the job ends (each part freed
 * as soon as it is copied, so the bytes held stay within the limit), and the
 * connection reads the outbox directly (no further copy).
 */
#include "server/server_internal.h"
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { LP_TOKENS, LP_TOKEN_LOGPROBS, LP_TOP_LOGPROBS, LP_TEXT_OFFSET, LP_N }; /* chat: LP_TOKENS only */

struct out_choice {
    sbuf text;     /* non-streamed: the choice's text */
    sbuf lp[LP_N]; /* non-streamed: rendered logprobs entries, comma-separated
                                * (completions: the four arrays; chat: "content" in lp[0]) */
    sbuf trace;    /* non-streamed: rendered sampler_trace steps, comma-separated */
    const char *finish;
    int started; /* chat stream: the role delta went out */
};

/* ---- the one append path ---------------------------------------------------------------- */

static int out_stopped(const job *j)
{
    int c = atomic_load(&j->cancel);
    return c == CANCEL_CLIENT || c == CANCEL_OVERFLOW;
}

enum { OUT_NOMEM = 1, OUT_TOO_LARGE = 2 }; /* job->out_failed */

static void out_fail(job *j)
{
    if (!j->out_failed) j->out_failed = OUT_NOMEM;
    job_cancel(j, CANCEL_FAILED);
}

void output_account(job *j, ptrdiff_t delta)
{
    j->out_held = (size_t)((ptrdiff_t)j->out_held + delta);
    if (j->met) metrics_response_bytes(j->met, delta);
}

/* Append data to dst (the outbox or a choice's buffer).  -1 if the job's output
 * stopped, would pass its limit (the job is cancelled), or memory ran out. */
static int out_put(job *j, sbuf *dst, const char *data, size_t n)
{
    if (out_stopped(j) || j->out_failed) return -1;
    if (j->out_limit && (n > j->out_limit || j->out_held > j->out_limit - n)) {
        if (j->p.stream) {
            job_cancel(j, CANCEL_OVERFLOW);
        } else {
            j->out_failed = OUT_TOO_LARGE;
            job_cancel(j, CANCEL_FAILED); /* the engine stops generating for it */
        }
        return -1;
    }
    if (sbuf_append(dst, data, n) < 0) {
        out_fail(j);
        return -1;
    }
    output_account(j, (ptrdiff_t)n);
    return 0;
}

static int out_lit(job *j, sbuf *dst, const char *s) { return out_put(j, dst, s, strlen(s)); }

/* Render v (stolen) as JSON text into dst; NULL v is an allocation failure. */
static int out_json(job *j, sbuf *dst, json_t *v)
{
    if (!v) {
        out_fail(j);
        return -1;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(v);
    if (!s) {
        out_fail(j);
        return -1;
    }
    int rc = out_put(j, dst, s, strlen(s));
    free(s);
    return rc;
}

/* One SSE event: data: {o}\n\n (o stolen). */
static int out_sse(job *j, json_t *o)
{
    if (!o) {
        out_fail(j);
        return -1;
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) {
        out_fail(j);
        return -1;
    }
    size_t n = strlen(s);
    sbuf ev = { 0 };
    int rc = -1;
    if (sbuf_append(&ev, "data: ", 6) == 0 && sbuf_append(&ev, s, n) == 0 && sbuf_append(&ev, "\n\n", 2) == 0)
        rc = out_put(j, &j->out, ev.data, ev.len);
    else
        out_fail(j);
    sbuf_free(&ev);
    free(s);
    return rc;
}

/* Free one of a choice's buffers and stop counting its bytes. */
static void part_free(job *j, sbuf *b)
{
    output_account(j, -(ptrdiff_t)b->len);
    sbuf_free(b);
}

static void choice_bufs_free(job *j, out_choice *c)
{
    part_free(j, &c->text);
    for (int k = 0; k < LP_N; k++) part_free(j, &c->lp[k]);
    part_free(j, &c->trace);
}

/* Move a choice's buffer to the end of dst: its bytes stop counting first, so the
 * copy never counts twice against the limit; the buffer is freed after. */
static int part_move(job *j, sbuf *dst, sbuf *part)
{
    sbuf b = *part;
    *part = (sbuf){ 0 };
    output_account(j, -(ptrdiff_t)b.len);
    int rc = out_put(j, dst, b.data ? b.data : "", b.len);
    sbuf_free(&b);
    return rc;
}

void output_free(job *j)
{
    if (!j->outc) return;
    for (int i = 0; i < j->n_choices; i++) choice_bufs_free(j, &j->outc[i]);
    free(j->outc);
    j->outc = NULL;
}

/* ---- logprobs entries ------------------------------------------------------------------- */

static json_t *num(float v) { return json_real(isfinite(v) ? (double)v : -9999.0); }

static const char *token_bytes(const job *j, int32_t id, size_t *n)
{
    *n = 0;
    const char *b = model_token_bytes(j->model, id, n);
    if (!b) *n = 0;
    return b ? b : "";
}

static json_t *token_json(const job *j, int32_t id)
{
    size_t n;
    const char *b = token_bytes(j, id, &n);
    return json_bytes(b, n);
}

static json_t *bytes_array(const job *j, int32_t id)
{
    size_t n;
    const char *b = token_bytes(j, id, &n);
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

/* Completions: the top entries as {token: logprob} (the first of equal spellings). */
static json_t *top_object(const job *j, const sampler_choice *c)
{
    json_t *o = json_object();
    for (int i = 0; o && i < c->n_top; i++) {
        json_t *t = token_json(j, c->top[i].id);
        const char *k = json_string_value(t);
        if (k && !json_object_get(o, k)) json_object_set_new(o, k, num(c->top[i].logprob));
        json_decref(t);
    }
    return o;
}

/* Chat: one entry of logprobs.content; c NULL = no score. */
static json_t *chat_entry(const job *j, int32_t id, const sampler_choice *c)
{
    json_t *ent = json_object();
    if (!ent) return NULL;
    json_object_set_new(ent, "token", token_json(j, id));
    json_object_set_new(ent, "logprob", c ? num(c->logprob) : json_null());
    json_object_set_new(ent, "bytes", bytes_array(j, id));
    json_t *tops = json_array();
    for (int i = 0; c && tops && i < c->n_top; i++) {
        json_t *t = json_object();
        json_object_set_new(t, "token", token_json(j, c->top[i].id));
        json_object_set_new(t, "logprob", num(c->top[i].logprob));
        json_object_set_new(t, "bytes", bytes_array(j, c->top[i].id));
        json_array_append_new(tops, t);
    }
    json_object_set_new(ent, "top_logprobs", tops);
    return ent;
}

/* The parts of one token's entry: completions fill part[0..LP_N), chat part[0]. */
static void lp_parts(const job *j, int32_t id, const sampler_choice *c, size_t offset, json_t *part[LP_N])
{
    if (j->p.kind == JOB_CHAT) {
        part[0] = chat_entry(j, id, c);
        part[1] = part[2] = part[3] = NULL;
        return;
    }
    part[LP_TOKENS] = token_json(j, id);
    part[LP_TOKEN_LOGPROBS] = c ? num(c->logprob) : json_null();
    part[LP_TOP_LOGPROBS] = c ? top_object(j, c) : json_null();
    part[LP_TEXT_OFFSET] = json_integer((json_int_t)offset);
}

static int lp_nparts(const job *j) { return j->p.kind == JOB_CHAT ? 1 : LP_N; }

static const char *const lp_keys[2][LP_N] = {
    { "tokens", "token_logprobs", "top_logprobs", "text_offset" },
    { "content", NULL, NULL, NULL },
};

/* A stream's logprobs object for entries about to be added (empty arrays). */
static json_t *lp_object_new(const job *j)
{
    json_t *o = json_object();
    for (int k = 0; o && k < lp_nparts(j); k++) json_object_set_new(o, lp_keys[j->p.kind == JOB_CHAT][k], json_array());
    return o;
}

/* Add one token's entry: to a stream's object lp, or to the choice's rendered buffers. */
static int lp_add(job *j, json_t *lp, out_choice *oc, int32_t id, const sampler_choice *c, size_t offset)
{
    json_t *part[LP_N];
    lp_parts(j, id, c, offset, part);
    int rc = 0;
    for (int k = 0; k < lp_nparts(j); k++) {
        if (rc < 0 || !part[k]) {
            json_decref(part[k]);
            rc = -1;
            continue;
        }
        if (lp) {
            json_array_append_new(json_object_get(lp, lp_keys[j->p.kind == JOB_CHAT][k]), part[k]);
        } else if ((oc->lp[k].len && out_lit(j, &oc->lp[k], ",") < 0) || out_json(j, &oc->lp[k], part[k]) < 0) {
            rc = -1;
        }
    }
    if (rc < 0 && !j->out_failed && !out_stopped(j)) out_fail(j);
    return rc;
}

/* The smallest entry lp_add can write, for the admission estimate: an empty token
 * (no bytes), a logprob of 0.0 (three characters, jansson's shortest real), and
 * for chat each top entry the same; completions' top object may hold a single
 * entry (equal spellings are written once).  Separating commas are not counted. */
size_t output_min_token_bytes(int kind, int logprobs, int vocab)
{
    if (logprobs < 0) return 0;
    int top = logprobs < vocab ? logprobs : vocab;
    if (kind == JOB_CHAT) /* {"token":"","logprob":0.0,"bytes":[],"top_logprobs":[...]} */
        return sizeof "{\"token\":\"\",\"logprob\":0.0,\"bytes\":[],\"top_logprobs\":[]}" - 1 +
               (size_t)top * (sizeof "{\"token\":\"\",\"logprob\":0.0,\"bytes\":[]}" - 1);
    /* "" + 0.0 + {} (+ "":0.0) + 0 */
    return 2 + 3 + 2 + 1 + (top > 0 ? 6 : 0);
}

/* ---- sampler trace ---------------------------------------------------------------------- */

static json_t *trace_token_text(void *cls, int32_t id) { return token_json(cls, id); }

/* A stream chunk's "sampler_trace": [step], or NULL (and the job failed) if out of memory. */
static json_t *trace_array(job *j, const sampler_trace *t)
{
    json_t *a = json_array();
    json_t *st = trace_json(t, trace_token_text, j);
    if (!a || !st || json_array_append_new(a, st) < 0) {
        json_decref(a);
        out_fail(j);
        return NULL;
    }
    return a;
}

/* Non-streamed: one more step in the choice's rendered list. */
static int trace_add(job *j, out_choice *oc, const sampler_trace *t)
{
    if (oc->trace.len && out_lit(j, &oc->trace, ",") < 0) return -1;
    return out_json(j, &oc->trace, trace_json(t, trace_token_text, j));
}

/* ---- stream chunks ---------------------------------------------------------------------- */

static json_t *envelope(const job *j, int chunk)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "id", json_string(j->id));
    const char *obj = j->p.kind == JOB_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    json_object_set_new(o, "object", json_string(obj));
    json_object_set_new(o, "created", json_integer(j->created));
    json_object_set_new(o, "model", json_string(j->model_id));
    return o;
}

/* One choice's chunk: text (may be empty), lp and trace (stolen, may be NULL). */
static int chunk(job *j, int index, const char *text, size_t n, json_t *lp, json_t *trace, const char *finish,
                 int role_delta)
{
    json_t *o = envelope(j, 1);
    json_t *c = json_object();
    json_t *arr = json_array();
    if (!o || !c || !arr) {
        json_decref(o);
        json_decref(c);
        json_decref(arr);
        json_decref(lp);
        json_decref(trace);
        out_fail(j);
        return -1;
    }
    json_object_set_new(c, "index", json_integer(index));
    if (j->p.kind == JOB_CHAT) {
        json_t *d = json_object();
        if (role_delta) json_object_set_new(d, "role", json_string("assistant"));
        if (n || role_delta) json_object_set_new(d, "content", json_bytes(text, n));
        json_object_set_new(c, "delta", d);
    } else {
        json_object_set_new(c, "text", json_bytes(text, n));
    }
    json_object_set_new(c, "logprobs", lp ? lp : json_null());
    if (trace) json_object_set_new(c, "sampler_trace", trace);
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    json_array_append_new(arr, c);
    json_object_set_new(o, "choices", arr);
    return out_sse(j, o);
}

static json_t *usage_json(const job_end *end)
{
    json_t *u = json_object();
    if (!u) return NULL;
    json_object_set_new(u, "prompt_tokens", json_integer(end->prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(end->completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer(end->prompt_tokens + end->completion_tokens));
    if (end->prompt_tokens_dropped > 0) /* the prompt was longer than the window (slide) */
        json_object_set_new(u, "prompt_tokens_dropped", json_integer(end->prompt_tokens_dropped));
    json_t *d = json_object(); /* OpenAI's shape: prompt tokens the prefix cache held */
    if (json_object_set_new(u, "prompt_tokens_details", d) < 0 || /* takes d, NULL included */
        json_object_set_new(d, "cached_tokens", json_integer(end->cached_tokens)) < 0) {
        json_decref(u);
        return NULL;
    }
    return u;
}

/* ---- events ----------------------------------------------------------------------------- */

static void on_prompt(job *j, out_choice *oc, const job_event *ev)
{
    int scored = ev->scores != NULL;
    json_t *lp = j->p.stream && scored ? lp_object_new(j) : NULL;
    if (j->p.stream && scored && !lp) {
        out_fail(j);
        return;
    }
    for (int k = 0; scored && k < ev->n_ids; k++) {
        const sampler_choice *c = ev->pos0 + k > 0 ? &ev->scores[k] : NULL;
        if (lp_add(j, lp, oc, ev->ids[k], c, ev->offsets[k]) < 0) {
            json_decref(lp);
            return;
        }
    }
    if (j->p.stream)
        chunk(j, ev->choice, ev->text, ev->text_len, lp, NULL, NULL, 0);
    else
        out_put(j, &oc->text, ev->text, ev->text_len);
}

/* A streamed chat choice opens with a chunk whose delta carries the role: sent before
 * its first token or its finish, whichever comes first.  0, or -1 when that failed. */
static int role_chunk(job *j, out_choice *oc, int choice)
{
    if (j->p.kind != JOB_CHAT || oc->started) return 0;
    oc->started = 1;
    return chunk(j, choice, "", 0, NULL, NULL, NULL, 1);
}

static void on_token(job *j, out_choice *oc, const job_event *ev)
{
    if (!j->p.stream) {
        if (ev->scored && lp_add(j, NULL, oc, ev->tok.token, &ev->tok, ev->offset) < 0) return;
        if (ev->trace && trace_add(j, oc, ev->trace) < 0) return;
        out_put(j, &oc->text, ev->text, ev->text_len);
        return;
    }
    if (role_chunk(j, oc, ev->choice) < 0) return;
    if (!ev->text_len && !ev->scored && !ev->trace) return;
    json_t *lp = NULL;
    if (ev->scored) {
        lp = lp_object_new(j);
        if (!lp) {
            out_fail(j);
            return;
        }
        if (lp_add(j, lp, NULL, ev->tok.token, &ev->tok, ev->offset) < 0) {
            json_decref(lp);
            return;
        }
    }
    json_t *trace = NULL;
    if (ev->trace && !(trace = trace_array(j, ev->trace))) {
        json_decref(lp);
        return;
    }
    chunk(j, ev->choice, ev->text, ev->text_len, lp, trace, NULL, 0);
}

/* ev->trace: the end-of-text token that ended the choice (it has no text and no
 * logprobs entry). */
static void on_finish(job *j, out_choice *oc, const job_event *ev)
{
    oc->finish = ev->finish;
    if (!j->p.stream) {
        if (ev->trace && trace_add(j, oc, ev->trace) < 0) return;
        out_put(j, &oc->text, ev->text, ev->text_len);
        return;
    }
    if (role_chunk(j, oc, ev->choice) < 0) return;
    json_t *trace = NULL;
    if (ev->trace && !(trace = trace_array(j, ev->trace))) return;
    chunk(j, ev->choice, ev->text, ev->text_len, NULL, trace, ev->finish, 0);
}

/* ---- the end ------------------------------------------------------------------------------ */

static void drop_out(job *j)
{
    output_account(j, -(ptrdiff_t)(j->out.len - j->out_off));
    sbuf_free(&j->out);
    j->out_off = 0;
}

static void answer_error(job *j, int error)
{
    api_error err;
    if (j->out_failed == OUT_TOO_LARGE)
        api_error_set(&err, 400, "invalid_request_error", "max_tokens", "response_too_large",
                      "the response passed the server's limit of %zu bytes (--response-limit) after %d "
                      "generated tokens; ask for fewer tokens, choices or logprobs, or stream it",
                      j->out_limit, atomic_load(&j->stat_completion));
    else if (error == JOB_ERR_MODEL)
        api_error_set(&err, 500, "server_error", NULL, "model_error", "the model failed to run");
    else if (error == JOB_ERR_SHUTDOWN)
        api_error_set(&err, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
    else
        api_error_set(&err, 503, "server_error", NULL, "out_of_memory", "out of memory");
    output_free(j); /* whatever was being built is not sent: give the memory back first */
    j->out_failed = 0;
    char *body = api_error_json(&err);
    if (j->p.stream) {
        if (body) {
            out_lit(j, &j->out, "data: ");
            out_lit(j, &j->out, body);
            out_lit(j, &j->out, "\n\n");
        }
        out_lit(j, &j->out, "data: [DONE]\n\n");
    } else {
        drop_out(j);
        j->status = err.status;
        if (body) out_lit(j, &j->out, body);
    }
    free(body);
}

/* The whole non-streamed answer into the outbox. */
static int answer_final(job *j, const job_end *end)
{
    sbuf *b = &j->out;
    int chat = j->p.kind == JOB_CHAT;
    json_t *env = envelope(j, 0);
    if (!env) return -1;
    char *head = json_dumps(env, JSON_COMPACT);
    json_decref(env);
    if (!head) return -1;
    head[strlen(head) - 1] = '\0'; /* reopen the object */
    int rc = out_lit(j, b, head);
    free(head);
    rc = rc < 0 ? rc : out_lit(j, b, ",\"choices\":[");
    for (int i = 0; rc == 0 && i < j->n_choices; i++) {
        out_choice *oc = &j->outc[i];
        json_t *text = json_bytes(oc->text.data ? oc->text.data : "", oc->text.len);
        part_free(j, &oc->text); /* json_bytes copied it */
        char idx[32];
        snprintf(idx, sizeof idx, "\"index\":%d", i);
        rc = out_lit(j, b, i ? ",{" : "{");
        if (chat) {
            rc = rc < 0 ? rc : out_lit(j, b, idx);
            rc = rc < 0 ? rc : out_lit(j, b, ",\"message\":{\"role\":\"assistant\",\"content\":");
            rc = rc < 0 ? (json_decref(text), rc) : out_json(j, b, text);
            rc = rc < 0 ? rc : out_lit(j, b, "}");
        } else {
            rc = rc < 0 ? rc : out_lit(j, b, "\"text\":");
            rc = rc < 0 ? (json_decref(text), rc) : out_json(j, b, text);
            rc = rc < 0 ? rc : out_lit(j, b, ",");
            rc = rc < 0 ? rc : out_lit(j, b, idx);
        }
        if (rc < 0) break;
        if (j->p.logprobs < 0) {
            rc = out_lit(j, b, ",\"logprobs\":null");
        } else {
            rc = out_lit(j, b, ",\"logprobs\":{");
            for (int k = 0; rc == 0 && k < lp_nparts(j); k++) {
                char key[40];
                snprintf(key, sizeof key, "%s\"%s\":[", k ? "," : "", lp_keys[chat][k]);
                rc = out_lit(j, b, key);
                rc = rc < 0 ? rc : part_move(j, b, &oc->lp[k]);
                rc = rc < 0 ? rc : out_lit(j, b, "]");
            }
            rc = rc < 0 ? rc : out_lit(j, b, "}");
        }
        if (j->p.sampler_trace > 0) {
            rc = rc < 0 ? rc : out_lit(j, b, ",\"sampler_trace\":[");
            rc = rc < 0 ? rc : part_move(j, b, &oc->trace);
            rc = rc < 0 ? rc : out_lit(j, b, "]");
        }
        rc = rc < 0 ? rc : out_lit(j, b, ",\"finish_reason\":");
        rc = rc < 0 ? rc : out_json(j, b, json_string(oc->finish ? oc->finish : "length"));
        rc = rc < 0 ? rc : out_lit(j, b, "}");
        choice_bufs_free(j, oc);
    }
    rc = rc < 0 ? rc : out_lit(j, b, "],\"usage\":");
    rc = rc < 0 ? rc : out_json(j, b, usage_json(end));
    rc = rc < 0 ? rc : out_lit(j, b, "}");
    return rc;
}

static void on_end(job *j, const job_end *end)
{
    if (out_stopped(j)) {
        /* nobody to answer */
    } else if (j->out_failed || end->error) {
        answer_error(j, end->error ? end->error : JOB_ERR_NOMEM);
    } else if (j->p.stream) {
        if (j->p.include_usage) {
            json_t *o = envelope(j, 1);
            if (o) {
                json_object_set_new(o, "choices", json_array());
                json_object_set_new(o, "usage", usage_json(end));
            }
            out_sse(j, o);
        }
        out_lit(j, &j->out, "data: [DONE]\n\n");
        if (j->out_failed) answer_error(j, JOB_ERR_NOMEM);
    } else if (answer_final(j, end) < 0 && !out_stopped(j)) {
        answer_error(j, JOB_ERR_NOMEM);
    }
    output_free(j);
    j->done = 1;
}

void output_drain(job *j)
{
    if (j->done) return;
    int ended = 0;
    job_end end;
    job_event *ev = job_take_events(j, &ended, &end);
    if (ev && !j->outc && !out_stopped(j)) {
        j->outc = calloc((size_t)j->n_choices, sizeof *j->outc);
        if (!j->outc) out_fail(j);
    }
    while (ev) {
        job_event *next = ev->next;
        if (j->outc && !out_stopped(j) && !j->out_failed && ev->choice >= 0 && ev->choice < j->n_choices) {
            out_choice *oc = &j->outc[ev->choice];
            if (ev->type == EV_PROMPT)
                on_prompt(j, oc, ev);
            else if (ev->type == EV_TOKEN)
                on_token(j, oc, ev);
            else if (ev->type == EV_FINISH)
                on_finish(j, oc, ev);
        }
        job_event_free(ev);
        ev = next;
    }
    if (ended) on_end(j, &end);
}
