/* routes.c -- the endpoints: completions, chat, models, health, metrics,
 * tokenize/detokenize and the static playground files. */
#include "server/http.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *path;
    int prefix;
    int route;
    unsigned methods;
} route_def;

static const route_def routes[] = {
    { "/v1/completions", 0, ROUTE_COMPLETIONS, M_POST }, { "/completions", 0, ROUTE_COMPLETIONS, M_POST },
    { "/v1/chat/completions", 0, ROUTE_CHAT, M_POST },   { "/chat/completions", 0, ROUTE_CHAT, M_POST },
    { "/v1/models", 0, ROUTE_MODELS, M_GET | M_HEAD },   { "/models", 0, ROUTE_MODELS, M_GET | M_HEAD },
    { "/v1/models/", 1, ROUTE_MODEL, M_GET | M_HEAD },   { "/health", 0, ROUTE_HEALTH, M_GET | M_HEAD },
    { "/metrics", 0, ROUTE_METRICS, M_GET | M_HEAD },    { "/tokenize", 0, ROUTE_TOKENIZE, M_POST },
    { "/detokenize", 0, ROUTE_DETOKENIZE, M_POST },      { "/tokenizer_info", 0, ROUTE_TOKENIZER_INFO, M_GET | M_HEAD },
};

int route_find(const char *url, unsigned *allowed)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const route_def *d = &routes[i];
        size_t n = strlen(d->path);
        if (d->prefix ? (strncmp(url, d->path, n) == 0 && url[n]) : strcmp(url, d->path) == 0) {
            *allowed = d->methods;
            return d->route;
        }
    }
    static_file f;
    if (static_lookup(url, &f) == 0) {
        *allowed = M_GET | M_HEAD;
        return ROUTE_STATIC;
    }
    return -1;
}

/* ---- GET ------------------------------------------------------------------------------- */

/* Every json_* call can fail for want of memory: `bad` collects the failures (a NULL
 * value makes json_object_set_new fail too) and the object is then not sent. */
