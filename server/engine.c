/* engine.c -- the scheduler thread: continuous batching over one model.
 *
 * One uv_thread_t owns model_forward.  Each iteration:
 *   1. under the queue mutex: drop cancelled queued jobs, admit queued choices
 *      into free slots (a request with n choices becomes n sequences; they are
 *      admitted one by one, so any n works with any --parallel);
 *   2. release slots whose job was cancelled (client gone, shutdown, outbox full);
 *   3. build ONE batch: every decoding sequence feeds its last token; sequences
 *      still prefilling (prompt, or recompute after a context crop) feed a chunk
 *      of at most --prefill-chunk tokens, oldest admission first, until the step's
 *      prompt-token budget is spent -- so a long prompt never freezes the streams;
 *   4. model_forward, then per sequence that reached the end of its pending tokens:
 *      sample with its own sampler (seed + choice index), detokenize incrementally
 *      (whole UTF-8 characters only), match stop strings (held-back text that could
 *      still become a stop string is released only once it cannot), and append the
 *      output to the job's outbox, then notify the loop thread.
 * Rows never influence each other in model_forward, and each sampler only sees
 * its own sequence, so a seeded request's tokens and logprobs do not depend on
 * what else is running.
 */
#include "server/server_internal.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int used;
    job *j;
    int choice;              /* index into j->choices */
    int prompt_idx;
    unsigned long admitted;  /* admission order (prefill fairness) */
    model_seq *kv;           /* kept across requests */
    int32_t *hist;           /* prompt + generated: (n_hist) */
    int n_hist, cap_hist;
    int win_start;           /* hist index of the KV cache's first position */
    int n_prompt;
    int n_gen;
    int prompt_done;
    int in_batch;            /* already fed in the step being built */
    int scoring;             /* echo + logprobs: logits of every prompt position */
    sampler *smp;
    model_detok dt;
    stop_matcher sm;
    size_t chars;            /* code points produced so far (text_offset) */
    double t_last;
    float *score;            /* (prefill_chunk, vocab) when scoring */
    sampler_choice *plp;     /* (n_prompt) scores of prompt tokens when scoring */
    const float *pre_logits; /* this step's last logits when the slot samples now */
    int pre_rc;              /* sampler_step's result for them (sample_task) */
    sampler_choice pre;
} slot;

struct engine {
    engine_config c;
    model *m;
    int vocab, eos;
    int bos_stop;            /* BOS id when a generated BOS ends the text (llama2.c models), else -1 */
    uv_thread_t th;
    int started;
    uv_mutex_t qmu;
    uv_cond_t qcv;
    job *q_head, *q_tail;
    int q_len, q_waiting_choices;
    int n_running_seqs, n_running_jobs;
    int stop, cancel_all;
    unsigned long admit_counter;
    slot *slots;
    model_batch_item *items;
    int *item_slot;
    float *logits;           /* (parallel, vocab) */
    char detok[8192];
    /* LMSERVE_FAULT_INJECT (tests only): sequences of requests with this seed fail */
    int fault_sampler;
    uint64_t fault_seed;
};

/* ---- output helpers ----------------------------------------------------------------- */

static void emit(engine *e, job *j, char *ev)
{
    if (!ev) return;
    if (atomic_load(&j->cancel) == CANCEL_NONE &&
        job_out_append(j, ev, strlen(ev), e->c.outbox_limit) < 0) {
        int none = CANCEL_NONE;
        atomic_compare_exchange_strong(&j->cancel, &none, CANCEL_OVERFLOW);
    }
    free(ev);
    e->c.notify(e->c.notify_cls, j);
}

static json_t *token_json(engine *e, int32_t id)
{
    size_t n = 0;
    const char *b = model_token_bytes(e->m, id, &n);
    return json_bytes(b ? b : "", b ? n : 0);
}

static json_t *num(float v)
{
    return json_real(isfinite(v) ? (double)v : -9999.0);
}

