/* engine.c -- the scheduler: one thread, continuous batching over one model.
 *
 * Each iteration (engine_iterate):
 *   1. drop cancelled queued jobs and release the sequences whose job was
 *      cancelled (client gone, shutdown, output over its limit, a failure);
 *   2. admission, under the queue mutex: queued choices go into free slots (a
 *      request with n choices becomes n sequences, admitted one by one, so any
 *      n works with any --parallel);
 *   3. one step: build ONE batch -- every decoding sequence feeds its last
 *      token; sequences with a prefill pending (a prompt, or the window
 *      recomputed after a context crop) feed a chunk of at most --prefill-chunk
 *      tokens, in the order they started waiting, until the step's budget
 *      (--step-budget) is spent, so a long prompt never freezes the streams --
 *      then model_forward, then for every sequence whose pending tokens are all
 *      in: sample (seed + choice index; on the model's threads, one task per
 *      sequence; a constrained choice's grammar masks first, and a text the
 *      grammar says is whole ends with "stop"), detokenize incrementally (whole UTF-8 characters), hold back
 *      text that could still become a stop string, and emit typed events
 *      (server_internal.h) to the job.
 * Rows never influence each other in model_forward, a sequence's prefill is
 * always cut into the same chunks, and each sampler sees only its own sequence,
 * so a seeded request's tokens and logprobs do not depend on what else runs.
 *
 * With a prefix cache (--cache-mb, prefix.c), a sequence starting a window first
 * takes the longest prefix of it that another sequence -- running, or finished and
 * retained -- has computed, and computes only the rest; one that an earlier
 * sequence (lower ticket) is computing waits for it instead of computing it too (so
 * the n choices of a request prefill their prompt once).  Its chunks then start
 * where the taken prefix ends: the chunk boundaries move, which changes no bit
 * (model_forward computes each row alone; tests/model/compute/test_seq.c).
 *
 * The engine knows nothing of HTTP or JSON: the output stage (output.c) turns
 * the events into response bytes on the loop thread.
 */
#include "server/server_internal.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One running choice. */
typedef struct {
    int used;
    job *j;
    int choice; /* index into the job's choices */
    int prompt_idx;
    unsigned long ticket; /* prefill order: taken when the sequence starts waiting */
    seq_kv kv;            /* kept across requests */
    int32_t *hist;        /* prompt + generated: (cap_hist) */
    int n_hist, cap_hist;
    int policy; /* SAMPLER_CROP_*: what happens past the window */
    int win;    /* the window, hist[win..end): what the next logits come from */
    int end;    /* n_hist, except while a long prompt is scored window by window */
    int n_prompt;
    int n_gen;
    int prompt_done;
    int in_batch; /* already fed in the step being built */
    int waiting;  /* waits this step for an earlier sequence computing its prefix */
    int reused;   /* prompt positions taken from the prefix cache */
    int scoring;  /* echo + logprobs: logits of every prompt position */
    sampler *smp;
    sampler_constraint *con; /* the request's constraint for this choice, or NULL; smp uses it */
    model_detok dt;
    stop_matcher sm;
    size_t chars; /* code points of the choice's text so far (text offsets) */
    double t_last;
    float *score;            /* (prefill_chunk, vocab) when scoring */
    sampler_choice *plp;     /* (n_prompt) scores of prompt tokens when scoring */
    const float *pre_logits; /* this step's logits when the sequence samples now */
    int pre_rc;              /* sampler_step's result for them (sample_task) */
    sampler_choice pre;
    sampler_trace *trace; /* the step's trace when the request asks for one (sampler_trace
                              * > 0); allocated on first use, kept across requests */
} seq;

struct engine {
    engine_config c;
    model *m;
    int vocab, eos;
    int bos_stop; /* BOS id when a generated BOS ends the text (llama2.c models), else -1 */
    uv_thread_t th;
    int threaded;
    uv_mutex_t qmu;
    uv_cond_t qcv;
    /* [qmu] */
    job *q_head, *q_tail;
    int q_len, q_waiting_choices;
    int n_running_seqs, n_running_jobs;
    int stop, cancel_all;
    atomic_ulong steps; /* model_forward calls begun (written by the engine thread) */
    /* engine thread */
    unsigned long tickets;
    seq *seqs;               /* (parallel) */
    model_batch_item *items; /* (parallel) */
    int *item_seq;           /* (parallel) index into seqs of each item */
    int *starts;             /* (parallel) hist index of each item's first token */
    seq **to_sample;         /* (parallel) */
    float *logits;           /* (parallel, vocab) */
    char detok[8192];
    /* LMSERVE_FAULT_INJECT (tests only): sequences of requests with this seed fail */
    int fault_sampler;
    uint64_t fault_seed;
    kv_store *store;                /* the prefix cache; NULL: off */
    int step_computed, step_reused; /* prompt positions fed / taken in this step (metrics) */
};

/* ---- events -------------------------------------------------------------------------- */

static void notify(engine *e, job *j)
{
    if (e->c.notify) e->c.notify(e->c.notify_cls, j);
}

/* The job cannot be answered normally any more: it ends with `error` and its
 * other sequences are dropped at the next iteration. */
