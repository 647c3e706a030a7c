/* metrics.c -- Prometheus counters and histograms, updated from both threads
 * under one mutex and rendered as text for GET /metrics. */
#include "server/server_internal.h"

#include <string.h>

/* Upper bounds (seconds) shared by both histograms. */
static const double buckets[METRICS_NBUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

int metrics_init(metrics *m)
{
    memset(m, 0, sizeof *m);
    atomic_init(&m->response_bytes, 0);
    return uv_mutex_init(&m->mu) ? -1 : 0;
}

void metrics_response_bytes(metrics *m, ptrdiff_t delta) { atomic_fetch_add(&m->response_bytes, (long long)delta); }

void metrics_destroy(metrics *m)
{
    if (m) uv_mutex_destroy(&m->mu);
}

void metrics_request(metrics *m, int status, int prompt_tokens, int completion_tokens)
{
    uv_mutex_lock(&m->mu);
    if (status >= 100 && status < 600) m->by_status[status]++;
    m->prompt_tokens += (uint64_t)(prompt_tokens > 0 ? prompt_tokens : 0);
    m->completion_tokens += (uint64_t)(completion_tokens > 0 ? completion_tokens : 0);
    uv_mutex_unlock(&m->mu);
}

static void observe(uint64_t *b, uint64_t *count, double *sum, double v)
{
    int i = 0;
    while (i < METRICS_NBUCKETS && v > buckets[i]) i++;
    b[i]++;
    (*count)++;
    *sum += v;
}

void metrics_ttft(metrics *m, double seconds)
{
    uv_mutex_lock(&m->mu);
    observe(m->ttft_buckets, &m->ttft_count, &m->ttft_sum, seconds);
    uv_mutex_unlock(&m->mu);
}

void metrics_token_latency(metrics *m, double seconds)
{
    uv_mutex_lock(&m->mu);
    observe(m->tok_buckets, &m->tok_count, &m->tok_sum, seconds);
    uv_mutex_unlock(&m->mu);
}

void metrics_prefix(metrics *m, int computed, int reused, size_t budget, size_t bytes, int entries, uint64_t evictions)
{
    uv_mutex_lock(&m->mu);
    m->prompt_computed += (uint64_t)(computed > 0 ? computed : 0);
    m->prompt_reused += (uint64_t)(reused > 0 ? reused : 0);
    m->cache_budget = budget;
    m->cache_bytes = bytes;
    m->cache_entries = entries;
    m->cache_evictions = evictions;
    uv_mutex_unlock(&m->mu);
}

void metrics_step(metrics *m, int rows, double seconds)
{
    uv_mutex_lock(&m->mu);
    m->steps++;
    m->rows += (uint64_t)rows;
    m->forward_seconds += seconds;
    uv_mutex_unlock(&m->mu);
}

void metrics_context(metrics *m, int recomputed)
{
    uv_mutex_lock(&m->mu);
    m->window_moves++;
    m->recomputed += (uint64_t)(recomputed > 0 ? recomputed : 0);
    uv_mutex_unlock(&m->mu);
}

static int histogram(sbuf *b, const char *name, const char *help, const uint64_t *bk, uint64_t count, double sum)
{
    int bad = 0;
    bad |= sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < METRICS_NBUCKETS; i++) {
        cum += bk[i];
        bad |= sbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, buckets[i], (unsigned long long)cum);
    }
    bad |= sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)count);
    bad |= sbuf_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, sum, name, (unsigned long long)count);
    return bad;
}