/* Completions: top entries as {token: logprob}. */
static json_t *top_object(engine *e, const sampler_choice *c)
{
    json_t *o = json_object();
    for (int i = 0; i < c->n_top; i++) {
        json_t *t = token_json(e, c->top[i].id);
        const char *k = json_string_value(t);
        if (k && !json_object_get(o, k)) json_object_set_new(o, k, num(c->top[i].logprob));
        json_decref(t);
    }
    return o;
}

static json_t *bytes_array(engine *e, int32_t id)
{
    size_t n = 0;
    const char *b = model_token_bytes(e->m, id, &n);
    json_t *a = json_array();
    for (size_t i = 0; b && i < n; i++) json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

static json_t *lp_new(int chat)
{
    json_t *o = json_object();
    if (chat) {
        json_object_set_new(o, "content", json_array());
    } else {
        json_object_set_new(o, "tokens", json_array());
        json_object_set_new(o, "token_logprobs", json_array());
        json_object_set_new(o, "top_logprobs", json_array());
        json_object_set_new(o, "text_offset", json_array());
    }
    return o;
}

/* Add one token's entry; c NULL = no logprob (first prompt token). */
static void lp_add(engine *e, json_t *lp, int chat, int32_t id, const sampler_choice *c, size_t offset)
{
    if (chat) {
        json_t *ent = json_object();
        json_object_set_new(ent, "token", token_json(e, id));
        json_object_set_new(ent, "logprob", c ? num(c->logprob) : json_null());
        json_object_set_new(ent, "bytes", bytes_array(e, id));
        json_t *tops = json_array();
        for (int i = 0; c && i < c->n_top; i++) {
            json_t *t = json_object();
            json_object_set_new(t, "token", token_json(e, c->top[i].id));
            json_object_set_new(t, "logprob", num(c->top[i].logprob));
            json_object_set_new(t, "bytes", bytes_array(e, c->top[i].id));
            json_array_append_new(tops, t);
        }
        json_object_set_new(ent, "top_logprobs", tops);
        json_array_append_new(json_object_get(lp, "content"), ent);
        return;
    }
    json_array_append_new(json_object_get(lp, "tokens"), token_json(e, id));
    json_array_append_new(json_object_get(lp, "token_logprobs"), c ? num(c->logprob) : json_null());
    json_array_append_new(json_object_get(lp, "top_logprobs"), c ? top_object(e, c) : json_null());
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
}

/* Merge a one-token logprobs object into the choice's accumulated one. */
static void lp_merge(json_t *dst, json_t *src)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v) json_array_extend(json_object_get(dst, k), v);
}

/* ---- slots -------------------------------------------------------------------------- */

static int slot_pending(const slot *s)
{
    return s->n_hist - (s->win_start + model_seq_len(s->kv));
}

static int slot_setup(engine *e, slot *s, job *j, int choice)
{
    const job_params *p = &j->p;
    int pi = choice / p->n;
    int n_prompt = p->prompt_lens[pi];
    memset(&s->dt, 0, sizeof s->dt);
    s->j = j;
    s->choice = choice;
    s->prompt_idx = pi;
    s->admitted = ++e->admit_counter;
    s->cap_hist = n_prompt + p->max_tokens + 1;
    s->hist = malloc(sizeof *s->hist * (size_t)s->cap_hist);
    if (!s->kv) s->kv = model_seq_new(e->m, e->c.ctx);
    else model_seq_truncate(s->kv, 0);
    sampler_params sp = p->sp;
    sp.seed = p->sp.seed + (uint64_t)choice;
    s->smp = sampler_new(e->vocab, &sp);
    s->scoring = p->echo && p->logprobs >= 0;
    if (s->scoring && !s->score)
        s->score = malloc(sizeof(float) * (size_t)e->c.prefill_chunk * (size_t)e->vocab);
    s->plp = s->scoring ? calloc((size_t)n_prompt, sizeof *s->plp) : NULL;
    if (!s->hist || !s->kv || !s->smp || (s->scoring && (!s->score || !s->plp))) {
        free(s->plp);
        s->plp = NULL;
        free(s->hist);
        s->hist = NULL;
        sampler_free(s->smp);
        s->smp = NULL;
        return -1;
    }
    memcpy(s->hist, p->prompts[pi], sizeof *s->hist * (size_t)n_prompt);
    s->n_hist = s->n_prompt = n_prompt;
    s->win_start = 0;
    s->n_gen = 0;
    s->prompt_done = 0;
    s->chars = 0;
    model_detok_init(&s->dt);
    memset(&s->sm, 0, sizeof s->sm);
    s->used = 1;
    return 0;
}

