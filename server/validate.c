/* validate.c -- request JSON -> job parameters, with every OpenAI-style 400.
 *
 * Everything a client sends is checked here, before anything is queued: wrong
 * types, out-of-range values, unknown token ids, over-long prompts.  Each error
 * names the offending parameter.  The scalar fields are one table (`fields`:
 * name, routes, type, range, default -- the ranges OpenAI documents, plus the
 * server's limits); the rest have a small reader each: logit_bias (token-id keys
 * in the vocabulary, each id once however it is spelt, values in [-100, 100],
 * -100 bans), stop (a non-empty string or up to 4), seed, stream_options (only
 * with stream), prompt or messages (must have tokens), and the constraint fields
 * response_format, grammar and choice (constraint.c; no stop strings or echo beside
 * them).  A non-streamed answer that could not fit in --response-limit is refused
 * before it starts.  Running out of memory is a 503, never blamed on the client.
 */
#include "server/server_internal.h"
#include "server/constraint.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define BAD(param, ...)                                                                        \
    do {                                                                                       \
        api_error_set(err, 400, "invalid_request_error", param, "invalid_value", __VA_ARGS__); \
        goto fail;                                                                             \
    } while (0)
#define BADTYPE(param, what)                                                                                     \
    do {                                                                                                         \
        api_error_set(err, 400, "invalid_request_error", param, "invalid_type", "'%s' must be %s", param, what); \
        goto fail;                                                                                               \
    } while (0)

/* Out of memory while reading the request: a 503, not the client's fault. */
static int oom(api_error *err)
{
    api_error_set(err, 503, "server_error", NULL, "out_of_memory", "out of memory");
    return -1;
}

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
    sampler_constraint_cache_free(p->constraint);
    memset(p, 0, sizeof *p);
}

