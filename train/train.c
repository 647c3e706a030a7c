/* train.c -- the training loop: batches, threads, schedule, evaluation,
 * progress, checkpoints; and a small sampler over the trainer's forward pass. */
#include "train/train_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void train_opts_default(train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->shape.dim = 128;
    o->shape.n_layers = 4;
    o->shape.n_heads = 4;
    o->shape.n_kv_heads = 4;
    o->shape.hidden_dim = 344; /* 8/3 dim rounded up to a multiple of 8 (the CLI re-derives it) */
    o->shape.ctx_len = 128;
    o->shape.vocab_size = TRAIN_VOCAB;
    o->shape.tied = 1;
    o->shape.rope_theta = 10000.0f;
    o->shape.norm_eps = 1e-5f;
    o->steps = 1000;
    o->batch = 16;
    o->lr = 1e-3f;
    o->min_lr = 1e-4f;
    o->warmup = 100;
    o->weight_decay = 0.1f;
    o->clip = 1.0f;
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->adam_eps = 1e-8f;
    o->seed = 1337;
    o->n_threads = 0;
    o->val_frac = 0.05f;
    o->eval_every = 200;
    o->eval_tokens = 32768;
    o->save_every = 0;
    o->progress = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- Workers ------------------------------------------------------------------------ */

typedef struct {
    const train_net *net;
    train_act *act;
    float *gbuf; /* n_params: this worker's gradient sum */
    train_params gview;
    train_layer *glayers;
    const int32_t *tokens, *targets; /* (n_seq, T) */
    int first, count, T;
    float scale;
    int backward;
    double loss;
} worker;

static void *worker_run(void *arg)
{
    worker *wk = arg;
    wk->loss = 0.0;
    if (wk->backward) memset(wk->gbuf, 0, sizeof(float) * wk->net->n_params);
    for (int i = wk->first; i < wk->first + wk->count; i++) {
        const int32_t *tok = wk->tokens + (size_t)i * wk->T, *tgt = wk->targets + (size_t)i * wk->T;
        wk->loss +=
            train_net_pass(wk->net, wk->act, tok, tgt, wk->T, wk->backward ? &wk->gview : NULL, wk->scale, NULL);
    }
    return NULL;
}

/* Run n_seq sequences over the workers (contiguous fixed ranges); the caller's
 * thread runs worker 0.  Returns the summed loss, added in worker order. */
static double run_workers(worker *wk, int n_workers, int n_seq, int backward, float scale, const int32_t *tokens,
                          const int32_t *targets)
{
    pthread_t th[64];
    int started[64] = { 0 };
    for (int j = 0; j < n_workers; j++) {
        wk[j].first = (int)((long)n_seq * j / n_workers);
        wk[j].count = (int)((long)n_seq * (j + 1) / n_workers) - wk[j].first;
        wk[j].backward = backward;
        wk[j].scale = scale;
        wk[j].tokens = tokens;
        wk[j].targets = targets;
    }
    for (int j = 1; j < n_workers; j++) started[j] = !pthread_create(&th[j], NULL, worker_run, &wk[j]);
    worker_run(&wk[0]);
    for (int j = 1; j < n_workers; j++) {
        if (started[j])
            pthread_join(th[j], NULL);
        else
            worker_run(&wk[j]); /* could not start a thread: same work, same result */
    }
    double loss = 0.0;
    for (int j = 0; j < n_workers; j++) loss += wk[j].loss;
    return loss;
}

/* ---- Evaluation ---------------------------------------------------------------------- */

/* Mean loss (nats per byte) over fixed, evenly spaced windows of buf. */
static double evaluate(worker *wk, int n_workers, const unsigned char *buf, size_t n, int T, int eval_tokens,
                       int32_t *tok, int32_t *tgt, int cap_seq)
{
    if (n < (size_t)T) return NAN;
    int nw = eval_tokens / T;
    if (nw < 1) nw = 1;
    size_t span = n - T;
    double total = 0.0;
    long count = 0;
    for (int w0 = 0; w0 < nw; w0 += cap_seq) {
        int m = nw - w0 < cap_seq ? nw - w0 : cap_seq;
        for (int i = 0; i < m; i++) {
            size_t off = nw > 1 ? (size_t)((double)span * (w0 + i) / (nw - 1)) : 0;
            train_data_window(buf, n, off, T, tok + (size_t)i * T, tgt + (size_t)i * T);
        }
        total += run_workers(wk, n_workers < m ? n_workers : m, m, 0, 0.0f, tok, tgt);
        count += (long)m * T;
    }
    return total / count;
}

/* ---- Progress -------------------------------------------------------------------------- */