static void job_complete(engine *e, job *j)
{
    int cancel = atomic_load(&j->cancel);
    if (cancel == CANCEL_SHUTDOWN || j->failed) {
        api_error err;
        if (j->failed)
            api_error_set(&err, 500, "server_error", NULL, "model_error", "the model failed to run");
        else
            api_error_set(&err, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        char *body = api_error_json(&err);
        if (body) {
            uv_mutex_lock(&j->mu);
            if (j->p.stream) {
                sbuf_append(&j->out, "data: ", 6);
                sbuf_append(&j->out, body, strlen(body));
                sbuf_append(&j->out, "\n\ndata: [DONE]\n\n", 16);
            } else {
                j->status = err.status;
                sbuf_append(&j->out, body, strlen(body));
            }
            uv_mutex_unlock(&j->mu);
            free(body);
        }
    } else if (cancel == CANCEL_NONE) {
        if (j->p.stream) {
            char *u = j->p.include_usage ? respond_usage_chunk(j) : NULL;
            uv_mutex_lock(&j->mu);
            if (u) sbuf_append(&j->out, u, strlen(u));
            sbuf_append(&j->out, "data: [DONE]\n\n", 14);
            uv_mutex_unlock(&j->mu);
            free(u);
        } else {
            char *body = respond_final(j);
            uv_mutex_lock(&j->mu);
            if (body) sbuf_append(&j->out, body, strlen(body));
            else j->status = 500;
            uv_mutex_unlock(&j->mu);
            free(body);
        }
    }
    atomic_store(&j->stat_prompt, j->prompt_tokens);
    atomic_store(&j->stat_completion, j->completion_tokens);
    if (j->t_first > 0) atomic_store(&j->stat_ttft, j->t_first - j->t_submit);
    uv_mutex_lock(&j->mu);
    j->done = 1;
    uv_mutex_unlock(&j->mu);
    e->c.notify(e->c.notify_cls, j);
    job_unref(j);
}

static void slot_release(engine *e, slot *s)
{
    job *j = s->j;
    sampler_free(s->smp);
    s->smp = NULL;
    free(s->hist);
    s->hist = NULL;
    free(s->plp);
    s->plp = NULL;
    stop_matcher_free(&s->sm);
    s->used = 0;
    s->j = NULL;
    uv_mutex_lock(&e->qmu);
    e->n_running_seqs--;
    int last = --j->n_active == 0;
    if (last) e->n_running_jobs--;
    int complete = last && !j->in_queue;
    uv_mutex_unlock(&e->qmu);
    if (complete) job_complete(e, j);
}

/* Released text of a choice: stream it or keep it. */
static void choice_text(engine *e, slot *s, const char *text, size_t n, json_t *lp, const char *finish)
{
    job *j = s->j;
    job_choice *ch = &j->choices[s->choice];
    int chat = j->p.kind == JOB_CHAT;
    if (j->p.stream) {
        if (chat && !ch->started) {
            ch->started = 1;
            emit(e, j, respond_chunk(j, s->choice, "", 0, NULL, NULL, 1));
        }
        if (n || lp || finish) emit(e, j, respond_chunk(j, s->choice, text, n, lp, finish, 0));
        else json_decref(lp);
    } else {
        sbuf_append(&ch->text, text, n);
        if (lp) {
            if (!ch->logprobs) ch->logprobs = lp_new(chat);
            lp_merge(ch->logprobs, lp);
            json_decref(lp);
        }
    }
    if (finish) ch->finish_reason = finish;
}

static void choice_finish(engine *e, slot *s, const char *reason, int stopped)
{
    char *buf = e->detok;
    const char *text = "";
    size_t tn = 0;
    if (!stopped) {
        int f = model_detok_flush(e->m, &s->dt, buf, sizeof e->detok);
        size_t rel = 0;
        if (stop_matcher_push(&s->sm, s->j->p.stops, s->j->p.n_stops, buf, f > 0 ? (size_t)f : 0, &rel)) {
            reason = "stop";
            tn = rel;
        } else {
            tn = s->sm.pending.len; /* nothing more can come: release what was held back */
        }
        text = s->sm.pending.data ? s->sm.pending.data : "";
    }
    job_choice *ch = &s->j->choices[s->choice];
    ch->n_gen = s->n_gen;
    if (s->j->p.logprobs >= 0 && !ch->logprobs && !s->j->p.stream)
        ch->logprobs = lp_new(s->j->p.kind == JOB_CHAT);
    choice_text(e, s, text, tn, NULL, reason);
    s->j->n_done++;
    slot_release(e, s);
}

/* The prompt is in the cache: run it through the detokenizer (so the first
 * generated piece is spelled as it follows the prompt) and echo it if asked,
 * with the scores step() stored in s->plp. */
static void choice_prompt_done(engine *e, slot *s)
{
    job *j = s->j;
    int chat = j->p.kind == JOB_CHAT;
    int from = j->p.echo_from[s->prompt_idx];
    int echo = j->p.echo && !chat;
    json_t *lp = echo && j->p.logprobs >= 0 ? lp_new(chat) : NULL;
    sbuf text = {0};
    char *buf = e->detok;
    s->prompt_done = 1;
    for (int i = 0; i < s->n_prompt; i++) {
        int32_t id = s->hist[i];
        int w = model_detok_push(e->m, &s->dt, id, buf, sizeof e->detok);
        if (w < 0) w = 0;
        if (!echo || i < from) continue;
        size_t offset = s->chars;
        s->chars += utf8_count(buf, (size_t)w);
        if (lp) lp_add(e, lp, chat, id, i > 0 && s->plp ? &s->plp[i] : NULL, offset);
        sbuf_append(&text, buf, (size_t)w);
    }
    if (!echo) s->dt.n_pending = 0;
    if (echo) choice_text(e, s, text.data ? text.data : "", text.len, lp, NULL);
    sbuf_free(&text);
    if (j->p.max_tokens == 0) choice_finish(e, s, "length", 0);
}

/* ---- sampling one token ----------------------------------------------------------------- */

/* The n_top argument of sampler_step for a request: its top-logprobs count, or
 * SAMPLER_TOKEN_ONLY when it asked for no logprobs at all (logprobs < 0). */
static int sampler_n_top(const job_params *p)
{
    return p->logprobs > 0 ? p->logprobs : p->logprobs == 0 ? 0 : SAMPLER_TOKEN_ONLY;
}

static void slot_sample(engine *e, slot *s, const float *logits)
{
    job *j = s->j;
    const job_params *p = &j->p;
    sampler_choice c;
    int n_top = sampler_n_top(p);
    int injected = e->fault_sampler && p->has_seed && p->sp.seed == e->fault_seed && s->n_gen >= 2;
    int rc;
    if (s->pre_logits == logits) { /* sampled in parallel right after the forward pass */
        c = s->pre;
        rc = s->pre_rc;
    } else {
        rc = sampler_step(s->smp, logits, s->hist, s->n_hist, s->n_gen, n_top, &c);
    }
    s->pre_logits = NULL;
    if (injected || rc < 0) {
        j->failed = 1;
        choice_finish(e, s, "length", 1);
        return;
    }
    double now = srv_now();
    if (s->n_gen == 0) {
        if (j->t_first == 0) {
            j->t_first = now;
            atomic_store(&j->stat_ttft, now - j->t_submit);
            metrics_ttft(e->c.metrics, now - j->t_submit);
        }
    } else {
        metrics_token_latency(e->c.metrics, now - s->t_last);
    }
    s->t_last = now;
    s->hist[s->n_hist++] = c.token;
    s->n_gen++;
    j->completion_tokens++;
    atomic_store(&j->stat_completion, j->completion_tokens);
    if (c.token == e->eos || (e->bos_stop >= 0 && c.token == e->bos_stop)) {
        choice_finish(e, s, "stop", 0);
        return;
    }
    char *buf = e->detok;
    int w = model_detok_push(e->m, &s->dt, c.token, buf, sizeof e->detok);
    if (w < 0) w = 0;
    size_t offset = s->chars;
    s->chars += utf8_count(buf, (size_t)w);
    json_t *lp = NULL;
    if (p->logprobs >= 0) {
        lp = lp_new(p->kind == JOB_CHAT);
        lp_add(e, lp, p->kind == JOB_CHAT, c.token, &c, offset);
    }
    size_t rel = 0;
    int matched = stop_matcher_push(&s->sm, p->stops, p->n_stops, buf, (size_t)w, &rel);
    choice_text(e, s, s->sm.pending.data ? s->sm.pending.data : "", rel, lp, NULL);
    stop_matcher_consume(&s->sm, rel);
    if (matched) {
        stop_matcher_consume(&s->sm, s->sm.pending.len);
        choice_finish(e, s, "stop", 1);
    } else if (s->n_gen >= p->max_tokens) {
        choice_finish(e, s, "length", 0);
    }
}

/* ---- one step ------------------------------------------------------------------------------ */

static int wants_model(const slot *s)
{
    const job_params *p = &s->j->p;
    return p->max_tokens > 0 || s->scoring;
}

/* After a successful forward: item fed k tokens starting at hist index a. */
/* The logits a slot samples from after this item, or NULL if it does not
 * sample in this step (prefill not finished). */
static const float *sample_logits(engine *e, slot *s, const model_batch_item *it)
{
    if (!s->used || slot_pending(s) > 0) return NULL;
    return it->all_logits ? s->score + (size_t)(it->n_tokens - 1) * (size_t)e->vocab : it->logits;
}

typedef struct {
    engine *e;
    slot **slots;
} sample_ctx;

/* Sampling touches only the slot's own sampler, history and logits, so the
 * slots of a step are sampled on the model's threads in parallel; item_done
 * then consumes each result in order, exactly where the serial code would
 * have called sampler_step (same inputs, so the same tokens and logprobs). */
static void sample_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    sample_ctx *c = arg;
    slot *s = c->slots[task];
    const job_params *p = &s->j->p;
    int n_top = sampler_n_top(p);
    s->pre_rc = sampler_step(s->smp, s->pre_logits, s->hist, s->n_hist, s->n_gen, n_top, &s->pre);
}