int validate_tokenize(const validate_ctx *vc, const char *text, size_t len, int add_bos, int32_t **out, int *n_out)
{
    int cap = (int)(len + 8 < 1024 ? len + 8 : 1024);
    for (;;) {
        int32_t *buf = malloc(sizeof *buf * (size_t)cap);
        if (!buf) return VALIDATE_ENOMEM;
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

/* ---- the fields: one row each ----------------------------------------------------------- */

enum { T_NUMBER, T_INT, T_BOOL }; /* JSON type accepted */
enum { D_FLOAT, D_INT };          /* how the value is stored */
enum { K_COMPLETION = 1 << JOB_COMPLETION, K_CHAT = 1 << JOB_CHAT, K_BOTH = K_COMPLETION | K_CHAT };
enum { HI_FIXED, HI_MAX_TOKENS, HI_MAX_CHOICES }; /* where the upper bound comes from */

/* The request as parsed: the job's parameters and what only validation needs. */
typedef struct {
    job_params p;
    int chat_logprobs; /* chat: "logprobs": true */
    int top_logprobs;  /* chat */
    int max_tokens;    /* -1: not given */
    int best_of;       /* -1: not given */
} request;

typedef struct {
    const char *name;
    int kinds;     /* K_*: the routes that read it */
    int type;      /* T_* */
    double lo, hi; /* allowed range, bounds included unless *_open */
    unsigned char lo_open, hi_open;
    unsigned char hi_from; /* HI_*: hi is a server limit instead */
    int dest;              /* D_* */
    size_t off;            /* offset of the value in `request` */
    double def;            /* value when absent or null */
} field;

#define F(name, kinds, type, lo, lo_open, hi, hi_open, hi_from, dest, member, def)                 \
    {                                                                                              \
        name, kinds, type, lo, hi, lo_open, hi_open, hi_from, dest, offsetof(request, member), def \
    }
#define INF INFINITY
static const field fields[] = {
    F("temperature", K_BOTH, T_NUMBER, 0, 0, INF, 0, HI_FIXED, D_FLOAT, p.sp.temperature, 1),
    F("top_p", K_BOTH, T_NUMBER, 0, 1, 1, 0, HI_FIXED, D_FLOAT, p.sp.top_p, 1),
    F("top_k", K_BOTH, T_INT, 0, 0, INF, 0, HI_FIXED, D_INT, p.sp.top_k, 0),
    F("min_p", K_BOTH, T_NUMBER, 0, 0, 1, 0, HI_FIXED, D_FLOAT, p.sp.min_p, 0),
    F("repetition_penalty", K_BOTH, T_NUMBER, 0, 1, INF, 0, HI_FIXED, D_FLOAT, p.sp.repetition_penalty, 0),
    F("presence_penalty", K_BOTH, T_NUMBER, -2, 0, 2, 0, HI_FIXED, D_FLOAT, p.sp.presence_penalty, 0),
    F("frequency_penalty", K_BOTH, T_NUMBER, -2, 0, 2, 0, HI_FIXED, D_FLOAT, p.sp.frequency_penalty, 0),
    F("penalty_last_n", K_BOTH, T_INT, 0, 0, INF, 0, HI_FIXED, D_INT, p.sp.penalty_last_n, 0),
    F("stream", K_BOTH, T_BOOL, 0, 0, 1, 0, HI_FIXED, D_INT, p.stream, 0),
    F("n", K_BOTH, T_INT, 1, 0, 0, 0, HI_MAX_CHOICES, D_INT, p.n, 1),
    F("best_of", K_BOTH, T_INT, 1, 0, INF, 0, HI_FIXED, D_INT, best_of, -1),
    F("max_tokens", K_BOTH, T_INT, 0, 0, 0, 0, HI_MAX_TOKENS, D_INT, max_tokens, -1),
    F("logprobs", K_COMPLETION, T_INT, 0, 0, JOB_MAX_LOGPROBS, 0, HI_FIXED, D_INT, p.logprobs, -1),
    F("echo", K_COMPLETION, T_BOOL, 0, 0, 1, 0, HI_FIXED, D_INT, p.echo, 0),
    F("logprobs", K_CHAT, T_BOOL, 0, 0, 1, 0, HI_FIXED, D_INT, chat_logprobs, 0),
    F("top_logprobs", K_CHAT, T_INT, 0, 0, JOB_MAX_TOP_LOGPROBS, 0, HI_FIXED, D_INT, top_logprobs, -1),
    F("sampler_trace", K_BOTH, T_INT, 0, 0, JOB_MAX_SAMPLER_TRACE, 0, HI_FIXED, D_INT, p.sampler_trace, 0),
};
#undef F
#undef INF

/* An integer, also written as 3.0.  0, or -1 if x is not one. */
static int json_int(json_t *x, long long *v)
{
    if (json_is_integer(x)) {
        *v = json_integer_value(x);
        return 0;
    }
    double d = json_is_real(x) ? json_real_value(x) : 0.5;
    if (d != floor(d) || fabs(d) >= 9e15) return -1;
    *v = (long long)d;
    return 0;
}

static void store(request *r, const field *f, double v)
{
    char *dst = (char *)r + f->off;
    if (f->dest == D_FLOAT) {
        float x = (float)v;
        memcpy(dst, &x, sizeof x);
    } else {
        int x = v > INT_MAX ? INT_MAX : (int)v;
        memcpy(dst, &x, sizeof x);
    }
}

/* "'top_p' must be in (0, 1] (got 2)", "'temperature' must be >= 0 (got -1)", and
 * for a server limit "'max_tokens' must be <= 4096, this server's limit (got 5000)". */
static void range_error(api_error *err, const field *f, const char *name, double lo, double hi, double v)
{
    char got[40];
    if (f->type == T_INT)
        snprintf(got, sizeof got, "%lld", (long long)v);
    else
        snprintf(got, sizeof got, "%g", v);
    const char *lo_op = f->lo_open ? ">" : ">=";
    if (f->hi_from == HI_MAX_TOKENS && v > hi)
        api_error_set(err, 400, "invalid_request_error", name, "invalid_value",
                      "'%s' must be <= %g, this server's limit (got %s)", name, hi, got);
    else if (isinf(hi) || f->hi_from == HI_MAX_TOKENS)
        api_error_set(err, 400, "invalid_request_error", name, "invalid_value", "'%s' must be %s %g (got %s)", name,
                      lo_op, lo, got);
    else
        api_error_set(err, 400, "invalid_request_error", name, "invalid_value", "'%s' must be in %c%g, %g%c (got %s)",
                      name, f->lo_open ? '(' : '[', lo, hi, f->hi_open ? ')' : ']', got);
}

/* Read one field (absent or null: its default).  0, or -1 with err set. */
static int read_field(const validate_ctx *vc, json_t *root, const field *f, const char *name, request *r,
                      api_error *err)
{
    json_t *x = json_object_get(root, name);
    if (!x || json_is_null(x)) {
        store(r, f, f->def);
        return 0;
    }
    double v;
    if (f->type == T_BOOL) {
        if (!json_is_boolean(x)) {
            api_error_set(err, 400, "invalid_request_error", name, "invalid_type", "'%s' must be a boolean", name);
            return -1;
        }
        v = json_is_true(x);
    } else if (f->type == T_INT) {
        long long ll;
        if (json_int(x, &ll) < 0) {
            api_error_set(err, 400, "invalid_request_error", name, "invalid_type", "'%s' must be an integer", name);
            return -1;
        }
        v = (double)ll;
    } else {
        if (!json_is_number(x)) {
            api_error_set(err, 400, "invalid_request_error", name, "invalid_type", "'%s' must be a number", name);
            return -1;
        }
        v = json_number_value(x);
        if (!isfinite(v)) {
            api_error_set(err, 400, "invalid_request_error", name, "invalid_value", "'%s' must be finite", name);
            return -1;
        }
    }
    double lo = f->lo, hi = f->hi;
    if (f->hi_from == HI_MAX_TOKENS) hi = vc->max_tokens_limit;
    if (f->hi_from == HI_MAX_CHOICES) hi = vc->max_choices;
    if (v < lo || (f->lo_open && v == lo) || v > hi || (f->hi_open && v == hi)) {
        range_error(err, f, name, lo, hi, v);
        return -1;
    }
    store(r, f, v);
    return 0;
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

static int prompt_from_text(const validate_ctx *vc, job_params *p, const char *s, size_t len, api_error *err)
{
    if (len == 0) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value", "'prompt' must not be empty");
        return -1;
    }
    int32_t *t = NULL;
    int n = 0;
    int rc = validate_tokenize(vc, s, len, vc->add_bos, &t, &n);
    if (rc == VALIDATE_ENOMEM) return oom(err);
    if (rc < 0) {
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
        return oom(err);
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
    if (!t) return oom(err);
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
        return oom(err);
    }
    return 0;
}

static int parse_prompt(const validate_ctx *vc, job_params *p, json_t *x, api_error *err)
{
    if (!x || json_is_null(x)) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "missing_required_parameter",
                      "'prompt' is required");
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
     * (a 1 MB body holds 200,000 one-letter prompts: a long stall of the loop thread,
     * far longer under ASan with add_prompt's reallocs) */
    if (json_array_size(x) > (size_t)vc->max_choices) {
        api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_value",
                      "'prompt' may hold at most %d prompts (got %zu)", vc->max_choices, json_array_size(x));
        return -1;
    }
    size_t i;
    json_t *el;
    json_array_foreach(x, i, el)
    {
        int rc;
        if (json_is_string(el))
            rc = prompt_from_text(vc, p, json_string_value(el), json_string_length(el), err);
        else if (json_is_array(el))
            rc = prompt_from_ids(vc, p, el, err);
        else
            goto type;
        if (rc < 0) return -1;
    }
    return 0;
type:
    api_error_set(err, 400, "invalid_request_error", "prompt", "invalid_type",
                  "'prompt' must be a string, an array of token ids, or an array of those");
    return -1;
}

/* The one set of message rules (server_internal.h), for the plain rendering below and for
 * the chat templates (chat.c). */
int chat_check_messages(json_t *messages, api_error *err)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        BAD("messages", "'messages' must be a non-empty array");
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m)
    {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role) || json_string_length(role) == 0)
            BAD("messages", "'messages[%zu]' must be an object with a 'role' string", i);
        json_t *content = json_object_get(m, "content");
        if (!content || json_is_null(content) || json_is_string(content)) continue;
        const char *bad = json_is_array(content) ? NULL : "'messages' content must be a string or an array of parts";
        size_t k;
        json_t *part;
        json_array_foreach(content, k, part)
        {
            if (!bad && (!json_is_object(part) || !json_is_string(json_object_get(part, "text"))))
                bad = "'messages' content parts must be objects with a 'text' string";
        }
        if (bad) {
            api_error_set(err, 400, "invalid_request_error", "messages", "invalid_type", "%s", bad);
            goto fail;
        }
    }
    return 0;
