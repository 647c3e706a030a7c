/* fuzz_request.c -- libFuzzer target: the HTTP request -> validated job path,
 * without sockets.
 *
 * Input layout: the first line is the request path ("/v1/completions"); the rest
 * is the JSON body.  The path goes through route_find (server/routes.c); the body
 * through validate_request (server/validate.c) as a completion and as a chat
 * request, with the real stories260K tokenizer ($LMSERVE_MODELS) behind the
 * validate_ctx and small limits so the limit checks are reached.  Checked:
 *   - a rejected body gets 400 (or 404 model_not_found), never anything else, a
 *     non-empty message, and api_error_json gives {"error": {"message": string,
 *     "type": string, ...}};
 *   - an accepted body gives parameters inside every documented range (choices,
 *     max_tokens, prompt lengths within the context unless slide crops them, token ids within the
 *     vocabulary, logprobs, stop strings, logit_bias ids, sampler ranges);
 *   - a constrained body (response_format, grammar, choice) has no stop strings;
 *   - validating the same body twice gives the same verdict;
 *   - the accepted stop strings, run through the stop matcher over the body's own
 *     bytes fed in small pieces, release only a prefix of the text that holds no
 *     stop string, and on a match the rest starts with one of them.
 * Headers (Authorization, Content-Length) are checked inside MHD callbacks that
 * need a live connection; tests/integration covers them over real sockets. */
#include "server/http.h"
#include "server/constraint.h"
#include "model/model.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_CHECK(cond, what)                             \
    do {                                                 \
        if (!(cond)) {                                   \
            fprintf(stderr, "fuzz_request: %s\n", what); \
            abort();                                     \
        }                                                \
    } while (0)

static model *g_model;
static validate_ctx g_vc;