static void item_done(engine *e, slot *s, const model_batch_item *it, int a)
{
    int k = it->n_tokens;
    if (!s->prompt_done && s->scoring) {
        int n_top = s->j->p.logprobs;
        for (int r = 0; r < k; r++) {
            int t = a + r + 1;
            if (t < s->n_prompt)
                sampler_logprobs(s->score + (size_t)r * (size_t)e->vocab, e->vocab, s->hist[t], n_top,
                                 &s->plp[t]);
        }
    }
    if (slot_pending(s) > 0) return; /* more prefill to come */
    const float *last = sample_logits(e, s, it);
    if (!s->prompt_done) {
        choice_prompt_done(e, s);
        if (!s->used) return;
    }
    slot_sample(e, s, last);
}

static void step(engine *e)
{
    int P = e->c.parallel;
    int n_items = 0, n_logits = 0; /* n_logits: rows of e->logits in use, kept consecutive so the
                                     * model writes them in place (forward.c) */
    /* sequences that need no model at all (max_tokens 0 without scoring) */
    for (int i = 0; i < P; i++) {
        slot *s = &e->slots[i];
        if (s->used && !s->prompt_done && !wants_model(s)) choice_prompt_done(e, s);
    }
    /* decoding sequences: one token each */
    int starts[1024];
    for (int i = 0; i < P; i++) e->slots[i].in_batch = 0;
    for (int i = 0; i < P; i++) {
        slot *s = &e->slots[i];
        if (!s->used || !s->prompt_done) continue;
        int pending = slot_pending(s);
        if (pending != 1) continue;
        int c = model_seq_capacity(s->kv);
        if (model_seq_len(s->kv) + 1 > c) {
            /* context full: keep the last c/2 tokens and recompute them */
            int keep = c / 2 > 0 ? c / 2 : 1;
            s->win_start = s->n_hist - keep;
            model_seq_truncate(s->kv, 0);
            continue; /* prefilled below like a prompt */
        }
        int a = s->n_hist - 1;
        s->in_batch = 1;
        starts[n_items] = a;
        e->items[n_items] = (model_batch_item){
            .seq = s->kv, .tokens = s->hist + a, .n_tokens = 1,
            .logits = e->logits + (size_t)n_logits++ * (size_t)e->vocab, .all_logits = 0};
        e->item_slot[n_items++] = i;
    }
    /* prefilling sequences: chunks, oldest first, within the budget.  A sequence's
     * chunks are always min(pending, prefill_chunk) long -- the budget decides only
     * whether a chunk runs in this step, never its size -- so how a prompt is cut
     * does not depend on what else is running. */
    int budget = e->c.step_budget;
    unsigned long after = 0;
    while (budget > 0) {
        int best = -1;
        for (int i = 0; i < P; i++) {
            slot *s = &e->slots[i];
            if (!s->used || s->in_batch || s->admitted <= after) continue;
            if (!s->prompt_done && !wants_model(s)) continue;
            if (slot_pending(s) <= 0) continue;
            if (best < 0 || s->admitted < e->slots[best].admitted) best = i;
        }
        if (best < 0) break;
        slot *s = &e->slots[best];
        after = s->admitted;
        int pending = slot_pending(s);
        int k = pending < e->c.prefill_chunk ? pending : e->c.prefill_chunk;
        if (k > budget) continue; /* waits for a step with room */
        s->in_batch = 1;
        int a = s->win_start + model_seq_len(s->kv);
        int scoring = s->scoring && !s->prompt_done;
        starts[n_items] = a;
        e->items[n_items] = (model_batch_item){
            .seq = s->kv, .tokens = s->hist + a, .n_tokens = k,
            .logits = scoring ? s->score : (k == pending ? e->logits + (size_t)n_logits++ * (size_t)e->vocab : NULL),
            .all_logits = scoring};
        e->item_slot[n_items++] = best;
        budget -= k;
    }
    if (n_items == 0) return;
    int rows = 0;
    for (int i = 0; i < n_items; i++) rows += e->items[i].n_tokens;
    double t0 = srv_now();
    int rc = model_forward(e->m, e->items, n_items);
    metrics_step(e->c.metrics, rows, srv_now() - t0);
    if (rc < 0) {
        fprintf(stderr, "lmserve: model_forward failed: %s\n", model_strerror(rc));
        for (int i = 0; i < n_items; i++) {
            slot *s = &e->slots[e->item_slot[i]];
            if (!s->used) continue;
            s->j->failed = 1;
            slot_release(e, s);
        }
        return;
    }
    slot *to_sample[1024];
    int n_sample = 0;
    for (int i = 0; i < n_items; i++) {
        slot *s = &e->slots[e->item_slot[i]];
        s->pre_logits = sample_logits(e, s, &e->items[i]);
        if (s->pre_logits) to_sample[n_sample++] = s;
    }
    if (n_sample > 1) {
        sample_ctx sc = {e, to_sample};
        model_parallel(e->m, sample_task, &sc, n_sample);
    } else {
        for (int i = 0; i < n_sample; i++) to_sample[i]->pre_logits = NULL; /* sample inline */
    }
    for (int i = 0; i < n_items; i++) {
        slot *s = &e->slots[e->item_slot[i]];
        if (s->used) item_done(e, s, &e->items[i], starts[i]);
        s->pre_logits = NULL;
    }
}