fail:
    return -1;
}

/* A message's content (checked by chat_check_messages): a string, null, or text parts. */
static int append_content(sbuf *b, json_t *content)
{
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) return sbuf_append(b, json_string_value(content), json_string_length(content));
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *t = json_object_get(part, "text");
        if (sbuf_append(b, json_string_value(t), json_string_length(t)) < 0) return -1;
    }
    return 0;
}

char *chat_render(json_t *messages, api_error *err)
{
    if (chat_check_messages(messages, err) < 0) return NULL;
    sbuf b = { 0 };
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m)
    {
        json_t *role = json_object_get(m, "role");
        if (sbuf_append(&b, json_string_value(role), json_string_length(role)) < 0 || sbuf_append(&b, ": ", 2) < 0 ||
            append_content(&b, json_object_get(m, "content")) < 0 || sbuf_append(&b, "\n", 1) < 0)
            goto nomem;
    }
    if (sbuf_append(&b, "assistant:", 10) < 0) goto nomem;
    return b.data;
nomem:
    oom(err);
    sbuf_free(&b);
    return NULL;
}

static int parse_stop(job_params *p, json_t *x, api_error *err)
{
    if (!x || json_is_null(x)) return 0;
    json_t *one[1] = { x };
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(x)) {
        n = json_array_size(x);
        if (n > 4) {
            api_error_set(err, 400, "invalid_request_error", "stop", "invalid_value",
                          "'stop' may hold at most 4 strings");
            return -1;
        }
        items = NULL;
    } else if (!json_is_string(x)) {
        api_error_set(err, 400, "invalid_request_error", "stop", "invalid_type",
                      "'stop' must be a string or an array of strings");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(x, i);
        if (!json_is_string(s)) {
            api_error_set(err, 400, "invalid_request_error", "stop", "invalid_type",
                          "'stop' must be a string or an array of strings");
            return -1;
        }
        if (json_string_length(s) == 0 || strlen(json_string_value(s)) != json_string_length(s)) {
            api_error_set(err, 400, "invalid_request_error", "stop", "invalid_value",
                          "'stop' strings must not be empty");
            return -1;
        }
        char *copy = strdup(json_string_value(s));
        if (!copy) { return oom(err); }
        p->stops[p->n_stops++] = copy;
    }
    return 0;
}

