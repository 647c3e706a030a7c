/* trace.c -- the recorder behind sampler_step_traced (sampler.h: "Trace of a step").
 *
 * sampler__choose hands the recorder each stage's output row as soon as the stage
 * has written it; the recorder copies it (the next stage overwrites the scratch row
 * in place).  After the draw, record_finish reduces the copies to the candidates
 * (the top N of each row, in stage order, then the drawn token) and looks each
 * candidate up in every row: rows before the first filter are indexed by id, rows
 * after it hold the survivors only, in increasing id order (choose.c's compaction
 * keeps order), so a candidate absent from such a row was dropped (-INFINITY).
 * Nothing here warps or draws: the values are the step's own.
 */
#include "sampler/sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const stage_names[SAMPLER_STAGE_COUNT] = {
    "logits", "constraint", "logit_bias", "repetition_penalty", "presence_frequency", "temperature", "top_k",
    "top_p",  "min_p",      "softmax",
};

const char *sampler_stage_name(int stage)
{
    return stage >= 0 && stage < SAMPLER_STAGE_COUNT ? stage_names[stage] : NULL;
}

enum { N_ID_BUFS = 4 }; /* rows that can carry ids: top-k, top-p, min-p, softmax */

int sampler__recorder_init(sampler_recorder *r, int vocab, int n)
{
    *r = (sampler_recorder){ 0 };
    size_t v = (size_t)vocab;
    /* One block: the float rows, then the id buffers (both 4-byte types). */
    float *block = malloc(v * (SAMPLER_STAGE_COUNT * sizeof(float) + N_ID_BUFS * sizeof(int32_t)));
    if (!block) return SAMPLER_ENOMEM;
    r->block = block;
    for (int s = 0; s < SAMPLER_STAGE_COUNT; s++) r->row[s] = block + (size_t)s * v;
    int32_t *ids = (int32_t *)(block + (size_t)SAMPLER_STAGE_COUNT * v);
    for (int k = 0; k < N_ID_BUFS; k++) r->id_buf[k] = ids + (size_t)k * v;
    r->vocab = vocab;
    r->n = n;
    return SAMPLER_OK;
}

void sampler__recorder_release(sampler_recorder *r)
{
    if (!r) return;
    free(r->block);
    *r = (sampler_recorder){ 0 };
}

void sampler__record_begin(sampler_recorder *r)
{
    memset(r->len, 0, sizeof r->len);
    memset(r->row_id, 0, sizeof r->row_id);
    r->n_id_bufs = 0;
    r->greedy = 0;
    r->coin = NAN;
}

/* Keep the ids of a compacted row (the scratch id list is rewritten in place by
 * the next filter). */
static int32_t *keep_ids(sampler_recorder *r, const int32_t *id, int n)
{
    if (!id) return NULL;
    int32_t *dst = r->id_buf[r->n_id_bufs++]; /* at most N_ID_BUFS stages pass ids */
    memcpy(dst, id, (size_t)n * sizeof *dst);
    return dst;
}

void sampler__record(sampler_recorder *r, int stage, const float *x, int n, const int32_t *id)
{
    memcpy(r->row[stage], x, (size_t)n * sizeof *x);
    r->row_id[stage] = keep_ids(r, id, n);
    r->len[stage] = n;
}

void sampler__record_softmax(sampler_recorder *r, const float *e, double scale, int n, const int32_t *id)
{
    float *row = r->row[SAMPLER_STAGE_SOFTMAX];
    for (int i = 0; i < n; i++) row[i] = sampler__prob(e[i], scale);
    r->row_id[SAMPLER_STAGE_SOFTMAX] = keep_ids(r, id, n);
    r->len[SAMPLER_STAGE_SOFTMAX] = n;
}

/* ---- reduction ------------------------------------------------------------------ */

static int is_dropped(float x) { return x == -INFINITY || isnan(x); }