static void job_fail(job *j, int error)
{
    if (!j->error) j->error = error;
    job_cancel(j, CANCEL_FAILED);
}

/* Hand ev to the job (NULL: the allocation failed, the job fails). */
static void emit(engine *e, job *j, job_event *ev)
{
    if (!ev) {
        job_fail(j, JOB_ERR_NOMEM);
        return;
    }
    if (atomic_load(&j->cancel) != CANCEL_NONE) { /* nobody will read it */
        job_event_free(ev);
        return;
    }
    job_emit(j, ev);
    notify(e, j);
}

/* The engine is done with j: record how it ended, wake the loop thread, drop
 * the engine's reference. */
static void job_finish(engine *e, job *j)
{
    job_end end = { .error = j->error,
                    .prompt_tokens = j->prompt_tokens,
                    .completion_tokens = j->completion_tokens,
                    .prompt_tokens_dropped = j->prompt_dropped };
    for (int i = 0; j->cached && i < j->p.n_prompts; i++) end.cached_tokens += j->cached[i] > 0 ? j->cached[i] : 0;
    free(j->cached);
    j->cached = NULL;
    atomic_store(&j->stat_cached, end.cached_tokens);
    if (!end.error && atomic_load(&j->cancel) == CANCEL_SHUTDOWN) end.error = JOB_ERR_SHUTDOWN;
    atomic_store(&j->stat_prompt, j->prompt_tokens);
    atomic_store(&j->stat_completion, j->completion_tokens);
    if (j->t_first > 0) atomic_store(&j->stat_ttft, j->t_first - j->t_submit);
    job_set_end(j, &end);
    notify(e, j);
    job_unref(j);
}

/* ---- sequences ------------------------------------------------------------------------ */

/* Tokens of the window not yet in the cache. */
static int seq_pending(const seq *s) { return s->end - (s->win + seq_kv_len(&s->kv)); }

/* Scoring a prompt longer than the window: positions past the first window are
 * scored one window each, before anything is sampled. */
static int seq_scoring_past_window(const seq *s) { return !s->prompt_done && s->end < s->n_prompt; }

/* The window moved to hist[start..end), whose last `fresh` tokens were never fed:
 * keep what the cache still holds exactly (slide: a common prefix; shift:
 * nothing, as it always did), count the recompute, and wait in line for the
 * prefill like a new prompt. */
static void seq_move_window(engine *e, seq *s, int start, int fresh)
{
    s->win = start;
    int held = seq_kv_sync(&s->kv, s->hist + start, s->end - start, s->policy == SAMPLER_CROP_SLIDE);
    s->ticket = ++e->tickets;
    if (e->c.metrics) metrics_context(e->c.metrics, s->end - start - held - fresh);
}

/* Whether every position of s's window is scored (echo + logprobs): a prompt's
 * first window only; past it, each window gives the score of its next token. */
static int seq_scores_window(const seq *s) { return s->scoring && !s->prompt_done && s->win == 0; }

/* With a prefix cache, before s feeds a chunk of its window: if an earlier
 * sequence (lower ticket) is computing positions s could take, wait for it; else
 * take the longest prefix of the window another sequence holds (with its scores
 * when the prompt is scored).  Sets s->waiting. */
static void seq_prepare(engine *e, seq *s)
{
    s->waiting = 0;
    if (!e->store) return;
    int scoring = seq_scores_window(s);
    const int32_t *w = s->hist + s->win;
    int n = s->end - s->win, held = seq_kv_len(&s->kv);
    for (int i = 0; i < e->c.parallel; i++) {
        const seq *t = &e->seqs[i];
        if (!t->used || t == s || t->ticket > s->ticket || seq_pending(t) < 2) continue;
        if (scoring && (!seq_scores_window(t) || t->j->p.logprobs != s->j->p.logprobs)) continue;
        int k = seq_kv_reuse_len(w, n, t->hist + t->win, t->end - t->win, scoring);
        if (k > held && seq_kv_len(&t->kv) < k) {
            s->waiting = 1;
            return;
        }
    }
    /* a prompt whose generation fits in the window only appends to what it holds, so it
     * may take a retained sequence whole (it retains all of it again when it ends) */
    int grows_only = !s->prompt_done && s->win == 0 && s->n_prompt + s->j->p.max_tokens <= e->c.ctx;
    int got = seq_kv_reuse(&s->kv, w, n, scoring ? s->j->p.logprobs : -1, scoring ? s->plp + s->win : NULL, grows_only);
    if (!s->prompt_done) {
        s->reused += got;
        e->step_reused += got;
    }
}

static void seq_free_request(seq *s)
{
    sampler_free(s->smp);
    s->smp = NULL;
    sampler_constraint_free(s->con); /* after the sampler, which borrows it */
    s->con = NULL;
    free(s->hist);
    s->hist = NULL;
    free(s->plp);
    s->plp = NULL;
    stop_matcher_free(&s->sm);
}