static void engine_main(void *arg)
{
    engine *e = arg;
    int P = e->c.parallel;
    job **finish = malloc(sizeof *finish * 64);
    int finish_cap = 64;
    for (;;) {
        int n_finish = 0;
        uv_mutex_lock(&e->qmu);
        while (!e->stop && e->n_running_seqs == 0 && !e->q_head && !e->cancel_all)
            uv_cond_wait(&e->qcv, &e->qmu);
        if (e->stop && e->n_running_seqs == 0 && !e->q_head) {
            uv_mutex_unlock(&e->qmu);
            break;
        }
        if (e->cancel_all) {
            int reason = e->cancel_all;
            e->cancel_all = 0;
            for (job *j = e->q_head; j; j = j->q_next) {
                int none = CANCEL_NONE;
                atomic_compare_exchange_strong(&j->cancel, &none, reason);
            }
            for (int i = 0; i < P; i++) {
                int none = CANCEL_NONE;
                if (e->slots[i].used) atomic_compare_exchange_strong(&e->slots[i].j->cancel, &none, reason);
            }
        }
        /* drop cancelled queued jobs */
        job **pp = &e->q_head;
        e->q_tail = NULL;
        while (*pp) {
            job *j = *pp;
            if (atomic_load(&j->cancel) != CANCEL_NONE) {
                *pp = j->q_next;
                j->q_next = NULL;
                j->in_queue = 0;
                e->q_len--;
                e->q_waiting_choices -= j->n_choices - j->n_admitted;
                if (j->n_active == 0) {
                    if (n_finish == finish_cap) {
                        finish_cap *= 2;
                        job **f = realloc(finish, sizeof *f * (size_t)finish_cap);
                        if (f) finish = f;
                    }
                    if (n_finish < finish_cap) finish[n_finish++] = j;
                }
            } else {
                e->q_tail = j;
                pp = &j->q_next;
            }
        }
        /* admit queued choices into free slots */
        for (int i = 0; i < P && e->q_head; i++) {
            slot *s = &e->slots[i];
            if (s->used) continue;
            job *j = e->q_head;
            int choice = j->n_admitted;
            uv_mutex_unlock(&e->qmu);
            int ok = slot_setup(e, s, j, choice) == 0;
            uv_mutex_lock(&e->qmu);
            if (!ok) {
                j->failed = 1;
                int none = CANCEL_NONE;
                atomic_compare_exchange_strong(&j->cancel, &none, CANCEL_SHUTDOWN);
                break;
            }
            j->n_admitted++;
            e->q_waiting_choices--;
            e->n_running_seqs++;
            if (j->n_active++ == 0) e->n_running_jobs++;
            if (j->n_admitted == j->n_choices) {
                e->q_head = j->q_next;
                if (!e->q_head) e->q_tail = NULL;
                j->q_next = NULL;
                j->in_queue = 0;
                e->q_len--;
            }
        }
        uv_mutex_unlock(&e->qmu);
        for (int i = 0; i < n_finish; i++) job_complete(e, finish[i]);
        /* release cancelled sequences */
        for (int i = 0; i < P; i++) {
            slot *s = &e->slots[i];
            if (s->used && atomic_load(&s->j->cancel) != CANCEL_NONE) slot_release(e, s);
        }
        step(e);
    }
    free(finish);
}