/* A logit_bias key: decimal digits only (no sign, no spaces), leading zeros
 * allowed; the token id, or -1 if it is not one in [0, vocab). */
static long bias_key_id(const char *key, int vocab)
{
    if (!*key) return -1;
    long id = 0;
    for (const char *c = key; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        id = id * 10 + (*c - '0');
        if (id >= vocab) return -1;
    }
    return id;
}

static int parse_logit_bias(const validate_ctx *vc, job_params *p, json_t *x, api_error *err)
{
    if (!x || json_is_null(x)) return 0;
    if (!json_is_object(x)) {
        api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_type",
                      "'logit_bias' must be an object");
        return -1;
    }
    size_t n = json_object_size(x);
    if (n == 0) return 0;
    int32_t *ids = malloc(sizeof *ids * n);
    float *vals = malloc(sizeof *vals * n);
    if (!ids || !vals) {
        free(ids);
        free(vals);
        return oom(err);
    }
    p->sp.bias_ids = ids;
    p->sp.bias_values = vals;
    const char *key;
    json_t *v;
    int k = 0;
    json_object_foreach(x, key, v)
    {
        long id = bias_key_id(key, vc->vocab);
        if (id < 0) {
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
    /* one key per id ("1" and "01" are the same token: which value would win?); and
     * banning every token leaves nothing to sample -- both client errors, not a 500 */
    unsigned char *seen = calloc((size_t)vc->vocab, 1);
    if (!seen) return oom(err);
    int n_banned = 0;
    for (int i = 0; i < k; i++) {
        if (seen[ids[i]]) {
            free(seen);
            api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_value",
                          "'logit_bias' names token %d more than once (keys are token ids: \"1\" and \"01\" "
                          "are the same)",
                          (int)ids[i]);
            return -1;
        }
        seen[ids[i]] = 1;
        if (isinf(vals[i])) n_banned++;
    }
    free(seen);
    if (n_banned >= vc->vocab) {
        api_error_set(err, 400, "invalid_request_error", "logit_bias", "invalid_value",
                      "'logit_bias' bans every token of the vocabulary");
        return -1;
    }
    return 0;
}