/* Value of token t in a row: direct, or by binary search in its increasing ids. */
static float lookup(const float *row, const int32_t *id, int n, int32_t t)
{
    if (!id) return t < n ? row[t] : -INFINITY;
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (id[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && id[lo] == t ? row[lo] : -INFINITY;
}

/* The top n ids of a row (by value, equal values by increasing id; dropped entries
 * -- probability 0 after softmax -- never rank) into best[], returns how many. */
static int top_ids(const float *row, const int32_t *id, int len, int n, int probs, int32_t *best)
{
    uint32_t bkey[SAMPLER_TRACE_MAX];
    int nb = 0;
    for (int i = 0; i < len; i++) {
        if (probs ? !(row[i] > 0.0f) : is_dropped(row[i])) continue;
        /* entries come in increasing id order: the earlier id wins ties */
        nb = sampler__top_offer(bkey, best, nb, n, sampler__key(row[i]), id ? id[i] : i);
    }
    return nb;
}

static void add_candidate(sampler_trace *out, int32_t t)
{
    for (int c = 0; c < out->n_candidates; c++)
        if (out->candidate[c] == t) return;
    out->candidate[out->n_candidates++] = t;
}

void sampler__record_finish(const sampler_recorder *r, int32_t token, sampler_trace *out)
{
    out->n = r->n;
    out->n_candidates = 0;
    for (int s = 0; s < SAMPLER_STAGE_COUNT; s++) {
        if (!r->len[s]) continue;
        int32_t best[SAMPLER_TRACE_MAX];
        int nb = top_ids(r->row[s], r->row_id[s], r->len[s], r->n, s == SAMPLER_STAGE_SOFTMAX, best);
        for (int j = 0; j < nb; j++) add_candidate(out, best[j]);
    }
    add_candidate(out, token);
    for (int s = 0; s < SAMPLER_STAGE_COUNT; s++) {
        sampler_trace_stage *st = &out->stage[s];
        st->ran = r->len[s] > 0;
        st->survivors = 0;
        if (!st->ran) continue;
        const float *row = r->row[s];
        int len = r->len[s], alive = 0;
        if (s == SAMPLER_STAGE_SOFTMAX)
            for (int i = 0; i < len; i++) alive += row[i] > 0.0f;
        else
            for (int i = 0; i < len; i++) alive += !is_dropped(row[i]);
        st->survivors = alive;
        for (int c = 0; c < out->n_candidates; c++) {
            float v = lookup(row, r->row_id[s], len, out->candidate[c]);
            st->value[c] = s == SAMPLER_STAGE_SOFTMAX && v == -INFINITY ? 0.0f : v; /* dropped */
        }
    }
    out->greedy = r->greedy;
    out->token = token;
    for (int c = 0; c < out->n_candidates; c++) out->cdf_before[c] = NAN;
    if (r->greedy) {
        out->coin = NAN;
        out->probability = NAN;
        return;
    }
    out->coin = r->coin;
    const float *row = r->row[SAMPLER_STAGE_SOFTMAX];
    const int32_t *id = r->row_id[SAMPLER_STAGE_SOFTMAX];
    int len = r->len[SAMPLER_STAGE_SOFTMAX];
    out->probability = lookup(row, id, len, token);
    /* The draw's running sum, walked in its order (increasing id), noted at each
     * candidate: the candidates in increasing id order first (a few, insertion). */
    int order[SAMPLER_TRACE_MAX_CANDIDATES];
    for (int c = 0; c < out->n_candidates; c++) {
        int j = c;
        while (j > 0 && out->candidate[order[j - 1]] > out->candidate[c]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = c;
    }
    double cdf = 0.0;
    int next = 0;
    for (int i = 0; i < len && next < out->n_candidates; i++) {
        int32_t t = id ? id[i] : i;
        while (next < out->n_candidates && out->candidate[order[next]] < t)
            next++; /* dropped before softmax: not in this row */
        float p = row[i];
        if (next < out->n_candidates && out->candidate[order[next]] == t) {
            if (p > 0.0f) out->cdf_before[order[next]] = cdf;
            next++;
        }
        if (p > 0.0f) cdf += p;
    }
}