static int seq_setup(engine *e, seq *s, job *j, int choice)
{
    const job_params *p = &j->p;
    int pi = choice / p->n;
    int n_prompt = p->prompt_lens[pi];
    memset(&s->dt, 0, sizeof s->dt);
    memset(&s->sm, 0, sizeof s->sm);
    s->j = j;
    s->choice = choice;
    s->prompt_idx = pi;
    s->ticket = ++e->tickets;
    s->cap_hist = n_prompt + p->max_tokens + 1;
    s->hist = malloc(sizeof *s->hist * (size_t)s->cap_hist);
    sampler_params sp = p->sp;
    sp.seed = p->sp.seed + (uint64_t)choice;
    /* a constrained choice starts at the grammar's start, in the request's shared cache */
    s->con = p->constraint ? sampler_constraint_new_shared(p->constraint) : NULL;
    /* a chat template's end of turn ends a constrained text like EOS: once it is whole */
    if (s->con && p->has_stop_token) (void)sampler_constraint_add_end(s->con, p->stop_token);
    sp.constraint = s->con;
    s->smp = p->constraint && !s->con ? NULL : sampler_new(e->vocab, &sp);
    int traced = p->sampler_trace > 0;
    if (traced && !s->trace) s->trace = malloc(sizeof *s->trace);
    s->scoring = p->echo && p->logprobs >= 0;
    if (s->scoring && !s->score) s->score = malloc(sizeof(float) * (size_t)e->c.prefill_chunk * (size_t)e->vocab);
    s->plp = s->scoring ? calloc((size_t)n_prompt, sizeof *s->plp) : NULL;
    if (!j->cached && e->store) { /* per prompt: the least any of its choices took from the cache */
        j->cached = malloc(sizeof *j->cached * (size_t)p->n_prompts);
        for (int i = 0; j->cached && i < p->n_prompts; i++) j->cached[i] = -1;
    }
    if (!s->hist || seq_kv_open(&s->kv, e->m, e->c.ctx) < 0 || !s->smp || (e->store && !j->cached) ||
        (s->scoring && (!s->score || !s->plp)) ||
        (traced && (!s->trace || sampler_trace_enable(s->smp, p->sampler_trace) != SAMPLER_OK))) {
        seq_free_request(s);
        s->j = NULL;
        return -1;
    }
    seq_kv_sync(&s->kv, NULL, 0, 0);
    memcpy(s->hist, p->prompts[pi], sizeof *s->hist * (size_t)n_prompt);
    s->n_hist = s->n_prompt = n_prompt;
    s->policy = p->context_overflow;
    int W = e->c.ctx;
    if (s->scoring && s->policy == SAMPLER_CROP_SLIDE && n_prompt > W) {
        s->win = 0; /* the first window, all positions scored; then one window per position */
        s->end = W;
    } else {
        int start = sampler_crop_start(s->policy, 0, n_prompt, W);
        s->win = start > 0 ? start : 0; /* slide: a long prompt's last W tokens */
        s->end = n_prompt;
    }
    s->n_gen = 0;
    s->prompt_done = 0;
    s->chars = 0;
    s->reused = 0; /* seq_prepare takes what the cache holds before its first chunk */
    model_detok_init(&s->dt);
    s->used = 1;
    return 0;
}

static void seq_release(engine *e, seq *s)
{
    job *j = s->j;
    if (j->cached) {
        int *c = &j->cached[s->prompt_idx];
        if (*c < 0 || s->reused < *c) *c = s->reused;
    }
    if (j->error != JOB_ERR_MODEL) seq_kv_retain(&s->kv); /* its entries are exact whatever ended it */
    seq_free_request(s);
    s->used = 0;
    s->j = NULL;
    uv_mutex_lock(&e->qmu);
    e->n_running_seqs--;
    int last = --j->n_active == 0;
    if (last) e->n_running_jobs--;
    int complete = last && !j->in_queue;
    uv_mutex_unlock(&e->qmu);
    if (complete) job_finish(e, j);
}

/* The choice ends: flush what the detokenizer and the stop matcher hold (unless
 * a stop string ended it), emit EV_FINISH, free the slot.  trace: the step of the
 * end-of-text token that ended it (owned by the event), or NULL. */
static void seq_finish(engine *e, seq *s, const char *reason, int stopped, sampler_trace *trace)
{
    job *j = s->j;
    const char *text = "";
    size_t tn = 0;
    if (!stopped) {
        char *buf = e->detok;
        /* a constrained text cut by max_tokens must stay a prefix of the language:
         * drop an unfinished UTF-8 character rather than write U+FFFD for it */
        if (s->con) s->dt.n_pending = 0;
        int f = model_detok_flush(e->m, &s->dt, buf, sizeof e->detok);
        size_t rel = 0;
        int m = stop_matcher_push(&s->sm, j->p.stops, j->p.n_stops, buf, f > 0 ? (size_t)f : 0, &rel);
        if (m < 0) job_fail(j, JOB_ERR_NOMEM);
        if (m > 0) {
            reason = "stop";
            tn = rel;
        } else {
            tn = s->sm.pending.len; /* nothing more can come: release what was held back */
        }
        text = s->sm.pending.data ? s->sm.pending.data : "";
    }
    job_event *ev = job_event_new(EV_FINISH, s->choice, text, tn, 0);
    if (ev) {
        ev->finish = reason;
        ev->trace = trace;
    } else {
        free(trace);
    }
    emit(e, j, ev);
    j->n_done++;
    seq_release(e, s);
}