/* Fields the table cannot express. */
static int read_model(const validate_ctx *vc, json_t *root, api_error *err)
{
    json_t *model = json_object_get(root, "model");
    if (!model || json_is_null(model)) return 0;
    if (!json_is_string(model)) BADTYPE("model", "a string");
    if (strcmp(json_string_value(model), vc->model_id) != 0) {
        api_error_set(err, 404, "invalid_request_error", "model", "model_not_found",
                      "The model '%.100s' does not exist (this server has '%.100s')", json_string_value(model),
                      vc->model_id);
        return -1;
    }
    return 0;
fail:
    return -1;
}

static int read_seed(json_t *root, job_params *p, api_error *err)
{
    json_t *x = json_object_get(root, "seed");
    if (x && !json_is_null(x)) {
        long long v;
        if (json_int(x, &v) < 0) BADTYPE("seed", "an integer");
        p->sp.seed = (uint64_t)v;
        p->has_seed = 1;
        return 0;
    }
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) s = (uint64_t)(srv_now() * 1e9);
    p->sp.seed = s;
    return 0;
fail:
    return -1;
}

/* "slide" (the last ctx tokens every step), "shift" or "stop"; absent: the server's default. */
static int read_context_overflow(const validate_ctx *vc, json_t *root, job_params *p, api_error *err)
{
    json_t *x = json_object_get(root, "context_overflow");
    p->context_overflow = vc->context_overflow;
    if (!x || json_is_null(x)) return 0;
    if (!json_is_string(x)) BADTYPE("context_overflow", "a string");
    int policy = sampler_crop_parse(json_string_value(x));
    if (policy < 0) BAD("context_overflow", "'context_overflow' must be \"slide\", \"shift\" or \"stop\"");
    p->context_overflow = policy;
    return 0;
fail:
    return -1;
}

/* The prompts against the window.  slide crops a longer prompt to its last ctx
 * tokens, as the reference decode loop does; with echo and logprobs each prompt position
 * past the first window is scored from its own window (one forward pass over the
 * window each, what generating a token costs), so at most --max-tokens-limit of
 * them.  shift and stop do not crop prompts: a longer one is refused. */
static int check_prompt_lengths(const validate_ctx *vc, int kind, job_params *p, api_error *err)
{
    const char *param = kind == JOB_CHAT ? "messages" : "prompt";
    for (int i = 0; i < p->n_prompts; i++) {
        int n = p->prompt_lens[i];
        if (n <= vc->ctx) continue;
        if (p->context_overflow != SAMPLER_CROP_SLIDE) {
            api_error_set(err, 400, "invalid_request_error", param, "context_length_exceeded",
                          "This model's context window is %d tokens; the prompt has %d (context_overflow "
                          "\"slide\" would keep its last %d)",
                          vc->ctx, n, vc->ctx);
            return -1;
        }
        if (p->echo && p->logprobs >= 0 && n - 1 - vc->ctx > vc->max_tokens_limit) {
            api_error_set(err, 400, "invalid_request_error", param, "context_length_exceeded",
                          "echo with logprobs scores each prompt token past the %d-token window from its own "
                          "window (one forward pass over the window each): this prompt needs %d of them, this "
                          "server allows %d (--max-tokens-limit)",
                          vc->ctx, n - 1 - vc->ctx, vc->max_tokens_limit);
            return -1;
        }
    }
    return 0;
}

/* A non-streamed answer is held whole until it ends, so it must fit in
 * --response-limit.  Refuse now what could not fit if the choices ran to
 * max_tokens, counting for each token the smallest logprobs entry the output
 * stage can write (text counts 0: a token may release none), plus the echoed
 * prompt's entries.  What passes may still hit the limit as it grows: it ends
 * then with the same error, without allocating past the limit. */
