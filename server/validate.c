/* validate.c -- request JSON -> job parameters, with every OpenAI-style 400.
 *
 * Everything a client sends is checked here, before anything is queued: wrong
 * types, out-of-range values, unknown token ids, over-long prompts.  Each error
 * names the offending parameter.  Ranges follow the issue / OpenAI:
 *   temperature >= 0 finite; top_p in (0, 1]; top_k >= 0; min_p in [0, 1];
 *   repetition_penalty > 0; presence/frequency_penalty in [-2, 2];
 *   logit_bias: token-id keys in the vocabulary, values in [-100, 100] (-100 bans);
 *   max_tokens in [0, --max-tokens-limit]; n >= 1 and n * prompts <= the choice
 *   limit; logprobs 0..5 (chat: top_logprobs 0..20); stop: a non-empty string or up
 *   to 4 of them; stream_options only with stream; a prompt must have tokens.
 */
#include "server/server_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define BAD(param, ...) \
    do { api_error_set(err, 400, "invalid_request_error", param, "invalid_value", __VA_ARGS__); goto fail; } while (0)
#define BADTYPE(param, what) \
    do { api_error_set(err, 400, "invalid_request_error", param, "invalid_type", "'%s' must be %s", param, what); goto fail; } while (0)

void job_params_clear(job_params *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_prompts; i++) free(p->prompts ? p->prompts[i] : NULL);
    free(p->prompts);
    free(p->prompt_lens);
    free(p->echo_from);
    for (int i = 0; i < p->n_stops; i++) free(p->stops[i]);
    free((void *)p->sp.bias_ids);
    free((void *)p->sp.bias_values);
    memset(p, 0, sizeof *p);
}

int validate_tokenize(const validate_ctx *vc, const char *text, size_t len, int add_bos,
                      int32_t **out, int *n_out)
{
    int cap = (int)(len + 8 < 1024 ? len + 8 : 1024);
    for (;;) {
        int32_t *buf = malloc(sizeof *buf * (size_t)cap);
        if (!buf) return -1;
        int n = vc->tokenize(vc->tok_cls, text, len, add_bos, buf, cap);
        if (n < 0) {
            free(buf);
            return n;
        }
        if (n <= cap) {
            *out = buf;
            *n_out = n;
            return 0;
        }
        free(buf);
        cap = n;
    }
}

/* Optional number field: 0 = absent/null, 1 = set, -1 = wrong type (err set). */
static int get_number(json_t *root, const char *key, double *v, api_error *err)
{
    json_t *x = json_object_get(root, key);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_number(x)) {
        api_error_set(err, 400, "invalid_request_error", key, "invalid_type", "'%s' must be a number", key);
        return -1;
    }
    *v = json_number_value(x);
    if (!isfinite(*v)) {
        api_error_set(err, 400, "invalid_request_error", key, "invalid_value", "'%s' must be finite", key);
        return -1;
    }
    return 1;
}

static int get_int(json_t *root, const char *key, long long *v, api_error *err)
{
    json_t *x = json_object_get(root, key);
    if (!x || json_is_null(x)) return 0;
    if (json_is_integer(x)) {
        *v = json_integer_value(x);
        return 1;
    }
    if (json_is_real(x)) {
        double d = json_real_value(x);
        if (d == floor(d) && fabs(d) < 9e15) {
            *v = (long long)d;
            return 1;
        }
    }
    api_error_set(err, 400, "invalid_request_error", key, "invalid_type", "'%s' must be an integer", key);
    return -1;
}

static int get_bool(json_t *root, const char *key, int *v, api_error *err)
{
    json_t *x = json_object_get(root, key);
    if (!x || json_is_null(x)) return 0;
    if (!json_is_boolean(x)) {
        api_error_set(err, 400, "invalid_request_error", key, "invalid_type", "'%s' must be a boolean", key);
        return -1;
    }
    *v = json_is_true(x);
    return 1;
}