/* The prompt is in the cache: run it through the detokenizer (so the first
 * generated piece is spelled as it follows the prompt) and, for echo, emit it
 * with the scores item_done stored in s->plp. */
static void seq_prompt_done(engine *e, seq *s)
{
    job *j = s->j;
    int from = j->p.echo_from[s->prompt_idx];
    int echo = j->p.echo && j->p.kind != JOB_CHAT;
    int n_echo = echo ? s->n_prompt - from : 0;
    size_t *offs = n_echo > 0 ? malloc(sizeof *offs * (size_t)n_echo) : NULL;
    sbuf text = { 0 };
    int ok = n_echo == 0 || offs;
    char *buf = e->detok;
    s->prompt_done = 1;
    for (int i = 0; i < s->n_prompt; i++) {
        int w = model_detok_push(e->m, &s->dt, s->hist[i], buf, sizeof e->detok);
        if (w < 0) w = 0;
        if (!echo || i < from || !ok) continue;
        offs[i - from] = s->chars;
        s->chars += utf8_count(buf, (size_t)w);
        if (sbuf_append(&text, buf, (size_t)w) < 0) ok = 0;
    }
    if (!echo) s->dt.n_pending = 0;
    /* the constraint read the first piece's bytes as they are: never drop its leading
     * space (the detokenizer would when the prompt has no text, e.g. BOS alone) */
    if (s->con) s->dt.emitted = 1;
    if (echo && n_echo > 0) {
        size_t nb = (size_t)n_echo;
        int scored = s->plp != NULL;
        job_event *ev =
            !ok ? NULL
                : job_event_new(EV_PROMPT, s->choice, text.data ? text.data : "", text.len,
                                nb * (sizeof(size_t) + sizeof(int32_t) + (scored ? sizeof(sampler_choice) : 0)));
        if (ev) {
            char *x = job_event_extra(ev);
            size_t *o = (size_t *)x;
            sampler_choice *sc = scored ? (sampler_choice *)(x + nb * sizeof(size_t)) : NULL;
            int32_t *ids = (int32_t *)(x + nb * sizeof(size_t) + (scored ? nb * sizeof(sampler_choice) : 0));
            memcpy(o, offs, nb * sizeof *o);
            memcpy(ids, s->hist + from, nb * sizeof *ids);
            if (sc) memcpy(sc, s->plp + from, nb * sizeof *sc);
            ev->n_ids = n_echo;
            ev->pos0 = from;
            ev->ids = ids;
            ev->offsets = o;
            ev->scores = sc;
        }
        emit(e, j, ev);
    }
    sbuf_free(&text);
    free(offs);
    if (j->p.max_tokens == 0 || sampler_crop_start(s->policy, s->win, s->end, e->c.ctx) < 0)
        seq_finish(e, s, "length", 0, NULL);
}

/* After a token was appended: the window for the next one, as the policy says
 * (sampler_crop_start): slide -- the last ctx tokens, recomputed; shift -- when
 * full, the last ctx/2, recomputed once; stop -- the choice ends. */
static void seq_fit_window(engine *e, seq *s)
{
    int start = sampler_crop_start(s->policy, s->win, s->end, e->c.ctx);
    if (start < 0)
        seq_finish(e, s, "length", 0, NULL);
    else if (start != s->win)
        seq_move_window(e, s, start, 1);
}

/* ---- sampling one token ----------------------------------------------------------------- */

/* The n_top argument of sampler_step for a request: its top-logprobs count, or
 * SAMPLER_TOKEN_ONLY when it asked for no logprobs at all (logprobs < 0). */
static int sampler_n_top(const job_params *p)
{
    return p->logprobs > 0 ? p->logprobs : p->logprobs == 0 ? 0 : SAMPLER_TOKEN_ONLY;
}

/* Choose the next token from logits.  This is the one place a choice's
 * distribution is turned into a token.  A constrained choice's sampler holds its
 * constraint (s->con), the first of sampler_step's warpers: it masks the tokens
 * the grammar does not allow next and advances with the chosen one. */
static int seq_choose(seq *s, const float *logits, sampler_choice *c)
{
    sampler_trace *tr = s->j->p.sampler_trace > 0 ? s->trace : NULL;
    return sampler_step_traced(s->smp, logits, s->hist, s->n_hist, s->n_gen, sampler_n_top(&s->j->p), c, tr);
}

static int any_finite(const float *x, int n)
{
    for (int i = 0; i < n; i++)
        if (isfinite(x[i])) return 1;
    return 0;
}

