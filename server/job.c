/* job.c -- one request's unit of work: its parameters, the events the engine
 * emits for it (taken in order by the output stage) and how it ended.  The
 * output itself is the output stage's (output.c).  See server_internal.h for
 * which thread touches what. */
#include "server/server_internal.h"

#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_ulong job_counter;

job *job_new(server *srv, job_params *p, const char *model_id)
{
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->n_choices = p->n * p->n_prompts;
    if (uv_mutex_init(&j->mu) != 0) {
        free(j);
        return NULL;
    }
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, CANCEL_NONE);
    atomic_init(&j->stat_prompt, 0);
    atomic_init(&j->stat_completion, 0);
    atomic_init(&j->stat_cached, 0);
    atomic_init(&j->stat_ttft, -1.0);
    atomic_init(&j->stat_queue, -1.0);
    atomic_init(&j->stat_wait, -1.0);
    atomic_init(&j->stat_fwd, -1.0);
    atomic_init(&j->stat_steps, -1);
    j->p = *p;
    memset(p, 0, sizeof *p);
    for (int i = 0; i < j->p.n_prompts; i++) j->prompt_tokens += j->p.prompt_lens[i];
    atomic_store(&j->stat_prompt, j->prompt_tokens);
    j->srv = srv;
    j->model_id = model_id;
    j->created = (long)time(NULL);
    j->t_submit = srv_now();
    j->status = 200;
    unsigned long k = atomic_fetch_add(&job_counter, 1) + 1;
    snprintf(j->id, sizeof j->id, "%s-%lx%06lx", j->p.kind == JOB_CHAT ? "chatcmpl" : "cmpl", (unsigned long)j->created,
             k & 0xFFFFFFul);
    return j;
}

void job_ref(job *j) { atomic_fetch_add(&j->refs, 1); }

void job_unref(job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
    for (job_event *ev = j->ev_head, *next; ev; ev = next) {
        next = ev->next;
        job_event_free(ev);
    }
    output_free(j);
    if (j->out_held) output_account(j, -(ptrdiff_t)j->out_held); /* what was never sent */
    job_params_clear(&j->p);
    sbuf_free(&j->out);
    uv_mutex_destroy(&j->mu);
    free(j);
}

void job_cancel(job *j, int reason)
{
    int none = CANCEL_NONE;
    atomic_compare_exchange_strong(&j->cancel, &none, reason);
}

/* ---- events ------------------------------------------------------------------------ */

#define EXTRA_ALIGN alignof(max_align_t)

static size_t extra_offset(size_t text_len)
{
    size_t off = sizeof(job_event) + text_len + 1;
    return (off + EXTRA_ALIGN - 1) / EXTRA_ALIGN * EXTRA_ALIGN;
}

job_event *job_event_new(int type, int choice, const char *text, size_t n, size_t extra)
{
    size_t off = extra_offset(n);
    if (extra > SIZE_MAX - off) return NULL;
    job_event *ev = malloc(off + extra);
    if (!ev) return NULL;
    memset(ev, 0, sizeof *ev);
    ev->type = type;
    ev->choice = choice;
    ev->tok.n_top = 0;
    if (n) memcpy(ev->text, text, n);
    ev->text[n] = '\0';
    ev->text_len = n;
    return ev;
}

void *job_event_extra(job_event *ev) { return (char *)ev + extra_offset(ev->text_len); }

void job_event_free(job_event *ev)
{
    if (!ev) return;
    free(ev->trace);
    free(ev);
}

void job_emit(job *j, job_event *ev)
{
    ev->next = NULL;
    uv_mutex_lock(&j->mu);
    if (j->ev_tail)
        j->ev_tail->next = ev;
    else
        j->ev_head = ev;
    j->ev_tail = ev;
    uv_mutex_unlock(&j->mu);
}

void job_set_end(job *j, const job_end *end)
{
    uv_mutex_lock(&j->mu);
    j->end = *end;
    j->ended = 1;
    uv_mutex_unlock(&j->mu);
}

job_event *job_take_events(job *j, int *ended, job_end *end)
{
    uv_mutex_lock(&j->mu);
    job_event *list = j->ev_head;
    j->ev_head = j->ev_tail = NULL;
    *ended = j->ended;
    if (j->ended) *end = j->end;
    uv_mutex_unlock(&j->mu);
    return list;
}

/* ---- the connection's side --------------------------------------------------------- */

size_t job_out_take(job *j, char *buf, size_t max, int *done)
{
    output_drain(j);
    size_t avail = j->out.len - j->out_off;
    size_t n = avail < max ? avail : max;
    if (n) {
        memcpy(buf, j->out.data + j->out_off, n);
        j->out_off += n;
        output_account(j, -(ptrdiff_t)n);
        if (j->out_off == j->out.len) {
            j->out_off = j->out.len = 0;
            if (j->out.cap > (1u << 16)) sbuf_free(&j->out);
        }
    }
    *done = (n == avail) && j->done;
    return n;
}