/* ---- API ---------------------------------------------------------------------------------- */

int engine_start(engine **out, const engine_config *c)
{
    *out = NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e) return -1;
    e->c = *c;
    e->m = c->model;
    const model_info *mi = model_get_info(e->m);
    e->vocab = mi->vocab_size;
    e->eos = mi->eos_id;
    e->bos_stop = mi->bos_ends_text ? mi->bos_id : -1;
    if (e->c.prefill_chunk < 1) e->c.prefill_chunk = 64;
    if (e->c.step_budget < e->c.prefill_chunk) e->c.step_budget = e->c.prefill_chunk;
    if (e->c.parallel > 1024) e->c.parallel = 1024;
    /* Fault injection for tests (tests/integration/test_faults.py), off unless set:
     * LMSERVE_FAULT_INJECT=sampler:SEED -- every sequence of a request with "seed":
     * SEED fails in its sampler step after two tokens, as an internal error would. */
    const char *fi = getenv("LMSERVE_FAULT_INJECT");
    unsigned long long fseed;
    if (fi && sscanf(fi, "sampler:%llu", &fseed) == 1) {
        e->fault_sampler = 1;
        e->fault_seed = (uint64_t)fseed;
        fprintf(stderr, "lmserve: LMSERVE_FAULT_INJECT: requests with seed %llu will fail (testing only)\n", fseed);
    }
    int P = e->c.parallel;
    e->slots = calloc((size_t)P, sizeof *e->slots);
    e->items = calloc((size_t)P, sizeof *e->items);
    e->item_slot = calloc((size_t)P, sizeof *e->item_slot);
    e->logits = malloc(sizeof(float) * (size_t)P * (size_t)e->vocab);
    if (!e->slots || !e->items || !e->item_slot || !e->logits) goto fail;
    if (uv_mutex_init(&e->qmu)) goto fail;
    if (uv_cond_init(&e->qcv)) {
        uv_mutex_destroy(&e->qmu);
        goto fail;
    }
    if (uv_thread_create(&e->th, engine_main, e)) {
        uv_cond_destroy(&e->qcv);
        uv_mutex_destroy(&e->qmu);
        goto fail;
    }
    e->started = 1;
    *out = e;
    return 0;