static void seq_sample(engine *e, seq *s, const float *logits)
{
    job *j = s->j;
    const job_params *p = &j->p;
    sampler_choice c;
    int injected = e->fault_sampler && p->has_seed && p->sp.seed == e->fault_seed && s->n_gen >= 2;
    int rc;
    if (s->pre_logits == logits) { /* sampled in parallel right after the forward pass */
        c = s->pre;
        rc = s->pre_rc;
    } else {
        rc = seq_choose(s, logits, &c);
    }
    s->pre_logits = NULL;
    if (!injected && rc == SAMPLER_EINVAL && s->con && any_finite(logits, e->vocab)) {
        /* the model gave scores, but logit_bias bans every token the grammar allows
         * here: the client's own contradiction, not a failure; the text so far is a
         * prefix of the language, so the choice ends as if cut by max_tokens */
        seq_finish(e, s, "length", 0, NULL);
        return;
    }
    if (injected || rc < 0) {
        job_fail(j, rc == SAMPLER_ENOMEM ? JOB_ERR_NOMEM : JOB_ERR_MODEL);
        seq_finish(e, s, "length", 1, NULL);
        return;
    }
    /* The step's trace travels with its token's event (the output stage formats it). */
    sampler_trace *trace = NULL;
    if (p->sampler_trace > 0) {
        trace = malloc(sizeof *trace);
        if (!trace) {
            job_fail(j, JOB_ERR_NOMEM);
            seq_finish(e, s, "length", 1, NULL);
            return;
        }
        memcpy(trace, s->trace, sizeof *trace);
    }
    double now = srv_now();
    if (s->n_gen == 0) {
        if (j->t_first == 0) {
            j->t_first = now;
            atomic_store(&j->stat_queue, j->t_admit - j->t_submit);
            atomic_store(&j->stat_wait, j->t_fwd - j->t_admit);
            atomic_store(&j->stat_fwd, now - j->t_fwd);
            atomic_store(&j->stat_steps, (int)(atomic_load(&e->steps) - j->step_submit));
            atomic_store(&j->stat_ttft, now - j->t_submit);
            if (e->c.metrics) metrics_ttft(e->c.metrics, now - j->t_submit);
        }
    } else if (e->c.metrics) {
        metrics_token_latency(e->c.metrics, now - s->t_last);
    }
    s->t_last = now;
    s->hist[s->n_hist++] = c.token;
    s->end = s->n_hist;
    s->n_gen++;
    j->completion_tokens++;
    atomic_store(&j->stat_completion, j->completion_tokens);
    if (c.token == e->eos || (e->bos_stop >= 0 && c.token == e->bos_stop) ||
        (p->has_stop_token && c.token == p->stop_token)) {
        if (p->logprobs >= 0) {
            /* the token that ends the text is scored too, with no text (vLLM lists it as well):
             * a client asking for one token with logprobs -- lm-evaluation-harness scoring a
             * continuation -- always finds that token last and can drop it */
            job_event *eev = job_event_new(EV_TOKEN, s->choice, "", 0, 0);
            if (eev) {
                eev->tok = c;
                eev->scored = 1;
                eev->offset = s->chars;
            }
            emit(e, j, eev);
        }
        seq_finish(e, s, "stop", 0, trace);
        return;
    }
    char *buf = e->detok;
    int w = model_detok_push(e->m, &s->dt, c.token, buf, sizeof e->detok);
    if (w < 0) w = 0;
    size_t offset = s->chars;
    s->chars += utf8_count(buf, (size_t)w);
    size_t rel = 0;
    int matched = stop_matcher_push(&s->sm, p->stops, p->n_stops, buf, (size_t)w, &rel);
    if (matched < 0) job_fail(j, JOB_ERR_NOMEM);
    job_event *ev = job_event_new(EV_TOKEN, s->choice, s->sm.pending.data ? s->sm.pending.data : "", rel, 0);
    if (ev) {
        ev->tok = c;
        ev->scored = p->logprobs >= 0;
        ev->offset = offset;
        ev->trace = trace;
    } else {
        free(trace);
    }
    emit(e, j, ev);
    stop_matcher_consume(&s->sm, rel);
    if (matched > 0) {
        stop_matcher_consume(&s->sm, s->sm.pending.len);
        seq_finish(e, s, "stop", 1, NULL);
    } else if (c.constraint == SAMPLER_CONSTRAINT_COMPLETE) {
        seq_finish(e, s, "stop", 0, NULL); /* the text is whole and nothing may follow */
    } else if (c.constraint == SAMPLER_CONSTRAINT_STUCK) {
        /* cannot happen: validation refuses grammars needing a byte the vocabulary
         * has no one-byte token for */
        job_fail(j, JOB_ERR_MODEL);
        seq_finish(e, s, "length", 1, NULL);
    } else if (s->n_gen >= p->max_tokens) {
        seq_finish(e, s, "length", 0, NULL);
    } else {
        seq_fit_window(e, s);
    }
}

/* ---- one step ------------------------------------------------------------------------------ */

/* Whether the prompt must go through the model: to score it, or to generate
 * (not when max_tokens is 0 or, under stop, the prompt fills the window). */
static int wants_model(const engine *e, const seq *s)
{
    return s->scoring || (s->j->p.max_tokens > 0 && sampler_crop_start(s->policy, s->win, s->end, e->c.ctx) >= 0);
}

/* The logits after item it: its last position's. */
static const float *last_logits(engine *e, seq *s, const model_batch_item *it)
{
    return it->all_logits ? s->score + (size_t)(it->n_tokens - 1) * (size_t)e->vocab : it->logits;
}

/* The logits s samples from after its item, or NULL if it does not sample in
 * this step (a prefill not finished, or a prompt still scored window by window). */
