/* trace_json.c -- the JSON of one step's sampler trace (request field sampler_trace).
 *
 * One object per generated token (openapi.yaml, SamplerTraceStep):
 *   {"candidates": [{"id": 263, "token": " there"}, ...],
 *    "stages": [{"name": "logits", "skipped": false, "survivors": 512,
 *                "values": [9.81, 8.2, ...]},
 *               {"name": "logit_bias", "skipped": true}, ...,
 *               {"name": "softmax", "skipped": false, "survivors": 12, "values": [0.61, 0, ...]}],
 *    "draw": {"method": "sample", "coin": 0.4213, "token": 263, "probability": 0.61,
 *             "cdf_before": [0.12, null, ...]}}
 * values[i] belongs to candidates[i]; a token a stage dropped (-INFINITY) is null, as
 * is a NaN logit (no probability either).  cdf_before[i]: where candidates[i]'s
 * interval starts on the draw's line (sampler.h; null when its probability is 0).
 * Greedy: "method": "argmax", coin, probability and cdf_before null, every stage
 * from temperature on skipped.  Every stage of the
 * pipeline is listed, in the order applied, whether it ran or not.
 */
#include "server/server_internal.h"

#include <math.h>

static json_t *value_json(float v) { return isfinite(v) ? json_real((double)v) : json_null(); }

json_t *trace_json(const sampler_trace *t, json_t *(*token_text)(void *cls, int32_t id), void *cls)
{
    json_t *o = json_object();
    json_t *cands = json_array();
    for (int c = 0; c < t->n_candidates; c++) {
        json_t *e = json_object();
        json_object_set_new(e, "id", json_integer(t->candidate[c]));
        json_object_set_new(e, "token", token_text(cls, t->candidate[c]));
        json_array_append_new(cands, e);
    }
    json_object_set_new(o, "candidates", cands);
    json_t *stages = json_array();
    for (int s = 0; s < SAMPLER_STAGE_COUNT; s++) {
        const sampler_trace_stage *st = &t->stage[s];
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(sampler_stage_name(s)));
        json_object_set_new(e, "skipped", json_boolean(!st->ran));
        if (st->ran) {
            json_object_set_new(e, "survivors", json_integer(st->survivors));
            json_t *vals = json_array();
            for (int c = 0; c < t->n_candidates; c++) json_array_append_new(vals, value_json(st->value[c]));
            json_object_set_new(e, "values", vals);
        }
        json_array_append_new(stages, e);
    }
    json_object_set_new(o, "stages", stages);
    json_t *d = json_object();
    json_object_set_new(d, "method", json_string(t->greedy ? "argmax" : "sample"));
    json_object_set_new(d, "coin", t->greedy ? json_null() : value_json(t->coin));
    json_object_set_new(d, "token", json_integer(t->token));
    json_object_set_new(d, "probability", t->greedy ? json_null() : value_json(t->probability));
    json_t *cdf = json_array();
    for (int c = 0; c < t->n_candidates; c++)
        json_array_append_new(cdf, isfinite(t->cdf_before[c]) ? json_real(t->cdf_before[c]) : json_null());
    json_object_set_new(d, "cdf_before", cdf);
    json_object_set_new(o, "draw", d);
    return o;
}