fail:
    free(e->slots);
    free(e->items);
    free(e->item_slot);
    free(e->logits);
    free(e);
    return -1;
}

/* Queued jobs that cannot start at the next step (the first ones fit in the free
 * slots and are not really waiting).  Under qmu. */
static int queue_waiting_locked(const engine *e)
{
    int free_slots = e->c.parallel - e->n_running_seqs, acc = 0, fit = 0;
    for (const job *q = e->q_head; q; q = q->q_next) {
        acc += q->n_choices - q->n_admitted;
        if (acc > free_slots) break;
        fit++;
    }
    return e->q_len - fit;
}

int engine_submit(engine *e, job *j)
{
    int rc = -1;
    uv_mutex_lock(&e->qmu);
    int free_slots = e->c.parallel - e->n_running_seqs;
    if (!e->stop && (e->q_waiting_choices + j->n_choices <= free_slots ||
                     queue_waiting_locked(e) < e->c.queue)) {
        job_ref(j);
        j->in_queue = 1;
        j->q_next = NULL;
        if (e->q_tail) e->q_tail->q_next = j;
        else e->q_head = j;
        e->q_tail = j;
        e->q_len++;
        e->q_waiting_choices += j->n_choices;
        uv_cond_signal(&e->qcv);
        rc = 0;
    }
    uv_mutex_unlock(&e->qmu);
    return rc;
}

