/* job.c -- one request's unit of work: parameters, per-choice results, and the
 * outbox the engine fills and the connection drains (see server_internal.h). */
#include "server/server_internal.h"

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
    j->choices = calloc((size_t)j->n_choices, sizeof *j->choices);
    if (!j->choices || uv_mutex_init(&j->mu) != 0) {
        free(j->choices);
        free(j);
        return NULL;
    }
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, CANCEL_NONE);
    atomic_init(&j->stat_prompt, 0);
    atomic_init(&j->stat_completion, 0);
    atomic_init(&j->stat_ttft, -1.0);
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
    snprintf(j->id, sizeof j->id, "%s-%lx%06lx", j->p.kind == JOB_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long)j->created, k & 0xFFFFFFul);
    return j;
}

void job_ref(job *j)
{
    atomic_fetch_add(&j->refs, 1);
}

void job_unref(job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
    for (int i = 0; i < j->n_choices; i++) {
        sbuf_free(&j->choices[i].text);
        json_decref(j->choices[i].logprobs);
    }
    free(j->choices);
    job_params_clear(&j->p);
    sbuf_free(&j->out);
    uv_mutex_destroy(&j->mu);
    free(j);
}

int job_out_append(job *j, const char *data, size_t n, size_t limit)
{
    int rc = 0;
    uv_mutex_lock(&j->mu);
    if (limit && j->out.len - j->out_off + n > limit) rc = -1;
    else if (sbuf_append(&j->out, data, n) < 0) rc = -1;
    uv_mutex_unlock(&j->mu);
    return rc;
}

size_t job_out_take(job *j, char *buf, size_t max, int *done)
{
    uv_mutex_lock(&j->mu);
    size_t avail = j->out.len - j->out_off;
    size_t n = avail < max ? avail : max;
    if (n) {
        memcpy(buf, j->out.data + j->out_off, n);
        j->out_off += n;
        if (j->out_off == j->out.len) {
            j->out_off = j->out.len = 0;
            if (j->out.cap > (1u << 16)) sbuf_free(&j->out);
        }
    }
    *done = (n == avail) && j->done;
    uv_mutex_unlock(&j->mu);
    return n;
}