static int check_response_size(const validate_ctx *vc, const job_params *p, api_error *err)
{
    if (p->stream || !vc->response_limit) return 0;
    size_t per = output_min_token_bytes(p->kind, p->logprobs, vc->vocab);
    if (!per) return 0;
    double tokens = 0;
    for (int i = 0; i < p->n_prompts; i++)
        tokens += (double)p->n * ((double)p->max_tokens + (p->echo ? p->prompt_lens[i] : 0));
    double least = tokens * (double)per;
    if (least <= (double)vc->response_limit) return 0;
    api_error_set(err, 400, "invalid_request_error", "max_tokens", "response_too_large",
                  "this response would hold %.0f tokens with logprobs, at least %zu bytes each: %.0f bytes, over "
                  "the server's limit of %zu for a response that is not streamed (--response-limit); ask for "
                  "fewer tokens, choices or top_logprobs, or stream it",
                  tokens, per, least, vc->response_limit);
    return -1;
}

static int read_stream_options(json_t *root, job_params *p, api_error *err)
{
    json_t *so = json_object_get(root, "stream_options");
    if (!so || json_is_null(so)) return 0;
    if (!json_is_object(so)) BADTYPE("stream_options", "an object");
    if (!p->stream) BAD("stream_options", "'stream_options' is only allowed when 'stream' is true");
    json_t *iu = json_object_get(so, "include_usage");
    if (iu && !json_is_null(iu)) {
        if (!json_is_boolean(iu)) BADTYPE("stream_options", "an object whose 'include_usage' is a boolean");
        p->include_usage = json_is_true(iu);
    }
    return 0;
fail:
    return -1;
}

/* user (ignored), suffix (only empty). */
static int read_accepted(json_t *root, int kind, api_error *err)
{
    json_t *user = json_object_get(root, "user");
    if (user && !json_is_null(user) && !json_is_string(user)) BADTYPE("user", "a string");
    json_t *suffix = json_object_get(root, "suffix");
    if (kind == JOB_COMPLETION && suffix && !json_is_null(suffix) &&
        !(json_is_string(suffix) && json_string_length(suffix) == 0))
        BAD("suffix", "'suffix' is not supported");
    return 0;
fail:
    return -1;
}

/* response_format, grammar, choice (constraint.c).  A constrained text ends where the
 * grammar says: client stop strings are refused with it, and chat's implicit one is
 * not added; echo is refused with it (the prompt in front of the text would leave the
 * constraint's language). */
static int read_constraint(const validate_ctx *vc, json_t *root, job_params *p, api_error *err)
{
    constraint_error ce;
    if (constraint_from_request(vc->constraints, root, &p->constraint, &ce) < 0) {
        api_error_set(err, ce.status, ce.status == 503 ? "server_error" : "invalid_request_error", NULL, ce.code, "%s",
                      ce.message);
        if (ce.param[0]) {
            snprintf(err->param_buf, sizeof err->param_buf, "%s", ce.param);
            err->param = err->param_buf;
        }
        return -1;
    }
    if (p->constraint && p->n_stops > 0)
        BAD("stop", "'stop' cannot be combined with response_format, grammar or choice: the constraint decides "
                    "where the text ends");
    if (p->constraint && p->echo)
        BAD("echo", "'echo' cannot be combined with response_format, grammar or choice: the text would start "
                    "with the prompt, outside the constraint's language");
    return 0;
fail:
    return -1;
}

static int read_messages(const validate_ctx *vc, json_t *root, job_params *p, api_error *err)
{
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs || json_is_null(msgs)) {
        api_error_set(err, 400, "invalid_request_error", "messages", "missing_required_parameter",
                      "'messages' is required");
        return -1;
    }
    if (vc->chat_prompt) { /* the model's chat template (server/chat.c) */
        int32_t *toks = NULL;
        int n = 0;
        if (vc->chat_prompt(vc->chat_cls, msgs, &toks, &n, err) < 0) return -1;
        if (add_prompt(p, toks, n, 0) < 0) {
            free(toks);
            return oom(err);
        }
        if (vc->chat_stop_token >= 0) {
            p->has_stop_token = 1;
            p->stop_token = vc->chat_stop_token;
        }
        if (vc->chat_stop_text && p->n_stops < JOB_MAX_STOPS && !p->constraint) {
            char *s = strdup(vc->chat_stop_text);
            if (!s) return oom(err);
            p->stops[p->n_stops++] = s;
        }
        return 0;
    }
    char *text = chat_render(msgs, err);
    if (!text) return -1;
    int rc = prompt_from_text(vc, p, text, strlen(text), err);
    free(text);
    if (rc < 0) {
        err->param = "messages";
        return -1;
    }
    if (p->n_stops < JOB_MAX_STOPS && !p->constraint) {
        char *s = strdup("\nuser:");
        if (!s) { return oom(err); }
        p->stops[p->n_stops++] = s;
    }
    return 0;
}