static const float *sample_logits(engine *e, seq *s, const model_batch_item *it)
{
    if (!s->used || seq_pending(s) > 0 || seq_scoring_past_window(s)) return NULL;
    return last_logits(e, s, it);
}

/* Sampling touches only the sequence's own sampler, history and logits, so the
 * sequences of a step are sampled on the model's threads in parallel; item_done
 * then consumes each result in order, exactly where the serial code would have
 * called seq_choose (same inputs, so the same tokens and logprobs). */
static void sample_task(void *arg, int task, int n_tasks)
{
    (void)n_tasks;
    seq **to_sample = arg;
    seq *s = to_sample[task];
    s->pre_rc = seq_choose(s, s->pre_logits, &s->pre);
}

/* After a successful forward: the item fed hist[a .. a + n_tokens). */
static void item_done(engine *e, seq *s, const model_batch_item *it, int a)
{
    int k = it->n_tokens;
    if (!s->prompt_done) e->step_computed += k;
    if (!s->prompt_done && s->scoring && it->all_logits) {
        int n_top = s->j->p.logprobs;
        for (int r = 0; r < k; r++) {
            int t = a + r + 1;
            if (t < s->n_prompt)
                sampler_logprobs(s->score + (size_t)r * (size_t)e->vocab, e->vocab, s->hist[t], n_top, &s->plp[t]);
        }
        if (s->win == 0) seq_kv_scored(&s->kv, s->plp, a + k + 1 < s->n_prompt ? a + k + 1 : s->n_prompt, n_top);
    }
    if (seq_pending(s) > 0) return; /* more prefill to come */
    if (seq_scoring_past_window(s)) {
        /* the window hist[win..end) predicts hist[end] (already scored when the
         * window was the first, all of whose positions were) */
        if (!it->all_logits) sampler_logprobs(it->logits, e->vocab, s->hist[s->end], s->j->p.logprobs, &s->plp[s->end]);
        s->end++;
        if (s->end == s->n_prompt && s->j->p.max_tokens == 0) {
            seq_prompt_done(e, s); /* every position scored; no window needed to sample from */
            return;
        }
        seq_move_window(e, s, sampler_crop_start(SAMPLER_CROP_SLIDE, s->win, s->end, e->c.ctx), 0);
        return;
    }
    const float *last = last_logits(e, s, it);
    if (!s->prompt_done) {
        seq_prompt_done(e, s);
        if (!s->used) return;
    }
    seq_sample(e, s, last);
}

/* Build one batch, run it, consume the results.  Returns the number of items. */
static int step(engine *e, engine_step_info *info)
{
    int P = e->c.parallel;
    int n_items = 0, n_logits = 0; /* n_logits: rows of e->logits in use, kept consecutive so the
                                     * model writes them in place (forward.c) */
    /* sequences that need no model at all (max_tokens 0 without scoring) */
    for (int i = 0; i < P; i++) {
        seq *s = &e->seqs[i];
        if (s->used && !s->prompt_done && !wants_model(e, s)) seq_prompt_done(e, s);
    }
    /* decoding sequences: one token each */
    for (int i = 0; i < P; i++) e->seqs[i].in_batch = 0;
    for (int i = 0; i < P; i++) {
        seq *s = &e->seqs[i];
        if (!s->used || !s->prompt_done || seq_pending(s) != 1) continue;
        int a = s->end - 1;
        s->in_batch = 1;
        e->starts[n_items] = a;
        e->items[n_items] = (model_batch_item){ .seq = s->kv.seq,
                                                .tokens = s->hist + a,
                                                .n_tokens = 1,
                                                .logits = e->logits + (size_t)n_logits++ * (size_t)e->vocab,
                                                .all_logits = 0 };
        e->item_seq[n_items++] = i;
    }
    int decode_rows = n_items;
    for (int i = 0; i < P; i++) {
        seq *s = &e->seqs[i];
        s->waiting = 0;
        if (s->used && !s->in_batch && (s->prompt_done || wants_model(e, s)) && seq_pending(s) > 1) seq_prepare(e, s);
    }
    /* prefilling sequences: chunks, in ticket order, within the budget.  A sequence's
     * chunks are always min(pending, prefill_chunk) long -- the budget decides only
     * whether a chunk runs in this step, never its size -- so how a prompt is cut
     * does not depend on what else is running. */
    int budget = e->c.step_budget;
    unsigned long after = 0;
    while (budget > 0) {
        int best = -1;
        for (int i = 0; i < P; i++) {
            seq *s = &e->seqs[i];
            if (!s->used || s->in_batch || s->ticket <= after) continue;
            if (!s->prompt_done && !wants_model(e, s)) continue;
            if (seq_pending(s) <= 0 || s->waiting) continue;
            if (best < 0 || s->ticket < e->seqs[best].ticket) best = i;
        }
        if (best < 0) break;
        seq *s = &e->seqs[best];
        after = s->ticket;
        int pending = seq_pending(s);
        int k = pending < e->c.prefill_chunk ? pending : e->c.prefill_chunk;
        if (k > budget) continue; /* waits for a step with room */
        s->in_batch = 1;
        int a = s->win + seq_kv_len(&s->kv);
        int scoring = seq_scores_window(s);
        e->starts[n_items] = a;
        e->items[n_items] = (model_batch_item){
            .seq = s->kv.seq,
            .tokens = s->hist + a,
            .n_tokens = k,
            .logits = scoring ? s->score : (k == pending ? e->logits + (size_t)n_logits++ * (size_t)e->vocab : NULL),
            .all_logits = scoring
        };
        e->item_seq[n_items++] = best;
        budget -= k;
    }
    if (info) *info = (engine_step_info){ .items = n_items };
    if (n_items == 0) return 0;
    int rows = 0;
    for (int i = 0; i < n_items; i++) rows += e->items[i].n_tokens;
    double t0 = srv_now();
    atomic_fetch_add(&e->steps, 1);
    for (int i = 0; i < n_items; i++) {
        job *j = e->seqs[e->item_seq[i]].j;
        if (j->t_fwd == 0) j->t_fwd = t0;
    }
    int rc = model_forward(e->m, e->items, n_items);
    if (e->c.metrics) metrics_step(e->c.metrics, rows, srv_now() - t0);
    if (info) {
        info->rows = rows;
        info->prefill_rows = rows - decode_rows;
    }
    if (rc < 0) {
        fprintf(stderr, "lmserve: model_forward failed: %s\n", model_strerror(rc));
        for (int i = 0; i < n_items; i++) {
            seq *s = &e->seqs[e->item_seq[i]];
            if (!s->used) continue;
            job_fail(s->j, JOB_ERR_MODEL);
            seq_release(e, s);
        }
        return n_items;
    }
    int n_sample = 0;
    for (int i = 0; i < n_items; i++) {
        seq *s = &e->seqs[e->item_seq[i]];
        s->pre_logits = sample_logits(e, s, &e->items[i]);
        if (s->pre_logits) e->to_sample[n_sample++] = s;
    }
    if (n_sample > 1) {
        model_parallel(e->m, sample_task, e->to_sample, n_sample);
    } else {
        for (int i = 0; i < n_sample; i++) e->to_sample[i]->pre_logits = NULL; /* sample inline */
    }
    if (info) info->sampled = n_sample;
    for (int i = 0; i < n_items; i++) {
        seq *s = &e->seqs[e->item_seq[i]];
        if (s->used) item_done(e, s, &e->items[i], e->starts[i]);
        s->pre_logits = NULL;
    }
    return n_items;
}