static json_t *model_card(server *s)
{
    const model_info *mi = model_get_info(s->m);
    json_t *o = json_object();
    int bad = 0;
    bad |= json_object_set_new(o, "id", json_string(s->model_id));
    bad |= json_object_set_new(o, "object", json_string("model"));
    bad |= json_object_set_new(o, "created", json_integer(0));
    bad |= json_object_set_new(o, "owned_by", json_string("lmserve"));
    bad |= json_object_set_new(o, "architecture", json_string(mi->arch ? mi->arch : "unknown"));
    bad |= json_object_set_new(o, "format", json_string(mi->format ? mi->format : "unknown"));
    bad |= json_object_set_new(o, "weight_type", json_string(mi->weight_type ? mi->weight_type : "unknown"));
    bad |= json_object_set_new(o, "context_length", json_integer(s->ctx));
    bad |= json_object_set_new(o, "model_context_length", json_integer(mi->ctx_len));
    bad |= json_object_set_new(o, "vocab_size", json_integer(mi->vocab_size));
    bad |= json_object_set_new(o, "n_params", json_integer((json_int_t)mi->n_params));
    bad |= json_object_set_new(o, "n_layers", json_integer(mi->n_layers));
    bad |= json_object_set_new(o, "dim", json_integer(mi->dim));
    if (mi->sample_prompt) bad |= json_object_set_new(o, "sample_prompt", json_string(mi->sample_prompt));
    bad |= json_object_set_new(o, "chat_template", chat_card(&s->chat));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static enum MHD_Result get_static(server *s, http_req *r)
{
    static_file f;
    if (static_lookup(r->url, &f) < 0) {
        api_error e;
        api_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown route");
        return http_send_error(s, r, &e);
    }
    const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    const char *h[] = { "ETag", f.etag, "Cache-Control", "no-cache", NULL };
    if (f.etag && inm && strstr(inm, f.etag)) return http_send(s, r, 304, NULL, "", 0, h);
    return http_send(s, r, 200, f.content_type, f.data, f.len, f.etag ? h : h + 2);
}

/* ---- tokenize / detokenize / tokenizer_info -------------------------------------------------
 * Two request shapes: llama.cpp's {"content", "add_special", "with_pieces"} and vLLM's
 * {"prompt", "add_special_tokens"}, which lm-evaluation-harness's "remote" tokenizer sends.  The
 * text is characters ("</s>" typed is four of them) unless "parse_special" is true: the
 * default of vLLM's shape, whose clients expect a control token spelled in the text to be that
 * token (lm-eval finds the EOS id by tokenizing the eos_token of /tokenizer_info). */

#define OOM(e) api_error_set(e, 503, "server_error", NULL, "out_of_memory", "out of memory")

static json_t *parse_body(const http_req *r, api_error *e)
{
    json_error_t je;
    json_alloc_failed(); /* forget an earlier failure */
    json_t *root = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &je);
    if (json_alloc_failed()) { /* even a parse that succeeded may have lost bytes of a string */
        json_decref(root);
        OOM(e);
        return NULL;
    }
    if (!root) {
        api_error_set(e, 400, "invalid_request_error", NULL, "invalid_json", "request body is not valid JSON: %s",
                      je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        api_error_set(e, 400, "invalid_request_error", NULL, "invalid_json", "request body must be a JSON object");
        return NULL;
    }
    return root;
}

static int opt_bool(json_t *root, const char *key, int dflt, int *out, api_error *e)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return 0;
    }
    if (!json_is_boolean(v)) {
        api_error_set(e, 400, "invalid_request_error", key, "invalid_type", "'%s' must be a boolean", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

/* Tokens of text[0..len) into a malloc'd list: 0, VALIDATE_ENOMEM, or another negative
 * code (untokenizable). */
static int tokenize_text(server *s, const char *text, size_t len, int add_bos, int special, int32_t **out, int *n_out)
{
    if (!special) return validate_tokenize(&s->vc, text, len, add_bos, out, n_out);
    int cap = (int)(len + 8 < 1024 ? len + 8 : 1024);
    for (;;) {
        int32_t *buf = malloc(sizeof *buf * (size_t)cap);
        if (!buf) return VALIDATE_ENOMEM;
        int n = model_tokenize_special(s->m, text, len, add_bos, buf, cap);
        if (n < 0) {
            free(buf);
            return n == MODEL_ENOMEM ? VALIDATE_ENOMEM : n;
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

/* {"tokens", "count", "max_model_len", "pieces"?} as JSON text, or NULL out of memory.
 * Every json_* call here can fail for want of memory: `bad` collects it (a NULL value makes
 * the append or set fail too), and jansson's own dropped allocations are caught after. */
static char *tokenize_answer(server *s, const int32_t *toks, int n, int pieces)
{
    json_alloc_failed(); /* forget an earlier failure */
    json_t *o = json_object(), *arr = json_array(), *pa = pieces ? json_array() : NULL;
    int bad = !o || !arr || (pieces && !pa);
    for (int i = 0; !bad && i < n; i++) {
        bad |= json_array_append_new(arr, json_integer(toks[i])) < 0;
        if (pa) {
            /* each token's own vocabulary string (byte tokens show as "<0xNN>", as stored) */
            const char *str = model_token_str(s->m, toks[i]);
            json_t *v = str ? json_string(str) : NULL; /* NULL too when not UTF-8 */
            bad |= json_array_append_new(pa, v ? v : json_string("")) < 0;
        }
    }
    bad = bad || json_object_set(o, "tokens", arr) < 0;
    bad = bad || json_object_set_new(o, "count", json_integer(n)) < 0; /* vLLM's fields */
    bad = bad || json_object_set_new(o, "max_model_len", json_integer(s->ctx)) < 0;
    bad = bad || (pa && json_object_set(o, "pieces", pa) < 0);
    char *text = bad ? NULL : json_dumps(o, JSON_COMPACT);
    json_decref(arr);
    json_decref(pa);
    json_decref(o);
    if (json_alloc_failed()) { /* jansson may have dropped part of the text without saying */
        free(text);
        text = NULL;
    }
    return text;
}

static void set_answer(http_req *r, char *text)
{
    r->wbody = text;
    if (text) {
        r->wbody_len = strlen(text);
        r->wrc = 0;
    } else {
        OOM(&r->werr);
    }
}

static void tokenize_work(http_req *r)
{
    server *s = r->srv;
    api_error *e = &r->werr;
    r->wrc = -1;
    json_t *root = parse_body(r, e);
    if (!root) return;
    const char *key = json_object_get(root, "content") ? "content" : "prompt";
    int vllm = !strcmp(key, "prompt");
    json_t *c = json_object_get(root, key);
    int add = 1, pieces = 0, special = 0;
    if (!json_is_string(c)) {
        if (!c)
            api_error_set(e, 400, "invalid_request_error", "content", "missing_required_parameter",
                          "'content' (or 'prompt') is required");
        else
            api_error_set(e, 400, "invalid_request_error", key, "invalid_type", "'%s' must be a string", key);
        goto out;
    }
    if (opt_bool(root, "add_special", 1, &add, e) < 0 || opt_bool(root, "add_special_tokens", add, &add, e) < 0 ||
        opt_bool(root, "with_pieces", 0, &pieces, e) < 0 || opt_bool(root, "parse_special", vllm, &special, e) < 0)
        goto out;
    int32_t *toks = NULL;
    int n = 0;
    int trc = tokenize_text(s, json_string_value(c), json_string_length(c), add && s->vc.add_bos, special, &toks, &n);
    if (trc == VALIDATE_ENOMEM) {
        OOM(e);
    } else if (trc < 0) {
        api_error_set(e, 400, "invalid_request_error", key, "invalid_value", "'%s' could not be tokenized", key);
    } else {
        set_answer(r, tokenize_answer(s, toks, n, pieces));
        free(toks);
    }
out:
    json_decref(root);
}

static void detokenize_work(http_req *r)
{
    server *s = r->srv;
    api_error *e = &r->werr;
    r->wrc = -1;
    json_t *root = parse_body(r, e);
    if (!root) return;
    json_t *t = json_object_get(root, "tokens");
    if (!json_is_array(t)) {
        api_error_set(e, 400, "invalid_request_error", "tokens", "invalid_type",
                      "'tokens' must be an array of token ids");
        json_decref(root);
        return;
    }
    size_t n = json_array_size(t);
    int32_t *ids = malloc(sizeof *ids * (n ? n : 1));
    if (!ids) {
        json_decref(root);
        OOM(e);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(t, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= s->vc.vocab) {
            api_error_set(e, 400, "invalid_request_error", "tokens", "invalid_value",
                          "'tokens[%zu]' is not a token id in [0, %d)", i, s->vc.vocab);
            free(ids);
            json_decref(root);
            return;
        }
        ids[i] = (int32_t)json_integer_value(x);
    }
    json_decref(root);
    /* "content" keeps llama.cpp's text: a SentencePiece space prefix on the first piece stays
     * unless the list starts with BOS, so the texts of consecutive lists concatenate.
     * "prompt" is decoded as Hugging Face's tokenizers (and so vLLM) decode a whole sequence:
     * that space goes, as if the list started with BOS -- lm-evaluation-harness sends the
     * decoded text back as a prompt and counts on it tokenizing to the same ids. */
    size_t len = 0, plen = 0;
    char *text = model_detokenize(s->m, ids, (int)n, &len);
    char *ptext = NULL;
    int oom = !text;
    const model_info *mi = model_get_info(s->m);
    if (!oom && mi->bos_id >= 0 && n > 0 && ids[0] != mi->bos_id) {
        int32_t *with_bos = malloc(sizeof *with_bos * (n + 1));
        if (with_bos) {
            with_bos[0] = mi->bos_id;
            memcpy(with_bos + 1, ids, sizeof *ids * n);
            ptext = model_detokenize(s->m, with_bos, (int)n + 1, &plen);
            free(with_bos);
        }
        oom = !ptext;
    }
    free(ids);
    char *answer = NULL;
    if (!oom) {
        json_alloc_failed(); /* forget an earlier failure */
        json_t *o = json_object();
        int bad = json_object_set_new(o, "content", json_bytes(text, len)) < 0;
        bad = bad || json_object_set_new(o, "prompt", ptext ? json_bytes(ptext, plen) : json_bytes(text, len)) < 0;
        answer = bad ? NULL : json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (json_alloc_failed()) { /* jansson may have dropped part of the text without saying */
            free(answer);
            answer = NULL;
        }
    }
    free(text);
    free(ptext);
    set_answer(r, answer);
}

/* the work's answer: its JSON, or its error */
static enum MHD_Result finish_answer(server *s, http_req *r)
{
    if (r->wrc < 0) return http_send_error(s, r, &r->werr);
    char *body = r->wbody;
    r->wbody = NULL;
    return http_send_owned(s, r, 200, "application/json", body, r->wbody_len, NULL);
}

/* A special token's text as a JSON string, or null when the model has none. */
static json_t *token_text_json(server *s, int32_t id)
{
    size_t n = 0;
    const char *t = id >= 0 ? model_token_bytes(s->m, id, &n) : NULL;
    return t ? json_bytes(t, n) : json_null();
}

/* GET /tokenizer_info: the tokenizer as vLLM describes it.  lm-evaluation-harness's "remote"
 * tokenizer backend needs eos_token (and reads bos_token, pad_token and chat_template); the
 * class names the Hugging Face tokenizer with the same algorithm. */
static enum MHD_Result get_tokenizer_info(server *s, http_req *r)
{
    const model_info *mi = model_get_info(s->m);
    const char *cls = !mi->tokenizer                             ? "unknown"
                      : !strcmp(mi->tokenizer, "sentencepiece")  ? "LlamaTokenizer"
                      : !strcmp(mi->tokenizer, "byte-level-bpe") ? "GPT2Tokenizer"
                                                                 : "PreTrainedTokenizerFast";
    json_t *o = json_object();
    int bad = json_object_set_new(o, "tokenizer_class", json_string(cls));
    bad |= json_object_set_new(o, "bos_token", token_text_json(s, mi->bos_id));
    bad |= json_object_set_new(o, "eos_token", token_text_json(s, mi->eos_id));
    bad |= json_object_set_new(o, "pad_token", json_null());
    bad |= json_object_set_new(o, "bos_token_id", mi->bos_id >= 0 ? json_integer(mi->bos_id) : json_null());
    bad |= json_object_set_new(o, "eos_token_id", mi->eos_id >= 0 ? json_integer(mi->eos_id) : json_null());
    bad |= json_object_set_new(o, "add_bos_token", json_boolean(mi->add_bos && mi->bos_id >= 0));
    bad |= json_object_set_new(o, "add_eos_token", json_false());
    bad |= json_object_set_new(o, "model_max_length", json_integer(s->ctx));
    bad |= json_object_set_new(o, "vocab_size", json_integer(mi->vocab_size));
    bad |= json_object_set_new(o, "chat_template", s->chat.tpl ? json_string(s->chat.source_text) : json_null());
    if (bad) json_decref(o);
    return http_send_json(s, r, 200, bad ? NULL : o);
}

/* ---- completions ---------------------------------------------------------------------------- */

static void completion_work(http_req *r)
{
    int kind = r->route == ROUTE_CHAT ? JOB_CHAT : JOB_COMPLETION;
    r->wrc = validate_request(&r->srv->vc, kind, r->body.data, r->body.len, &r->wp, &r->werr);
}

static enum MHD_Result completion_finish(server *s, http_req *r)
{
    api_error e;
    if (r->wrc < 0) return http_send_error(s, r, &r->werr);
    if (s->draining) {
        api_error_set(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        return http_send_error(s, r, &e);
    }
    job *j = job_new(s, &r->wp, s->model_id); /* takes r->wp's contents */
    if (!j) return http_send_oom(s, r);
    if (engine_submit(s->eng, j) < 0) {
        job_unref(j);
        api_error_set(&e, 503, "server_error", NULL, "queue_full", "the server is busy (queue full); retry later");
        return http_send_error(s, r, &e);
    }
    r->job = j; /* the request's reference */
    j->req = r;
    if (j->p.stream) return http_send_stream(s, r);
    r->waiting = 1;
    http_park(s, r);
    return MHD_YES;
}

static enum MHD_Result post_completion(server *s, http_req *r)
{
    if (s->draining) {
        api_error e;
        api_error_set(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        return http_send_error(s, r, &e);
    }
    r->work_fn = completion_work;
    r->finish_fn = completion_finish;
    return http_offload(s, r);
}

enum MHD_Result routes_resume(server *s, http_req *r)
{
    job *j = r->job;
    uv_mutex_lock(&j->mu);
    int done = j->done;
    uv_mutex_unlock(&j->mu);
    int c = atomic_load(&j->cancel);
    if (r->out_broken) {
        r->waiting = 0;
        return http_send_oom(s, r);
    }
    if (c == CANCEL_CLIENT || c == CANCEL_OVERFLOW) return MHD_NO;
    if (!done) {
        http_park(s, r);
        return MHD_YES;
    }
    r->waiting = 0;
    return http_send_job_body(s, r, j->status,
                              j->status == 503 ? (const char *const[]){ "Retry-After", "1", NULL } : NULL);
}

enum MHD_Result routes_dispatch(server *s, http_req *r)
{
    api_error e;
    json_alloc_failed(); /* from here, a failure of jansson's is this request's (http_send_json) */
    switch (r->route) {
    case ROUTE_COMPLETIONS:
    case ROUTE_CHAT: return post_completion(s, r);
    case ROUTE_TOKENIZE:
        r->work_fn = tokenize_work;
        r->finish_fn = finish_answer;
        return http_offload(s, r);
    case ROUTE_DETOKENIZE:
        r->work_fn = detokenize_work;
        r->finish_fn = finish_answer;
        return http_offload(s, r);
    case ROUTE_TOKENIZER_INFO: return get_tokenizer_info(s, r);
    case ROUTE_HEALTH: {
        json_t *o = json_object();
        int bad = json_object_set_new(o, "status", json_string(s->draining ? "draining" : "ok"));
        bad |= json_object_set_new(o, "version", json_string(s->cfg.version ? s->cfg.version : "unknown"));
        if (bad) json_decref(o);
        return http_send_json(s, r, s->draining ? 503 : 200, bad ? NULL : o);
    }
    case ROUTE_MODELS: {
        json_t *o = json_object(), *data = json_array();
        int bad = json_array_append_new(data, model_card(s));
        bad |= json_object_set_new(o, "object", json_string("list"));
        bad |= json_object_set_new(o, "data", data);
        if (bad) json_decref(o);
        return http_send_json(s, r, 200, bad ? NULL : o);
    }
    case ROUTE_MODEL: {
        const char *id = r->url + strlen("/v1/models/");
        if (strcmp(id, s->model_id) != 0) {
            api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                          "The model '%.100s' does not exist", id);
            return http_send_error(s, r, &e);
        }
        return http_send_json(s, r, 200, model_card(s));
    }
    case ROUTE_METRICS: {
        sbuf b = { 0 };
        int q = 0, rr = 0, rs = 0;
        engine_stats(s->eng, &q, &rr, &rs);
        int bad = metrics_render(&s->met, &b, q, rr, rs, s->cfg.parallel) < 0;
        bad |= sbuf_printf(&b,
                           "# HELP lmserve_loop_busy_seconds_total CPU time the loop thread spent in its callbacks.\n"
                           "# TYPE lmserve_loop_busy_seconds_total counter\nlmserve_loop_busy_seconds_total %.6f\n"
                           "# HELP lmserve_loop_busy_max_seconds Longest CPU time of one loop callback, during "
                           "which every other connection waited.\n"
                           "# TYPE lmserve_loop_busy_max_seconds gauge\nlmserve_loop_busy_max_seconds %.6f\n",
                           s->loop_busy_total, s->loop_busy_max) < 0;
        if (bad) {
            sbuf_free(&b);
            return http_send_oom(s, r);
        }
        enum MHD_Result ret =
            http_send(s, r, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "", b.len, NULL);
        sbuf_free(&b);
        return ret;
    }
    case ROUTE_STATIC: return get_static(s, r);
    default:
        api_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown route");
        return http_send_error(s, r, &e);
    }
}