static int add_prompt(job_params *p, int32_t *toks, int n, int echo_from)
{
    int k = p->n_prompts;
    int32_t **pp = realloc(p->prompts, sizeof *pp * (size_t)(k + 1));
    if (!pp) return -1;
    p->prompts = pp;
    int *pl = realloc(p->prompt_lens, sizeof *pl * (size_t)(k + 1));
    if (!pl) return -1;
    p->prompt_lens = pl;
    int *ef = realloc(p->echo_from, sizeof *ef * (size_t)(k + 1));
    if (!ef) return -1;
    p->echo_from = ef;
    pp[k] = toks;
    pl[k] = n;
    ef[k] = echo_from;
    p->n_prompts = k + 1;
    return 0;
}

static int prompt_from_text(const validate_ctx *vc, job_params *p, const char *s, size_t len,
                            api_error *err)
{
    if (len == 0) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value", "'prompt' must not be empty");
        return -1;
    }
    int32_t *t = NULL;
    int n = 0;
    if (validate_tokenize(vc, s, len, vc->add_bos, &t, &n) < 0) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value", "'prompt' could not be tokenized");
        return -1;
    }
    int echo_from = (vc->add_bos && n > 0 && vc->bos_id >= 0 && t[0] == vc->bos_id) ? 1 : 0;
    if (n - echo_from <= 0) {
        free(t);
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value", "'prompt' has no tokens");
        return -1;
    }
    if (add_prompt(p, t, n, echo_from) < 0) {
        free(t);
        api_error_set(err, 400, "invalid_request_error", "prompt", NULL, "out of memory");
        return -1;
    }
    return 0;
}

static int prompt_from_ids(const validate_ctx *vc, job_params *p, json_t *arr, api_error *err)
{
    size_t n = json_array_size(arr);
    if (n == 0) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value", "'prompt' has no tokens");
        return -1;
    }
    int32_t *t = malloc(sizeof *t * n);
    if (!t) return -1;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(arr, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= vc->vocab) {
            free(t);
            api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value",
                          "'prompt' token %zu is not a token id in [0, %d)", i, vc->vocab);
            return -1;
        }
        t[i] = (int32_t)json_integer_value(x);
    }
    if (add_prompt(p, t, (int)n, 0) < 0) {
        free(t);
        return -1;
    }
    return 0;
}

static int parse_prompt(const validate_ctx *vc, job_params *p, json_t *x, api_error *err)
{
    if (!x || json_is_null(x)) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "missing_required_parameter", "'prompt' is required");
        return -1;
    }
    if (json_is_string(x)) return prompt_from_text(vc, p, json_string_value(x), json_string_length(x), err);
    if (!json_is_array(x)) goto type;
    if (json_array_size(x) == 0) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value", "'prompt' has no tokens");
        return -1;
    }
    json_t *first = json_array_get(x, 0);
    if (json_is_integer(first)) return prompt_from_ids(vc, p, x, err);
    /* a list of prompts: refuse more than the choice limit before tokenizing any
     * (a 1 MB body holds 200,000 one-letter prompts: ~0.3 s of loop-thread work,
     * minutes under ASan with add_prompt's reallocs) */
    if (json_array_size(x) > (size_t)vc->max_choices) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value",
                      "'prompt' may hold at most %d prompts (got %zu)", vc->max_choices, json_array_size(x));
        return -1;
    }
    size_t i;
    json_t *el;
    json_array_foreach(x, i, el) {
        int rc;
        if (json_is_string(el)) rc = prompt_from_text(vc, p, json_string_value(el), json_string_length(el), err);
        else if (json_is_array(el)) rc = prompt_from_ids(vc, p, el, err);
        else goto type;
        if (rc < 0) return -1;
    }
    return 0;
type:
    api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_type",
                  "'prompt' must be a string, an array of token ids, or an array of those");
    return -1;
}

static int append_part(sbuf *b, json_t *content, api_error *err)
{
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content))
        return sbuf_append(b, json_string_value(content), json_string_length(content));
    if (json_is_array(content)) {
        size_t i;
        json_t *part;
        json_array_foreach(content, i, part) {
            json_t *t = json_object_get(part, "text");
            if (!json_is_object(part) || !json_is_string(t)) {
                api_error_set(err, 400, "invalid_request_error", "messages", "invalid_type",
                              "'messages' content parts must be objects with a 'text' string");
                return -1;
            }
            if (sbuf_append(b, json_string_value(t), json_string_length(t)) < 0) return -1;
        }
        return 0;
    }
    api_error_set(err, 400, "invalid_request_error", "messages", "invalid_type",
                  "'messages' content must be a string or an array of parts");
    return -1;
}