int metrics_render(metrics *m, sbuf *b, int queued, int running_requests, int running_seqs, int slots)
{
    int bad = 0; /* an append that failed for want of memory: no partial page is served */
    uv_mutex_lock(&m->mu);
    bad |= sbuf_printf(b, "# HELP lmserve_requests_total HTTP requests answered, by status code.\n"
                          "# TYPE lmserve_requests_total counter\n");
    for (int s = 100; s < 600; s++)
        if (m->by_status[s])
            bad |=
                sbuf_printf(b, "lmserve_requests_total{status=\"%d\"} %llu\n", s, (unsigned long long)m->by_status[s]);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_prompt_tokens_total Prompt tokens processed.\n"
                       "# TYPE lmserve_prompt_tokens_total counter\nlmserve_prompt_tokens_total %llu\n",
                       (unsigned long long)m->prompt_tokens);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_completion_tokens_total Tokens generated.\n"
                       "# TYPE lmserve_completion_tokens_total counter\nlmserve_completion_tokens_total %llu\n",
                       (unsigned long long)m->completion_tokens);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_queue_length Requests waiting for a slot.\n"
                       "# TYPE lmserve_queue_length gauge\nlmserve_queue_length %d\n",
                       queued);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_requests_running Requests with at least one sequence in the engine.\n"
                       "# TYPE lmserve_requests_running gauge\nlmserve_requests_running %d\n",
                       running_requests);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_sequences_running Sequences being decoded.\n"
                       "# TYPE lmserve_sequences_running gauge\nlmserve_sequences_running %d\n",
                       running_seqs);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_slots Sequences the engine decodes together (--parallel).\n"
                       "# TYPE lmserve_slots gauge\nlmserve_slots %d\n",
                       slots);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_engine_steps_total Batched forward calls.\n"
                       "# TYPE lmserve_engine_steps_total counter\nlmserve_engine_steps_total %llu\n",
                       (unsigned long long)m->steps);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_engine_rows_total Token rows fed to the model (prompt and generated).\n"
                       "# TYPE lmserve_engine_rows_total counter\nlmserve_engine_rows_total %llu\n",
                       (unsigned long long)m->rows);
    bad |=
        sbuf_printf(b,
                    "# HELP lmserve_engine_forward_seconds_total Time spent in model_forward.\n"
                    "# TYPE lmserve_engine_forward_seconds_total counter\nlmserve_engine_forward_seconds_total %.6f\n",
                    m->forward_seconds);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_context_window_moves_total Times a sequence's window moved past the context "
                       "(slide: every token past it; shift: every time the window filled).\n"
                       "# TYPE lmserve_context_window_moves_total counter\nlmserve_context_window_moves_total %llu\n",
                       (unsigned long long)m->window_moves);
    bad |= sbuf_printf(
        b,
        "# HELP lmserve_context_recomputed_tokens_total Tokens fed to the model again because their "
        "window moved.\n"
        "# TYPE lmserve_context_recomputed_tokens_total counter\nlmserve_context_recomputed_tokens_total %llu\n",
        (unsigned long long)m->recomputed);
    bad |= sbuf_printf(b,
                       "# HELP lmserve_response_bytes Bytes held by answers: non-streamed answers being built "
                       "or sent, and streamed output a client has not read yet.\n"
                       "# TYPE lmserve_response_bytes gauge\nlmserve_response_bytes %lld\n",
                       atomic_load(&m->response_bytes));
    bad |= histogram(b, "lmserve_time_to_first_token_seconds", "Time from request to first generated token.",
                     m->ttft_buckets, m->ttft_count, m->ttft_sum);
    bad |=
        histogram(b, "lmserve_time_per_output_token_seconds",
                  "Time between consecutive generated tokens of a sequence.", m->tok_buckets, m->tok_count, m->tok_sum);
    sbuf_printf(b,
                "# HELP lmserve_prompt_tokens_computed_total Prompt positions fed to the model (each "
                "choice's, until it samples its first token).\n"
                "# TYPE lmserve_prompt_tokens_computed_total counter\nlmserve_prompt_tokens_computed_total %llu\n",
                (unsigned long long)m->prompt_computed);
    sbuf_printf(b,
                "# HELP lmserve_prompt_tokens_reused_total Prompt positions taken from the prefix cache "
                "instead of computed.\n"
                "# TYPE lmserve_prompt_tokens_reused_total counter\nlmserve_prompt_tokens_reused_total %llu\n",
                (unsigned long long)m->prompt_reused);
    sbuf_printf(b,
                "# HELP lmserve_prefix_cache_budget_bytes The prefix cache's budget (--cache-mb; 0: off).\n"
                "# TYPE lmserve_prefix_cache_budget_bytes gauge\nlmserve_prefix_cache_budget_bytes %zu\n",
                m->cache_budget);
    sbuf_printf(b,
                "# HELP lmserve_prefix_cache_bytes Bytes of KV entries the prefix cache retains "
                "(running sequences not included).\n"
                "# TYPE lmserve_prefix_cache_bytes gauge\nlmserve_prefix_cache_bytes %zu\n",
                m->cache_bytes);
    sbuf_printf(b,
                "# HELP lmserve_prefix_cache_entries Finished sequences the prefix cache retains.\n"
                "# TYPE lmserve_prefix_cache_entries gauge\nlmserve_prefix_cache_entries %d\n",
                m->cache_entries);
    sbuf_printf(b,
                "# HELP lmserve_prefix_cache_evictions_total Retained sequences freed to stay within the "
                "budget.\n"
                "# TYPE lmserve_prefix_cache_evictions_total counter\nlmserve_prefix_cache_evictions_total %llu\n",
                (unsigned long long)m->cache_evictions);
    uv_mutex_unlock(&m->mu);
    return bad ? -1 : 0;
}