static void fmt_hms(char *out, size_t cap, double s)
{
    if (!(s >= 0) || s > 1e7) {
        snprintf(out, cap, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, cap, "%02ld:%02ld", t / 60, t % 60);
}

typedef struct {
    FILE *f;
    int tty;
    double last;
    int line_open;
} progress;

static void progress_step(progress *p, long step, long steps, double loss, float lr, double tok_s, double eta,
                          int force)
{
    if (!p->f) return;
    double t = now_s();
    if (!force && t - p->last < (p->tty ? 0.25 : 15.0)) return;
    p->last = t;
    char e[32];
    fmt_hms(e, sizeof e, eta);
    int width = 24, fill = steps > 0 ? (int)(width * step / steps) : width;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    if (p->tty) {
        fprintf(p->f, "\r[%s] %ld/%ld loss %.3f (%.3f bpb) lr %.2e %.0f tok/s ETA %s\033[K", bar, step, steps, loss,
                loss / M_LN2, lr, tok_s, e);
        p->line_open = 1;
    } else {
        fprintf(p->f, "step %ld/%ld loss %.3f (%.3f bpb) lr %.2e %.0f tok/s ETA %s\n", step, steps, loss, loss / M_LN2,
                lr, tok_s, e);
    }
    fflush(p->f);
}

static void progress_line(progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress_line(progress *p, const char *fmt, ...)
{
    if (!p->f) return;
    if (p->line_open) {
        fputs("\r\033[K", p->f);
        p->line_open = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(p->f, fmt, ap);
    va_end(ap);
    fflush(p->f);
}

/* ---- The loop ---------------------------------------------------------------------------- */

/* Everything one train_run holds. */
typedef struct {
    const train_opts *o;
    train_net *n;
    train_data data;
    worker wk[64];
    int n_workers, T, cap_seq;
    int32_t *tok, *tgt; /* (cap_seq, T) windows and their targets */
    progress pg;
    long stop;               /* the step this run ends at */
    double t_start, t_train; /* run start; seconds spent in steps */
    double loss_acc, last_train, last_val;
    long tokens_done, loss_n, steps_run;
} run;

static int check_opts(const train_opts *o, char *err, size_t errlen)
{
    if (o->steps < 0 || o->batch < 1 || o->batch > 4096 || !(o->lr > 0) || o->min_lr < 0 || o->warmup < 0 ||
        o->weight_decay < 0 || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
        !(o->adam_eps > 0) || o->eval_tokens < 1) {
        snprintf(err, errlen, "invalid training options");
        return TRAIN_EINVAL;
    }
    return 0;
}

/* The model: from the checkpoint to resume, or new from the shape and seed. */
static int open_net(const train_opts *o, train_net **n, char *err, size_t errlen)
{
    int rc;
    if (o->resume_path) {
        if ((rc = train_net_load(n, o->resume_path, err, errlen))) return rc;
        if ((*n)->step == 0) (*n)->rng = o->seed;
        return 0;
    }
    if ((rc = train_shape_check(&o->shape, err, errlen))) return rc;
    if ((rc = train_net_new(n, &o->shape, o->seed))) snprintf(err, errlen, "cannot allocate the model");
    return rc;
}

/* The data split, the workers (each with its activations and gradient buffer) and
 * the window buffers. */
static int run_setup(run *r, const unsigned char *text, size_t len, char *err, size_t errlen)
{
    const train_opts *o = r->o;
    train_net *n = r->n;
    if (n->step > o->steps) {
        snprintf(err, errlen, "the checkpoint is at step %ld, beyond --steps %d", n->step, o->steps);
        return TRAIN_EINVAL;
    }
    r->T = n->shape.ctx_len;
    int rc = train_data_split(&r->data, text, len, o->val_frac);
    if (rc) {
        snprintf(err, errlen, "cannot split the data");
        return rc;
    }
    if (r->data.n_train < (size_t)r->T + 1) {
        snprintf(err, errlen, "the training text (%zu bytes after the split) is shorter than ctx + 1 = %d",
                 r->data.n_train, r->T + 1);
        return TRAIN_EINVAL;
    }
    int nthr = o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nthr < 1) nthr = 1;
    if (nthr > 64) nthr = 64;
    if (nthr > o->batch) nthr = o->batch;
    r->n_workers = nthr;
    for (int j = 0; j < r->n_workers; j++) {
        worker *w = &r->wk[j];
        w->net = n;
        w->T = r->T;
        w->act = train_act_new(&n->shape, r->T);
        w->gbuf = calloc(n->n_params, sizeof(float));
        w->glayers = calloc(n->shape.n_layers, sizeof(train_layer));
        if (!w->act || !w->gbuf || !w->glayers) {
            snprintf(err, errlen, "out of memory");
            return TRAIN_ENOMEM;
        }
        train_params_view(&n->shape, w->gbuf, &w->gview, w->glayers);
    }
    r->cap_seq = o->batch > r->n_workers * 8 ? o->batch : r->n_workers * 8;
    r->tok = malloc(sizeof(int32_t) * (size_t)r->cap_seq * r->T);
    r->tgt = malloc(sizeof(int32_t) * (size_t)r->cap_seq * r->T);
    if (!r->tok || !r->tgt) {
        snprintf(err, errlen, "out of memory");
        return TRAIN_ENOMEM;
    }
    r->stop = o->stop_at > 0 && o->stop_at < o->steps ? o->stop_at : o->steps;
    return 0;
}

/* One optimizer step at learning rate lr: a batch of random windows through the
 * workers, their gradients summed in worker order, clipped, then AdamW.  Returns
 * the batch's mean loss (nats per token). */
static double train_step(run *r, float lr)
{
    const train_opts *o = r->o;
    train_net *n = r->n;
    int T = r->T;
    const size_t span = r->data.n_train - T; /* windows start in [0, span] */
    for (int b = 0; b < o->batch; b++) {
        size_t off = (size_t)(train_rng_next(&n->rng) % (uint64_t)(span + 1));
        train_data_window(r->data.train, r->data.n_train, off, T, r->tok + (size_t)b * T, r->tgt + (size_t)b * T);
    }
    const float scale = 1.0f / ((float)o->batch * T);
    double loss = run_workers(r->wk, r->n_workers, o->batch, 1, scale, r->tok, r->tgt) / ((double)o->batch * T);
    memcpy(n->g, r->wk[0].gbuf, sizeof(float) * n->n_params);
    for (int j = 1; j < r->n_workers; j++)
        for (size_t i = 0; i < n->n_params; i++) n->g[i] += r->wk[j].gbuf[i];
    double gn = train_grad_norm(n);
    if (o->clip > 0 && gn > o->clip) {
        float c = (float)(o->clip / gn);
        for (size_t i = 0; i < n->n_params; i++) n->g[i] *= c;
    }
    n->step++;
    adamw_update(n, lr, o->beta1, o->beta2, o->adam_eps, o->weight_decay, n->step);
    return loss;
}

/* After a step: progress, evaluation every eval_every steps and at the end, the
 * checkpoint every save_every steps and at the end. */
static int after_step(run *r, double loss, float lr, char *err, size_t errlen)
{
    const train_opts *o = r->o;
    train_net *n = r->n;
    r->loss_acc += loss;
    r->loss_n++;
    double tps = r->tokens_done / (r->t_train > 0 ? r->t_train : 1e-9);
    double eta = (double)(r->stop - n->step) * (r->t_train / r->steps_run);
    int at_end = n->step == r->stop;
    int do_eval = at_end || (o->eval_every > 0 && n->step % o->eval_every == 0);
    progress_step(&r->pg, n->step, o->steps, loss, lr, tps, eta, do_eval);
    if (do_eval) {
        r->last_train = r->loss_acc / r->loss_n;
        r->loss_acc = 0.0;
        r->loss_n = 0;
        if (r->data.n_val >= (size_t)r->T) {
            r->last_val = evaluate(r->wk, r->n_workers, r->data.val, r->data.n_val, r->T, o->eval_tokens, r->tok,
                                   r->tgt, r->cap_seq);
            progress_line(&r->pg, "eval step %ld: train %.4f bpb, val %.4f bpb (%.4f nats), %.0f s\n", n->step,
                          r->last_train / M_LN2, r->last_val / M_LN2, r->last_val, now_s() - r->t_start);
        } else {
            progress_line(&r->pg, "eval step %ld: train %.4f bpb (no held-out text)\n", n->step, r->last_train / M_LN2);
        }
    }
    if (o->ckpt_path && (at_end || (o->save_every > 0 && n->step % o->save_every == 0)))
        return train_net_save(n, o->ckpt_path, 0, 1, err, errlen);
    return 0;
}

static void run_free(run *r)
{
    for (int j = 0; j < r->n_workers; j++) {
        train_act_free(r->wk[j].act);
        free(r->wk[j].gbuf);
        free(r->wk[j].glayers);
    }
    free(r->tok);
    free(r->tgt);
    train_data_free(&r->data);
    train_net_free(r->n);
}

int train_run(const train_opts *o, const unsigned char *text, size_t len, train_result *res, char *err, size_t errlen)
{
    int rc = check_opts(o, err, errlen);
    if (rc) return rc;
    run r = { .o = o, .last_train = NAN, .last_val = NAN };
    r.pg = (progress){ o->progress ? o->log : NULL, o->log ? isatty(fileno(o->log)) : 0, 0.0, 0 };
    if ((rc = open_net(o, &r.n, err, errlen))) return rc;
    if ((rc = run_setup(&r, text, len, err, errlen))) goto done;
    train_net *n = r.n;
    progress_line(&r.pg,
                  "train: %zu parameters (%d layers, dim %d, heads %d/%d, hidden %d, ctx %d, %s), "
                  "%zu train / %zu val bytes, batch %d x %d tokens, %d threads, step %ld -> %ld of %d\n",
                  n->n_params, n->shape.n_layers, n->shape.dim, n->shape.n_heads, n->shape.n_kv_heads,
                  n->shape.hidden_dim, r.T, n->shape.tied ? "tied" : "untied", r.data.n_train, r.data.n_val, o->batch,
                  r.T, r.n_workers, n->step, r.stop, o->steps);
    r.t_start = now_s();
    while (n->step < r.stop) {
        double t0 = now_s();
        float lr = train_lr_at(n->step, o->steps, o->warmup, o->lr, o->min_lr);
        double loss = train_step(&r, lr);
        if (!isfinite(loss)) {
            progress_line(&r.pg, "\ntrain: loss is not finite at step %ld; stopping\n", n->step);
            snprintf(err, errlen, "training diverged (loss not finite) at step %ld", n->step);
            rc = TRAIN_EINVAL;
            goto done;
        }
        r.t_train += now_s() - t0;
        r.tokens_done += (long)o->batch * r.T;
        r.steps_run++;
        if ((rc = after_step(&r, loss, lr, err, errlen))) goto done;
    }
    if (r.steps_run == 0 && r.data.n_val >= (size_t)r.T) /* nothing to do: still report where we are */
        r.last_val =
            evaluate(r.wk, r.n_workers, r.data.val, r.data.n_val, r.T, o->eval_tokens, r.tok, r.tgt, r.cap_seq);
    if (o->out_path && (rc = train_net_save(n, o->out_path, o->f16, 0, err, errlen))) goto done;
    if (res) {
        res->steps_done = (int)n->step;
        res->steps_run = (int)r.steps_run;
        res->train_bpb = r.last_train / M_LN2;
        res->val_bpb = r.last_val / M_LN2;
        res->seconds = now_s() - r.t_start;
        res->tok_per_s = r.t_train > 0 ? r.tokens_done / r.t_train : 0.0;
    }
done:
    run_free(&r);
    return rc;
}

/* ---- Sampling ------------------------------------------------------------------------------ */

int train_generate(const train_net *n, const char *prompt, int n_new, float temperature, uint64_t seed, char *out,
                   size_t cap)
{
    const int T = n->shape.ctx_len, V = n->shape.vocab_size;
    if (!cap || n_new < 0) return TRAIN_EINVAL;
    size_t plen = strlen(prompt);
    int total = 1 + (int)plen + n_new;
    int32_t *ids = malloc(sizeof(int32_t) * total);
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    train_act *a = train_act_new(&n->shape, T);
    if (!ids || !logits || !a) {
        free(ids);
        free(logits);
        train_act_free(a);
        return TRAIN_ENOMEM;
    }
    int len = 0;
    ids[len++] = TRAIN_BOS;
    for (size_t i = 0; i < plen; i++) ids[len++] = TRAIN_BYTE0 + (unsigned char)prompt[i];
    uint64_t rng = seed;
    size_t w = 0;
    for (int k = 0; k < n_new; k++) {
        /* the window: BOS + the last T-1 tokens (as in training) */
        int32_t win[8192];
        int m = len <= T ? len : T;
        if (len <= T)
            memcpy(win, ids, sizeof(int32_t) * len);
        else {
            win[0] = TRAIN_BOS;
            memcpy(win + 1, ids + len - (T - 1), sizeof(int32_t) * (T - 1));
        }
        train_net_pass(n, a, win, NULL, m, NULL, 0.0f, logits);
        const float *l = logits + (size_t)(m - 1) * V;
        int best = TRAIN_BYTE0;
        if (temperature <= 0.0f) {
            for (int i = TRAIN_BYTE0; i < V; i++)
                if (l[i] > l[best]) best = i;
        } else {
            double mx = l[TRAIN_BYTE0], sum = 0.0;
            for (int i = TRAIN_BYTE0; i < V; i++)
                if (l[i] > mx) mx = l[i];
            for (int i = TRAIN_BYTE0; i < V; i++) sum += exp((l[i] - mx) / temperature);
            double r = ((train_rng_next(&rng) >> 11) * (1.0 / 9007199254740992.0)) * sum, c = 0.0;
            best = V - 1;
            for (int i = TRAIN_BYTE0; i < V; i++) {
                c += exp((l[i] - mx) / temperature);
                if (c > r) {
                    best = i;
                    break;
                }
            }
        }
        ids[len++] = best;
        if (w + 1 < cap) out[w++] = (char)(best - TRAIN_BYTE0);
    }
    out[w] = 0;
    free(ids);
    free(logits);
    train_act_free(a);
    return (int)w;
}