/* ---- admission ------------------------------------------------------------------------------ */

/* Under qmu: apply a pending cancel-all, unlink cancelled queued jobs (those with
 * no running sequence are chained on *finished through q_next, to be ended
 * outside the lock). */
static void drop_cancelled_locked(engine *e, job **finished)
{
    if (e->cancel_all) {
        int reason = e->cancel_all;
        e->cancel_all = 0;
        for (job *j = e->q_head; j; j = j->q_next) job_cancel(j, reason);
        for (int i = 0; i < e->c.parallel; i++)
            if (e->seqs[i].used) job_cancel(e->seqs[i].j, reason);
    }
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
                j->q_next = *finished;
                *finished = j;
            }
        } else {
            e->q_tail = j;
            pp = &j->q_next;
        }
    }
}

/* The admission point, once per step, under qmu: queued choices go into free
 * slots in queue order. */
static void admit_locked(engine *e)
{
    for (int i = 0; i < e->c.parallel && e->q_head; i++) {
        seq *s = &e->seqs[i];
        if (s->used) continue;
        job *j = e->q_head;
        int choice = j->n_admitted;
        uv_mutex_unlock(&e->qmu); /* allocations: do not hold up engine_submit */
        int ok = seq_setup(e, s, j, choice) == 0;
        uv_mutex_lock(&e->qmu);
        if (!ok) {
            job_fail(j, JOB_ERR_NOMEM); /* dropped from the queue at the next iteration */
            break;
        }
        if (j->n_admitted++ == 0) j->t_admit = srv_now();
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
}

/* One iteration: drop what was cancelled (freeing its slots), admit, step.
 * Returns -1 when stopping and idle, 0 when idle, 1 otherwise. */
static int engine_iterate(engine *e, int wait, engine_step_info *info)
{
    job *finished = NULL;
    uv_mutex_lock(&e->qmu);
    while (wait && !e->stop && e->n_running_seqs == 0 && !e->q_head && !e->cancel_all) uv_cond_wait(&e->qcv, &e->qmu);
    if (e->stop && e->n_running_seqs == 0 && !e->q_head && !e->cancel_all) {
        uv_mutex_unlock(&e->qmu);
        if (info) *info = (engine_step_info){ 0 };
        return -1;
    }
    int busy = e->n_running_seqs > 0 || e->q_head != NULL;
    drop_cancelled_locked(e, &finished);
    uv_mutex_unlock(&e->qmu);
    while (finished) {
        job *j = finished;
        finished = j->q_next;
        j->q_next = NULL;
        job_finish(e, j);
    }
    for (int i = 0; i < e->c.parallel; i++) {
        seq *s = &e->seqs[i];
        if (s->used && atomic_load(&s->j->cancel) != CANCEL_NONE) seq_release(e, s);
    }
    uv_mutex_lock(&e->qmu);
    admit_locked(e);
    uv_mutex_unlock(&e->qmu);
    step(e, info);
    if (e->c.metrics) {
        kv_store_stats st;
        kv_store_get_stats(e->store, &st);
        metrics_prefix(e->c.metrics, e->step_computed, e->step_reused, e->store ? e->c.cache_bytes : 0, st.bytes,
                       st.entries, st.evictions);
    }
    e->step_computed = e->step_reused = 0;
    return busy;
}

static void engine_main(void *arg)
{
    engine *e = arg;
    while (engine_iterate(e, 1, NULL) >= 0) {}
}

/* ---- API ---------------------------------------------------------------------------------- */

/* What engine_new allocates before any sequence holds memory: the prefix store, the
 * slot and batch arrays, and the engine itself (its failure path and engine_stop). */
static void engine_free_shell(engine *e)
{
    kv_store_free(e->store);
    free(e->seqs);
    free(e->items);
    free(e->item_seq);
    free(e->starts);
    free(e->to_sample);
    free(e->logits);
    free(e);
}

int engine_new(engine **out, const engine_config *c)
{
    *out = NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e) return -1;
    atomic_init(&e->steps, 0);
    e->c = *c;
    e->m = c->model;
    const model_info *mi = model_get_info(e->m);
    e->vocab = mi->vocab_size;
    e->eos = mi->eos_id;
    e->bos_stop = mi->bos_ends_text ? mi->bos_id : -1;
    if (e->c.ctx <= 0 || e->c.ctx > mi->ctx_len) e->c.ctx = mi->ctx_len;
    if (e->c.prefill_chunk < 1) e->c.prefill_chunk = 64;
    if (e->c.step_budget < e->c.prefill_chunk) e->c.step_budget = e->c.prefill_chunk;
    if (e->c.parallel < 1) e->c.parallel = 1;
    if (e->c.parallel > SERVER_MAX_PARALLEL) e->c.parallel = SERVER_MAX_PARALLEL;
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
    size_t P = (size_t)e->c.parallel;
    e->seqs = calloc(P, sizeof *e->seqs);
    e->items = calloc(P, sizeof *e->items);
    e->item_seq = calloc(P, sizeof *e->item_seq);
    e->starts = calloc(P, sizeof *e->starts);
    e->to_sample = calloc(P, sizeof *e->to_sample);
    e->logits = malloc(sizeof(float) * P * (size_t)e->vocab);
    if (!e->seqs || !e->items || !e->item_seq || !e->starts || !e->to_sample || !e->logits) goto fail;
    if (c->cache_bytes > 0) {
        if (kv_store_new(&e->store, c->cache_bytes, e->c.parallel) < 0) goto fail;
        for (int i = 0; i < e->c.parallel; i++) kv_store_attach(e->store, &e->seqs[i].kv);
    }
    if (uv_mutex_init(&e->qmu)) goto fail;
    if (uv_cond_init(&e->qcv)) {
        uv_mutex_destroy(&e->qmu);
        goto fail;
    }
    *out = e;
    return 0;
fail:
    engine_free_shell(e);
    return -1;
}