char *chat_render(json_t *messages, api_error *err)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        api_error_set(err, 400, "invalid_request_error", "messages", "invalid_value",
                      "'messages' must be a non-empty array");
        return NULL;
    }
    sbuf b = {0};
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role) || json_string_length(role) == 0) {
            api_error_set(err, 400, "invalid_request_error", "messages", "invalid_value",
                          "'messages[%zu]' must be an object with a 'role' string", i);
            sbuf_free(&b);
            return NULL;
        }
        sbuf_append(&b, json_string_value(role), json_string_length(role));
        sbuf_append(&b, ": ", 2);
        if (append_part(&b, json_object_get(m, "content"), err) < 0) {
            sbuf_free(&b);
            return NULL;
        }
        sbuf_append(&b, "\n", 1);
    }
    sbuf_append(&b, "assistant:", 10);
    return b.data;
}

static int parse_stop(job_params *p, json_t *x, api_error *err)
{
    if (!x || json_is_null(x)) return 0;
    json_t *one[1] = {x};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(x)) {
        n = json_array_size(x);
        if (n > 4) {
            api_error_set(err, 400, "invalid_request_error", "stop", "invalid_value", "'stop' may hold at most 4 strings");
            return -1;
        }
        items = NULL;
    } else if (!json_is_string(x)) {
        api_error_set(err, 400, "invalid_request_error", "stop", "invalid_type", "'stop' must be a string or an array of strings");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(x, i);
        if (!json_is_string(s)) {
            api_error_set(err, 400, "invalid_request_error", "stop", "invalid_type", "'stop' must be a string or an array of strings");
            return -1;
        }
        if (json_string_length(s) == 0 || strlen(json_string_value(s)) != json_string_length(s)) {
            api_error_set(err, 400, "invalid_request_error", "stop", "invalid_value", "'stop' strings must not be empty");
            return -1;
        }
        p->stops[p->n_stops++] = strdup(json_string_value(s));
    }
    return 0;
}

static int parse_logit_bias(const validate_ctx *vc, job_params *p, json_t *x, api_error *err)
{
    if (!x || json_is_null(x)) return 0;
    if (!json_is_object(x)) {
        api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_type", "'logit_bias' must be an object");
        return -1;
    }
    size_t n = json_object_size(x);
    if (n == 0) return 0;
    int32_t *ids = malloc(sizeof *ids * n);
    float *vals = malloc(sizeof *vals * n);
    if (!ids || !vals) {
        free(ids);
        free(vals);
        return -1;
    }
    p->sp.bias_ids = ids;
    p->sp.bias_values = vals;
    const char *key;
    json_t *v;
    int k = 0;
    json_object_foreach(x, key, v) {
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!*key || *end || errno || id < 0 || id >= vc->vocab) {
            api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_value",
                          "'logit_bias' key '%.40s' is not a token id in [0, %d)", key, vc->vocab);
            return -1;
        }
        if (!json_is_number(v) || !isfinite(json_number_value(v)) || fabs(json_number_value(v)) > 100) {
            api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_value",
                          "'logit_bias' values must be numbers in [-100, 100]");
            return -1;
        }
        double b = json_number_value(v);
        ids[k] = (int32_t)id;
        vals[k] = b <= -100 ? -INFINITY : (float)b;
        k++;
    }
    p->sp.n_bias = k;
    /* banning every token leaves nothing to sample: a client error, not a 500 */
    unsigned char *banned = calloc((size_t)vc->vocab, 1);
    int n_banned = 0;
    for (int i = 0; banned && i < k; i++)
        if (isinf(vals[i]) && !banned[ids[i]]) {
            banned[ids[i]] = 1;
            n_banned++;
        }
    free(banned);
    if (n_banned >= vc->vocab) {
        api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_value",
                      "'logit_bias' bans every token of the vocabulary");
        return -1;
    }
    return 0;
}