void engine_cancel(engine *e, job *j, int reason)
{
    int none = CANCEL_NONE;
    atomic_compare_exchange_strong(&j->cancel, &none, reason);
    uv_mutex_lock(&e->qmu);
    uv_cond_signal(&e->qcv);
    uv_mutex_unlock(&e->qmu);
}

void engine_cancel_all(engine *e, int reason)
{
    uv_mutex_lock(&e->qmu);
    e->cancel_all = reason;
    uv_cond_signal(&e->qcv);
    uv_mutex_unlock(&e->qmu);
}

void engine_stats(engine *e, int *queued, int *running_requests, int *running_seqs)
{
    uv_mutex_lock(&e->qmu);
    *queued = queue_waiting_locked(e);
    *running_requests = e->n_running_jobs;
    *running_seqs = e->n_running_seqs;
    uv_mutex_unlock(&e->qmu);
}

void engine_stop(engine *e)
{
    if (!e) return;
    if (e->started) {
        uv_mutex_lock(&e->qmu);
        e->stop = 1;
        e->cancel_all = CANCEL_SHUTDOWN;
        uv_cond_signal(&e->qcv);
        uv_mutex_unlock(&e->qmu);
        uv_thread_join(&e->th);
        uv_cond_destroy(&e->qcv);
        uv_mutex_destroy(&e->qmu);
    }
    for (int i = 0; i < e->c.parallel; i++) {
        model_seq_free(e->slots[i].kv);
        free(e->slots[i].score);
    }
    free(e->slots);
    free(e->items);
    free(e->item_slot);
    free(e->logits);
    free(e);
}
