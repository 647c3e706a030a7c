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

/* One counter or gauge: its HELP and TYPE lines, then its value. */
static int metric_int(sbuf *b, const char *name, const char *type, const char *help, long long v)
{
    return sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", name, help, name, type, name, v);
}

static int metric_float(sbuf *b, const char *name, const char *type, const char *help, double v)
{
    return sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.6f\n", name, help, name, type, name, v);
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
    bad |= metric_int(b, "lmserve_prompt_tokens_total", "counter", "Prompt tokens processed.",
                      (long long)m->prompt_tokens);
    bad |= metric_int(b, "lmserve_completion_tokens_total", "counter", "Tokens generated.",
                      (long long)m->completion_tokens);
    bad |= metric_int(b, "lmserve_queue_length", "gauge", "Requests waiting for a slot.", queued);
    bad |= metric_int(b, "lmserve_requests_running", "gauge", "Requests with at least one sequence in the engine.",
                      running_requests);
    bad |= metric_int(b, "lmserve_sequences_running", "gauge", "Sequences being decoded.", running_seqs);
    bad |= metric_int(b, "lmserve_slots", "gauge", "Sequences the engine decodes together (--parallel).", slots);
    bad |= metric_int(b, "lmserve_engine_steps_total", "counter", "Batched forward calls.", (long long)m->steps);
    bad |= metric_int(b, "lmserve_engine_rows_total", "counter", "Token rows fed to the model (prompt and generated).",
                      (long long)m->rows);
    bad |= metric_float(b, "lmserve_engine_forward_seconds_total", "counter", "Time spent in model_forward.",
                        m->forward_seconds);
    bad |= metric_int(b, "lmserve_context_window_moves_total", "counter",
                      "Times a sequence's window moved past the context (slide: every token past it; shift: every time "
                      "the window filled).",
                      (long long)m->window_moves);
    bad |= metric_int(b, "lmserve_context_recomputed_tokens_total", "counter",
                      "Tokens fed to the model again because their window moved.", (long long)m->recomputed);
    bad |= metric_int(b, "lmserve_response_bytes", "gauge",
                      "Bytes held by answers: non-streamed answers being built or sent, and streamed output a client "
                      "has not read yet.",
                      (long long)atomic_load(&m->response_bytes));
    bad |= histogram(b, "lmserve_time_to_first_token_seconds", "Time from request to first generated token.",
                     m->ttft_buckets, m->ttft_count, m->ttft_sum);
    bad |=
        histogram(b, "lmserve_time_per_output_token_seconds",
                  "Time between consecutive generated tokens of a sequence.", m->tok_buckets, m->tok_count, m->tok_sum);
    bad |= metric_int(b, "lmserve_prompt_tokens_computed_total", "counter",
                      "Prompt positions fed to the model (each choice's, until it samples its first token).",
                      (long long)m->prompt_computed);
    bad |= metric_int(b, "lmserve_prompt_tokens_reused_total", "counter",
                      "Prompt positions taken from the prefix cache instead of computed.", (long long)m->prompt_reused);
    bad |= metric_int(b, "lmserve_prefix_cache_budget_bytes", "gauge",
                      "The prefix cache's budget (--cache-mb; 0: off).", (long long)m->cache_budget);
    bad |= metric_int(b, "lmserve_prefix_cache_bytes", "gauge",
                      "Bytes of KV entries the prefix cache retains (running sequences not included).",
                      (long long)m->cache_bytes);
    bad |= metric_int(b, "lmserve_prefix_cache_entries", "gauge", "Finished sequences the prefix cache retains.",
                      m->cache_entries);
    bad |= metric_int(b, "lmserve_prefix_cache_evictions_total", "counter",
                      "Retained sequences freed to stay within the budget.", (long long)m->cache_evictions);
    uv_mutex_unlock(&m->mu);
    return bad ? -1 : 0;
}