int validate_request(const validate_ctx *vc, int kind, const char *body, size_t len, job_params *out, api_error *err)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_alloc_failed(); /* forget an earlier failure */
    json_t *root = json_loadb(body ? body : "", len, 0, &jerr);
    if (json_alloc_failed()) { /* even a parse that succeeded may have lost bytes of a string */
        json_decref(root);
        api_error_set(err, 503, "server_error", NULL, "out_of_memory", "out of memory");
        return -1;
    }
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
    request r = { 0 };
    job_params *p = &r.p;
    p->kind = kind;
    if (read_model(vc, root, err) < 0) goto fail;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const field *f = &fields[i];
        if (!(f->kinds & (1 << kind))) continue;
        const char *name = f->name;
        json_t *mct = json_object_get(root, "max_completion_tokens");
        if (f->hi_from == HI_MAX_TOKENS && kind == JOB_CHAT && mct && !json_is_null(mct))
            name = "max_completion_tokens"; /* chat's newer name wins */
        if (read_field(vc, root, f, name, &r, err) < 0) goto fail;
    }
    if (p->sp.top_k > vc->vocab) p->sp.top_k = vc->vocab;
    if (read_seed(root, p, err) < 0) goto fail;
    if (parse_logit_bias(vc, p, json_object_get(root, "logit_bias"), err) < 0) goto fail;
    if (parse_stop(p, json_object_get(root, "stop"), err) < 0) goto fail;
    if (read_stream_options(root, p, err) < 0) goto fail;
    if (read_context_overflow(vc, root, p, err) < 0) goto fail;
    if (read_accepted(root, kind, err) < 0) goto fail;
    if (read_constraint(vc, root, p, err) < 0) goto fail;
    if (r.best_of >= 0 && r.best_of != p->n) BAD("best_of", "'best_of' other than 'n' is not supported");
    if (kind == JOB_CHAT) {
        if (r.top_logprobs >= 0 && !r.chat_logprobs) BAD("top_logprobs", "'top_logprobs' requires 'logprobs': true");
        p->logprobs = r.chat_logprobs ? (r.top_logprobs > 0 ? r.top_logprobs : 0) : -1;
        if (read_messages(vc, root, p, err) < 0) goto fail;
    } else if (parse_prompt(vc, p, json_object_get(root, "prompt"), err) < 0) {
        goto fail;
    }

    if ((long long)p->n * p->n_prompts > vc->max_choices)
        BAD("n", "'n' times the number of prompts must be <= %d", vc->max_choices);
    if (check_prompt_lengths(vc, kind, p, err) < 0) goto fail;
    if (r.max_tokens >= 0) {
        p->max_tokens = r.max_tokens;
    } else if (kind == JOB_CHAT) {
        /* chat default: until the window is full -- and under slide, which goes on
         * past it, at least half a window when the history already fills most of it */
        long long room = vc->ctx - p->prompt_lens[0];
        if (p->context_overflow == SAMPLER_CROP_SLIDE && room < vc->ctx / 2) room = vc->ctx / 2;
        p->max_tokens = room < 1 ? 1 : room > vc->max_tokens_limit ? vc->max_tokens_limit : (int)room;
    } else {
        p->max_tokens = 16;
    }

    if (check_response_size(vc, p, err) < 0) goto fail;

    const char *bad = NULL;
    if (sampler_params_validate(&p->sp, vc->vocab, &bad) != SAMPLER_OK)
        BAD(bad ? bad : NULL, "'%s' is out of range", bad ? bad : "sampling parameters");
    json_decref(root);
    *out = r.p;
    return 0;
fail:
    json_decref(root);
    job_params_clear(p);
    return -1;
}