static int tok_cb(void *cls, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    return model_tokenize(cls, text, len, add_bos, out, cap);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("LMSERVE_MODELS");
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/stories260K.gguf", dir ? dir : "tests/data/models");
    model_load_opts opts = { .n_threads = 1 };
    if (model_load(&g_model, path, &opts, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    json_object_seed(1);
    const model_info *mi = model_get_info(g_model);
    g_vc = (validate_ctx){
        .model_id = "stories260K",
        .vocab = mi->vocab_size,
        .ctx = 64,
        .add_bos = mi->add_bos,
        .bos_id = mi->bos_id,
        .max_tokens_limit = 256,
        .max_choices = 8,
        .tokenize = tok_cb,
        .tok_cls = g_model,
    };
    /* response_format / grammar / choice go through the server's table of grammars */
    static sampler_vocab *cv;
    if (constraint_vocab_from_model(g_model, &cv) != SAMPLER_OK || !(g_vc.constraints = constraint_table_new(cv, 4))) {
        fprintf(stderr, "out of memory\n");
        abort();
    }
    return 0;
}

static void check_error(const api_error *e)
{
    FZ_CHECK(e->status == 400 || e->status == 404, "rejection status is not 400/404");
    if (e->status == 404) FZ_CHECK(e->code && !strcmp(e->code, "model_not_found"), "404 that is not model_not_found");
    FZ_CHECK(e->message[0] != '\0', "empty error message");
    FZ_CHECK(e->type && e->type[0], "error without a type");
    char *s = api_error_json(e);
    FZ_CHECK(s != NULL, "api_error_json failed");
    json_error_t je;
    json_t *o = json_loads(s, 0, &je);
    FZ_CHECK(o != NULL, "api_error_json is not JSON");
    json_t *er = json_object_get(o, "error");
    FZ_CHECK(json_is_object(er), "no error object");
    FZ_CHECK(json_is_string(json_object_get(er, "message")), "error.message is not a string");
    FZ_CHECK(json_is_string(json_object_get(er, "type")), "error.type is not a string");
    json_t *param = json_object_get(er, "param");
    FZ_CHECK(!param || json_is_null(param) || json_is_string(param), "error.param is not a string or null");
    json_decref(o);
    free(s);
}

static void check_params(const job_params *p, int kind)
{
    const validate_ctx *vc = &g_vc;
    FZ_CHECK(p->kind == kind, "kind");
    FZ_CHECK(p->n >= 1 && p->n_prompts >= 1 && (long long)p->n * p->n_prompts <= vc->max_choices, "choices");
    FZ_CHECK(p->max_tokens >= 0 && p->max_tokens <= vc->max_tokens_limit, "max_tokens");
    for (int i = 0; i < p->n_prompts; i++) {
        /* slide crops a longer prompt (echo with logprobs scores each position past the
         * window from its own window, at most max_tokens_limit of them); shift and stop
         * refuse it */
        FZ_CHECK(p->prompt_lens[i] >= 1, "prompt length");
        if (p->context_overflow != SAMPLER_CROP_SLIDE)
            FZ_CHECK(p->prompt_lens[i] <= vc->ctx, "prompt longer than the window without slide");
        else if (p->echo && p->logprobs >= 0)
            FZ_CHECK(p->prompt_lens[i] - 1 - vc->ctx <= vc->max_tokens_limit, "echo scoring past the limit");
        FZ_CHECK(p->echo_from[i] >= 0 && p->echo_from[i] < p->prompt_lens[i], "echo_from");
        for (int k = 0; k < p->prompt_lens[i]; k++)
            FZ_CHECK(p->prompts[i][k] >= 0 && p->prompts[i][k] < vc->vocab, "prompt token id");
    }
    FZ_CHECK(p->logprobs >= -1 && p->logprobs <= (kind == JOB_CHAT ? JOB_MAX_TOP_LOGPROBS : JOB_MAX_LOGPROBS),
             "logprobs");
    FZ_CHECK(p->n_stops >= 0 && p->n_stops <= JOB_MAX_STOPS, "stop count");
    for (int i = 0; i < p->n_stops; i++) FZ_CHECK(p->stops[i] && p->stops[i][0], "empty stop string");
    FZ_CHECK(!p->constraint || p->n_stops == 0, "stop strings beside a constraint");
    FZ_CHECK(!p->include_usage || p->stream, "include_usage without stream");
    const sampler_params *sp = &p->sp;
    FZ_CHECK(isfinite(sp->temperature) && sp->temperature >= 0, "temperature");
    FZ_CHECK(sp->top_p > 0 && sp->top_p <= 1, "top_p");
    FZ_CHECK(sp->top_k >= 0 && sp->top_k <= vc->vocab, "top_k");
    FZ_CHECK(sp->min_p >= 0 && sp->min_p <= 1, "min_p");
    FZ_CHECK(sp->n_bias >= 0, "n_bias");
    for (int i = 0; i < sp->n_bias; i++) {
        FZ_CHECK(sp->bias_ids[i] >= 0 && sp->bias_ids[i] < vc->vocab, "logit_bias id");
        FZ_CHECK(!isnan(sp->bias_values[i]), "logit_bias value");
    }
}

/* Feed text through the stop matcher in pieces of 1..7 bytes, as the engine does. */
static void check_stops(const job_params *p, const char *text, size_t n)
{
    if (p->n_stops == 0) return;
    stop_matcher sm = { 0 };
    sbuf out = { 0 };
    int matched = 0;
    for (size_t i = 0; i < n && !matched;) {
        size_t step = 1 + (i * 7 + (unsigned char)text[i]) % 7;
        if (step > n - i) step = n - i;
        size_t rel = 0;
        matched = stop_matcher_push(&sm, p->stops, p->n_stops, text + i, step, &rel);
        FZ_CHECK(rel <= sm.pending.len, "release beyond what is pending");
        sbuf_append(&out, sm.pending.data, rel);
        stop_matcher_consume(&sm, matched ? sm.pending.len : rel);
        i += step;
    }
    FZ_CHECK(out.len <= n && (out.len == 0 || memcmp(out.data, text, out.len) == 0), "released text is not a prefix");
    for (int k = 0; k < p->n_stops; k++) {
        size_t sl = strlen(p->stops[k]);
        FZ_CHECK(out.len == 0 || memmem(out.data, out.len, p->stops[k], sl) == NULL,
                 "released text holds a stop string");
    }
    if (matched) {
        int starts = 0;
        for (int k = 0; k < p->n_stops; k++) {
            size_t sl = strlen(p->stops[k]);
            if (n - out.len >= sl && memcmp(text + out.len, p->stops[k], sl) == 0) starts = 1;
        }
        FZ_CHECK(starts, "a match that is not followed by a stop string");
    }
    sbuf_free(&out);
    stop_matcher_free(&sm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) return 0;
    const char *nl = memchr(data, '\n', size);
    size_t plen = nl ? (size_t)(nl - (const char *)data) : 0;
    const char *body = nl ? nl + 1 : (const char *)data;
    size_t blen = size - (nl ? plen + 1 : 0);

    char url[256];
    if (plen >= sizeof url) plen = sizeof url - 1;
    memcpy(url, data, plen);
    url[plen] = '\0';
    unsigned allowed = 0;
    int route = route_find(url, &allowed);
    FZ_CHECK(route == -1 || (allowed != 0 && route >= ROUTE_COMPLETIONS && route <= ROUTE_STATIC), "route_find");

    for (int kind = JOB_COMPLETION; kind <= JOB_CHAT; kind++) {
        job_params p;
        api_error e;
        memset(&e, 0, sizeof e);
        int rc = validate_request(&g_vc, kind, body, blen, &p, &e);
        job_params q;
        api_error e2;
        memset(&e2, 0, sizeof e2);
        int rc2 = validate_request(&g_vc, kind, body, blen, &q, &e2);
        FZ_CHECK(rc == rc2, "two validations of the same body disagree");
        if (rc != 0) {
            FZ_CHECK(rc == -1, "validate_request returned neither 0 nor -1");
            check_error(&e);
            FZ_CHECK(e.status == e2.status, "two rejections with different statuses");
            continue;
        }
        check_params(&p, kind);
        FZ_CHECK(p.n_prompts == q.n_prompts && p.max_tokens == q.max_tokens, "two validations differ");
        check_stops(&p, body, blen);
        job_params_clear(&p);
        job_params_clear(&q);
    }
    return 0;
}