int validate_request(const validate_ctx *vc, int kind, const char *body, size_t len,
                     job_params *p, api_error *err)
{
    memset(p, 0, sizeof *p);
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, 0, &jerr);
    if (!root) {
        api_error_set(err, 400, "invalid_request_error", NULL, "invalid_json",
                      "request body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        return -1;
    }
    if (!json_is_object(root)) {
        api_error_set(err, 400, "invalid_request_error", NULL, "invalid_json", "request body must be a JSON object");
        json_decref(root);
        return -1;
    }
    p->kind = kind;
    p->n = 1;
    p->logprobs = -1;
    p->sp.temperature = 1.0f;
    p->sp.top_p = 1.0f;
    double d;
    long long ll;
    int b, rc;

    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) BADTYPE("model", "a string");
        if (strcmp(json_string_value(model), vc->model_id) != 0) {
            api_error_set(err, 404, "invalid_request_error", "model", "model_not_found",
                          "The model '%.100s' does not exist (this server has '%.100s')",
                          json_string_value(model), vc->model_id);
            goto fail;
        }
    }

    if ((rc = get_number(root, "temperature", &d, err)) < 0) goto fail;
    if (rc) {
        if (d < 0) BAD("temperature", "'temperature' must be >= 0 (got %g)", d);
        p->sp.temperature = (float)d;
    }
    if ((rc = get_number(root, "top_p", &d, err)) < 0) goto fail;
    if (rc) {
        if (!(d > 0 && d <= 1)) BAD("top_p", "'top_p' must be in (0, 1] (got %g)", d);
        p->sp.top_p = (float)d;
    }
    if ((rc = get_int(root, "top_k", &ll, err)) < 0) goto fail;
    if (rc) {
        if (ll < 0) BAD("top_k", "'top_k' must be >= 0 (got %lld)", ll);
        p->sp.top_k = ll > vc->vocab ? vc->vocab : (int)ll;
    }
    if ((rc = get_number(root, "min_p", &d, err)) < 0) goto fail;
    if (rc) {
        if (!(d >= 0 && d <= 1)) BAD("min_p", "'min_p' must be in [0, 1] (got %g)", d);
        p->sp.min_p = (float)d;
    }
    if ((rc = get_number(root, "repetition_penalty", &d, err)) < 0) goto fail;
    if (rc) {
        if (!(d > 0)) BAD("repetition_penalty", "'repetition_penalty' must be > 0 (got %g)", d);
        p->sp.repetition_penalty = (float)d;
    }
    if ((rc = get_number(root, "presence_penalty", &d, err)) < 0) goto fail;
    if (rc) {
        if (!(d >= -2 && d <= 2)) BAD("presence_penalty", "'presence_penalty' must be in [-2, 2] (got %g)", d);
        p->sp.presence_penalty = (float)d;
    }
    if ((rc = get_number(root, "frequency_penalty", &d, err)) < 0) goto fail;
    if (rc) {
        if (!(d >= -2 && d <= 2)) BAD("frequency_penalty", "'frequency_penalty' must be in [-2, 2] (got %g)", d);
        p->sp.frequency_penalty = (float)d;
    }
    if ((rc = get_int(root, "seed", &ll, err)) < 0) goto fail;
    if (rc) {
        p->sp.seed = (uint64_t)ll;
        p->has_seed = 1;
    } else {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) s = (uint64_t)(srv_now() * 1e9);
        p->sp.seed = s;
    }
    if (parse_logit_bias(vc, p, json_object_get(root, "logit_bias"), err) < 0) goto fail;
    if (parse_stop(p, json_object_get(root, "stop"), err) < 0) goto fail;

    if ((rc = get_bool(root, "stream", &b, err)) < 0) goto fail;
    if (rc) p->stream = b;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) BADTYPE("stream_options", "an object");
        if (!p->stream) BAD("stream_options", "'stream_options' is only allowed when 'stream' is true");
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu)) {
            if (!json_is_boolean(iu)) BADTYPE("stream_options", "an object whose 'include_usage' is a boolean");
            p->include_usage = json_is_true(iu);
        }
    }
    json_t *user = json_object_get(root, "user");
    if (user && !json_is_null(user) && !json_is_string(user)) BADTYPE("user", "a string");

    if ((rc = get_int(root, "n", &ll, err)) < 0) goto fail;
    if (rc) {
        if (ll < 1 || ll > vc->max_choices) BAD("n", "'n' must be in [1, %d] (got %lld)", vc->max_choices, ll);
        p->n = (int)ll;
    }
    if ((rc = get_int(root, "best_of", &ll, err)) < 0) goto fail;
    if (rc && ll != p->n) BAD("best_of", "'best_of' other than 'n' is not supported");

    int max_set = 0;
    long long max_tokens = 16;
    const char *mt_name = "max_tokens";
    if (kind == JOB_CHAT && json_object_get(root, "max_completion_tokens") &&
        !json_is_null(json_object_get(root, "max_completion_tokens")))
        mt_name = "max_completion_tokens";
    if ((rc = get_int(root, mt_name, &ll, err)) < 0) goto fail;
    if (rc) {
        if (ll < 0) BAD(mt_name, "'%s' must be >= 0 (got %lld)", mt_name, ll);
        if (ll > vc->max_tokens_limit)
            BAD(mt_name, "'%s' must be <= %d, this server's limit (got %lld)", mt_name, vc->max_tokens_limit, ll);
        max_tokens = ll;
        max_set = 1;
    }

    if (kind == JOB_COMPLETION) {
        if ((rc = get_int(root, "logprobs", &ll, err)) < 0) goto fail;
        if (rc) {
            if (ll < 0 || ll > JOB_MAX_LOGPROBS) BAD("logprobs", "'logprobs' must be in [0, %d] (got %lld)", JOB_MAX_LOGPROBS, ll);
            p->logprobs = (int)ll;
        }
        if ((rc = get_bool(root, "echo", &b, err)) < 0) goto fail;
        if (rc) p->echo = b;
        json_t *suffix = json_object_get(root, "suffix");
        if (suffix && !json_is_null(suffix) && !(json_is_string(suffix) && json_string_length(suffix) == 0))
            BAD("suffix", "'suffix' is not supported");
        if (parse_prompt(vc, p, json_object_get(root, "prompt"), err) < 0) goto fail;
    } else {
        int lp = 0;
        if ((rc = get_bool(root, "logprobs", &lp, err)) < 0) goto fail;
        if ((rc = get_int(root, "top_logprobs", &ll, err)) < 0) goto fail;
        if (rc) {
            if (ll < 0 || ll > JOB_MAX_TOP_LOGPROBS)
                BAD("top_logprobs", "'top_logprobs' must be in [0, %d] (got %lld)", JOB_MAX_TOP_LOGPROBS, ll);
            if (!lp) BAD("top_logprobs", "'top_logprobs' requires 'logprobs': true");
        } else {
            ll = 0;
        }
        if (lp) p->logprobs = (int)ll;
        json_t *msgs = json_object_get(root, "messages");
        if (!msgs || json_is_null(msgs)) {
            api_error_set(err, 400, "invalid_request_error", "messages", "missing_required_parameter", "'messages' is required");
            goto fail;
        }
        char *text = chat_render(msgs, err);
        if (!text) goto fail;
        rc = prompt_from_text(vc, p, text, strlen(text), err);
        free(text);
        if (rc < 0) {
            err->param = "messages";
            goto fail;
        }
        if (p->n_stops < JOB_MAX_STOPS) p->stops[p->n_stops++] = strdup("\nuser:");
    }

    if ((long long)p->n * p->n_prompts > vc->max_choices)
        BAD("n", "'n' times the number of prompts must be <= %d", vc->max_choices);
    for (int i = 0; i < p->n_prompts; i++) {
        if (p->prompt_lens[i] > vc->ctx) {
            api_error_set(err, 400, "invalid_request_error", kind == JOB_CHAT ? "messages" : "prompt",
                          "context_length_exceeded",
                          "This model's context window is %d tokens; the prompt has %d", vc->ctx, p->prompt_lens[i]);
            goto fail;
        }
    }
    if (kind == JOB_CHAT && !max_set) {
        /* chat default: until the context window is full */
        long long room = vc->ctx - p->prompt_lens[0];
        max_tokens = room < 1 ? 1 : room;
        if (max_tokens > vc->max_tokens_limit) max_tokens = vc->max_tokens_limit;
    }
    p->max_tokens = (int)max_tokens;

    const char *bad = NULL;
    if (sampler_params_validate(&p->sp, vc->vocab, &bad) != SAMPLER_OK)
        BAD(bad ? bad : NULL, "'%s' is out of range", bad ? bad : "sampling parameters");
    json_decref(root);
    return 0;
fail:
    json_decref(root);
    job_params_clear(p);
    return -1;
}
