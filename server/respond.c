/* respond.c -- byte buffers, UTF-8 helpers, OpenAI error bodies and stop-string
 * matching (the responses themselves are output.c's). */
#include "server/server_internal.h"
#include "model/model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- sbuf ---------------------------------------------------------------------- */

int sbuf_append(sbuf *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - b->len - 1) return -1;
    if (b->len + n + 1 > b->cap) {
        /* doubling while small; past 64 KiB a quarter more each time, so a large
         * answer's buffers hold at most ~25 % unused (realloc of such blocks remaps
         * pages rather than copying them) */
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            size_t more = cap < (1u << 16) ? cap : cap / 4;
            cap = cap > SIZE_MAX - more ? b->len + n + 1 : cap + more;
        }
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int sbuf_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) return sbuf_append(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sbuf_append(b, big, (size_t)n);
    free(big);
    return rc;
}

void sbuf_free(sbuf *b)
{
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- UTF-8 ----------------------------------------------------------------------- */

/* The UTF-8 rule is model_utf8_decode's (model.h): one decoder for the whole server. */

size_t utf8_valid_prefix(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = model_utf8_decode(s + i, n - i, &cp);
        if (cp > 0x10FFFF) break; /* ill-formed or cut off */
        i += l;
    }
    return i;
}

size_t utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

json_t *json_bytes(const char *s, size_t n)
{
    if (utf8_valid_prefix(s, n) == n) return json_stringn(s, n);
    sbuf b = { 0 };
    size_t i = 0;
    while (i < n) { /* one U+FFFD per ill-formed part, as the detokenizer does */
        uint32_t cp;
        size_t l = model_utf8_decode(s + i, n - i, &cp);
        int rc = cp <= 0x10FFFF ? sbuf_append(&b, s + i, l) : sbuf_append(&b, "\xEF\xBF\xBD", 3);
        if (rc < 0) {
            sbuf_free(&b);
            return NULL;
        }
        i += l;
    }
    json_t *r = json_stringn(b.data ? b.data : "", b.len);
    sbuf_free(&b);
    return r;
}

/* ---- Errors ------------------------------------------------------------------------ */

void api_error_set(api_error *e, int status, const char *type, const char *param, const char *code, const char *fmt,
                   ...)
{
    e->status = status;
    e->type = type;
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *api_error_json(const api_error *e)
{
    json_t *err = json_object();
    json_object_set_new(err, "message", json_bytes(e->message, strlen(e->message)));
    json_object_set_new(err, "type", json_string(e->type ? e->type : "invalid_request_error"));
    json_object_set_new(err, "param", e->param ? json_string(e->param) : json_null());
    json_object_set_new(err, "code", e->code ? json_string(e->code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

/* ---- Stop strings ----------------------------------------------------------------- */

int stop_matcher_push(stop_matcher *sm, char *const *stops, int n_stops, const char *text, size_t n, size_t *release)
{
    if (n && sbuf_append(&sm->pending, text, n) < 0) {
        *release = 0;
        return -1;
    }
    const char *p = sm->pending.data ? sm->pending.data : "";
    size_t len = sm->pending.len;
    /* earliest complete match */
    size_t best = (size_t)-1;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (!sl || sl > len) continue;
        const char *m = memmem(p, len, stops[i], sl);
        if (m && (size_t)(m - p) < best) best = (size_t)(m - p);
    }
    if (best != (size_t)-1) {
        sm->pending.len = best;
        if (sm->pending.data) sm->pending.data[best] = '\0';
        *release = best;
        return 1;
    }
    /* hold back the longest suffix that is a proper prefix of a stop string */
    size_t hold = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        size_t k = sl - 1 < len ? sl - 1 : len;
        for (; k > hold; k--)
            if (!memcmp(p + len - k, stops[i], k)) break;
        if (k > hold) hold = k;
    }
    *release = len - hold;
    return 0;
}

void stop_matcher_consume(stop_matcher *sm, size_t n)
{
    if (n >= sm->pending.len) {
        sm->pending.len = 0;
        if (sm->pending.data) sm->pending.data[0] = '\0';
        return;
    }
    memmove(sm->pending.data, sm->pending.data + n, sm->pending.len - n + 1);
    sm->pending.len -= n;
}

void stop_matcher_free(stop_matcher *sm)
{
    if (sm) sbuf_free(&sm->pending);
}