int engine_run_thread(engine *e)
{
    if (e->threaded) return 0;
    if (uv_thread_create(&e->th, engine_main, e)) return -1;
    e->threaded = 1;
    return 0;
}

int engine_start(engine **out, const engine_config *c)
{
    if (engine_new(out, c) < 0) return -1;
    if (engine_run_thread(*out) < 0) {
        engine_stop(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

int engine_step(engine *e, engine_step_info *info) { return engine_iterate(e, 0, info) > 0; }

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
    j->out_limit = j->p.stream ? e->c.outbox_limit : e->c.response_limit;
    j->met = e->c.metrics;
    j->model = e->m;
    j->prompt_dropped = 0;
    for (int i = 0; j->p.context_overflow == SAMPLER_CROP_SLIDE && i < j->p.n_prompts; i++)
        if (j->p.prompt_lens[i] > e->c.ctx) j->prompt_dropped += j->p.prompt_lens[i] - e->c.ctx;
    uv_mutex_lock(&e->qmu);
    int free_slots = e->c.parallel - e->n_running_seqs;
    if (!e->stop && (e->q_waiting_choices + j->n_choices <= free_slots || queue_waiting_locked(e) < e->c.queue)) {
        job_ref(j);
        j->step_submit = atomic_load(&e->steps);
        j->in_queue = 1;
        j->q_next = NULL;
        if (e->q_tail)
            e->q_tail->q_next = j;
        else
            e->q_head = j;
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
    job_cancel(j, reason);
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
    uv_mutex_lock(&e->qmu);
    e->stop = 1;
    e->cancel_all = CANCEL_SHUTDOWN;
    uv_cond_signal(&e->qcv);
    uv_mutex_unlock(&e->qmu);
    if (e->threaded)
        uv_thread_join(&e->th);
    else
        while (engine_iterate(e, 0, NULL) >= 0) {}
    uv_cond_destroy(&e->qcv);
    uv_mutex_destroy(&e->qmu);
    for (int i = 0; i < e->c.parallel; i++) {
        seq_kv_close(&e->seqs[i].kv);
        free(e->seqs[i].score);
        free(e->seqs[i].trace);
    }
    engine_free_shell(e);
}
