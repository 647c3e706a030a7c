/* loadgen.c -- closed-loop load generator for lmserve's streaming completions.
 *
 * N client threads (one blocking socket each) on loopback, each sending
 * POST /v1/completions with "stream": true back to back, for a bounded number of
 * requests per client and a bounded time, whichever ends first: no request starts
 * after --duration; one in flight then may finish, unless --max-time (a hard end)
 * comes first, when it is abandoned (its socket shut down) and the tokens it had
 * streamed still count.  Connections are kept alive (HTTP/1.1, one connection per
 * client, reopened if the server closes it); --new-connection opens one per request.
 *
 * Each response is read as HTTP/1.1 (chunked or Content-Length), then as
 * server-sent events: `data: {json}` lines, dispatched on the blank line, until
 * `data: [DONE]`.  The JSON is not parsed in full, only scanned for the few keys
 * needed: a chunk whose choices carry a non-empty "text" (or chat "content") is a
 * content chunk; the usage chunk (asked for with stream_options.include_usage)
 * gives the exact completion_tokens.  Without a usage chunk the count of content
 * chunks stands in for the token count.  Scanning relies on one property of JSON:
 * inside a string every '"' is escaped, so `"key"` followed by ':' only matches a key.
 *
 * Reported: aggregate generated tokens/s (all tokens received over the wall time
 * from the start to the last response, or to the hard end), time to first token
 * (request sent -> first content chunk; for a request abandoned before its first
 * token, the time it had waited, a lower bound) p50/p99, per-stream decode rate
 * (median over completed requests of (tokens - 1) / (last content chunk - first
 * content chunk)), request latency p50/p99 of completed requests and errors.
 * Percentiles are nearest-rank.  --csv writes one line per request.
 *
 *   build/release/bench/loadgen --url http://127.0.0.1:8080 --concurrency 16 \
 *       --max-tokens 128 --temperature 0.8 --duration 15 --max-time 30 [--json]
 *
 * Only loopback addresses are accepted: this is a benchmark, not a stress tool for
 * other people's servers.  CPU cost is kept low (one recv per socket read, memchr
 * scans, no allocation per chunk) because it shares the machine with the server. */
#include "bench/bench_util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum { LG_MAX_CONCURRENCY = 1024, LG_BUF = 16384, LG_ERRLEN = 200, LG_MAX_EVENT = 16 << 20 };

/* ---- Configuration -------------------------------------------------------------- */

typedef struct {
    char host[256];
    char port[16];
    char path[512];
    struct sockaddr_storage addr; /* resolved once, loopback only */
    socklen_t addrlen;
    int concurrency;
    int max_tokens;
    double temperature;
    const char *prompt;
    const char *model;   /* "model" field, or NULL to leave it out */
    const char *api_key; /* Authorization: Bearer, or NULL */
    long long seed;      /* request r of client c gets seed + c + r * concurrency */
    int use_seed;
    double duration;         /* seconds; no new request starts after this */
    int requests_per_client; /* 0 = unbounded (duration only) */
    double timeout;          /* per socket read, seconds */
    double max_time;         /* > 0: requests still in flight then are abandoned */
    int include_usage;
    int keep_alive;
    int json;
    const char *csv; /* per-request rows to this file, or NULL */
    int chat;        /* path ends with /chat/completions: send messages */
} lg_config;

/* ---- One request's timings --------------------------------------------------------- */

typedef struct {
    double t_start; /* request written (seconds since the run began) */
    double t_first; /* first content chunk, or < 0 */
    double t_last;  /* last content chunk */
    double t_end;   /* response complete */
    int tokens;     /* usage.completion_tokens, else content chunks */
    int chunks;     /* content chunks */
    int from_usage; /* tokens came from a usage chunk */
    int complete;   /* 0: abandoned at --max-time (tokens = chunks so far) */
} lg_sample;

/* What the clients share with the main thread: how many still run, and the stop
 * flag raised at --max-time (after which every socket is shut down). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running;
    int stop;      /* under mu; read by clients through lg_stopped() */
    double t_stop; /* seconds since t0 */
} lg_shared;

/* A blocking connection with a read buffer.  fd is written under mu by its client
 * thread and read under mu by the main thread (to shut it down at --max-time). */
typedef struct {
    pthread_mutex_t mu;
    int fd;
    size_t pos, len;
    char buf[LG_BUF];
} lg_conn;

typedef struct {
    const lg_config *cfg;
    lg_shared *sh;
    int index;
    double t0;          /* run start, CLOCK_MONOTONIC seconds */
    lg_sample *samples; /* successful requests, then abandoned ones (complete = 0) */
    int n_samples, cap_samples;
    int errors, http_503, timeouts, reconnects;
    char first_error[LG_ERRLEN];
    lg_conn conn;
} lg_client;

static void lg_client_error(lg_client *cl, const char *fmt, ...)
{
    cl->errors++;
    if (cl->first_error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cl->first_error, sizeof cl->first_error, fmt, ap);
    va_end(ap);
}

/* ---- Buffered blocking connection --------------------------------------------------- */

static void lg_conn_close(lg_conn *c);
static int lg_stopped(lg_shared *sh);

/* Returns 0, or -1 with errno set.  The fd is published before the stop flag is
 * checked, so the main thread either shuts it down or this sees the flag. */
static int lg_conn_open(lg_conn *c, const lg_config *cfg, lg_shared *sh)
{
    c->pos = c->len = 0;
    int fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    pthread_mutex_lock(&c->mu);
    c->fd = fd;
    pthread_mutex_unlock(&c->mu);
    if (lg_stopped(sh)) {
        lg_conn_close(c);
        errno = ECANCELED;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = { .tv_sec = (time_t)cfg->timeout,
                          .tv_usec = (suseconds_t)((cfg->timeout - floor(cfg->timeout)) * 1e6) };
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(c->fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) != 0) {
        int e = errno;
        lg_conn_close(c);
        errno = e;
        return -1;
    }
    return 0;
}

static void lg_conn_close(lg_conn *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    pthread_mutex_unlock(&c->mu);
    c->pos = c->len = 0;
}

/* From the main thread: make the client's blocking read return at once. */
static void lg_conn_interrupt(lg_conn *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&c->mu);
}

static int lg_stopped(lg_shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    int st = sh->stop;
    pthread_mutex_unlock(&sh->mu);
    return st;
}

/* Read more bytes into the buffer (compacting it first).  1 = got bytes, 0 = EOF,
 * -1 = error (errno; EAGAIN means the read timed out). */
static int lg_conn_fill(lg_conn *c)
{
    if (c->pos > 0) {
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
    }
    if (c->len == sizeof c->buf) {
        errno = EMSGSIZE;
        return -1;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            return 1;
        }
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* Next line (without CR LF) as a pointer into the buffer, valid until the next read.
 * Returns its length, or -1 on EOF/error before a full line. */
static long lg_conn_line(lg_conn *c, char **line)
{
    for (;;) {
        char *nl = memchr(c->buf + c->pos, '\n', c->len - c->pos);
        if (nl) {
            char *s = c->buf + c->pos;
            size_t n = (size_t)(nl - s);
            c->pos += n + 1;
            if (n > 0 && s[n - 1] == '\r') n--;
            s[n] = '\0';
            *line = s;
            return (long)n;
        }
        if (lg_conn_fill(c) <= 0) return -1;
    }
}

static int lg_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- Server-sent events --------------------------------------------------------------- */

typedef struct {
    char *line; /* the line being assembled */
    size_t llen, lcap;
    char *data; /* the event's data lines, joined by '\n' */
    size_t dlen, dcap;
    int has_data;
    /* What the events said, for the current request. */
    double t0;
    lg_sample *s;
    int done, error, usage_seen;
    char err[LG_ERRLEN];
} lg_sse;

static int lg_grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    if (need > LG_MAX_EVENT) /* a runaway line or event: treat the stream as broken */
        return -1;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    char *q = realloc(*p, c);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* Position just after `"key"` followed by optional blanks and ':' (then blanks), or NULL. */
static const char *lg_json_key(const char *js, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = js; (p = strchr(p, '"')) != NULL; p++) {
        if (strncmp(p + 1, key, kl) != 0 || p[1 + kl] != '"') continue;
        const char *q = p + 2 + kl;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
        if (*q != ':') continue;
        q++;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
        return q;
    }
    return NULL;
}

/* Number of non-empty string values of `"key":` in js. */
static int lg_json_count_nonempty(const char *js, const char *key)
{
    int n = 0;
    const char *p = js;
    while ((p = lg_json_key(p, key)) != NULL) {
        if (p[0] == '"' && p[1] != '"') n++;
    }
    return n;
}

static void lg_sse_event(lg_sse *e)
{
    const char *js = e->data;
    if (strcmp(js, "[DONE]") == 0) {
        e->done = 1;
        return;
    }
    if (e->done) return;
    const char *er = lg_json_key(js, "error");
    if (er && strncmp(er, "null", 4) != 0) {
        if (!e->error) {
            const char *m = lg_json_key(er, "message");
            snprintf(e->err, sizeof e->err, "error event: %.150s", m ? m : er);
        }
        e->error = 1;
        return;
    }
    int content = lg_json_count_nonempty(js, "text") + lg_json_count_nonempty(js, "content");
    if (content > 0) {
        double t = cli_seconds(CLOCK_MONOTONIC) - e->t0;
        if (e->s->t_first < 0) e->s->t_first = t;
        e->s->t_last = t;
        e->s->chunks += content;
    }
    const char *u = lg_json_key(js, "usage");
    if (u && *u == '{') {
        const char *ct = lg_json_key(u, "completion_tokens");
        if (ct && *ct >= '0' && *ct <= '9') {
            e->s->tokens = (int)strtol(ct, NULL, 10);
            e->usage_seen = 1;
        }
    }
}

static int lg_sse_line(lg_sse *e)
{
    char *l = e->line;
    size_t n = e->llen;
    if (n > 0 && l[n - 1] == '\r') n--;
    if (n == 0) { /* blank line: dispatch */
        if (e->has_data) {
            e->data[e->dlen] = '\0';
            lg_sse_event(e);
        }
        e->dlen = 0;
        e->has_data = 0;
        return 0;
    }
    if (n >= 5 && memcmp(l, "data:", 5) == 0) {
        size_t off = 5;
        if (off < n && l[off] == ' ') off++;
        size_t add = n - off + (e->has_data ? 1 : 0);
        if (lg_grow(&e->data, &e->dcap, e->dlen + add + 1) != 0) return -1;
        if (e->has_data) e->data[e->dlen++] = '\n';
        memcpy(e->data + e->dlen, l + off, n - off);
        e->dlen += n - off;
        e->has_data = 1;
    }
    /* Comments (':'), event:, id:, retry: are ignored. */
    return 0;
}

static int lg_sse_feed(lg_sse *e, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        if (lg_grow(&e->line, &e->lcap, e->llen + take + 1) != 0) return -1;
        memcpy(e->line + e->llen, p, take);
        e->llen += take;
        p += take;
        n -= take;
        if (nl) {
            e->line[e->llen] = '\0';
            if (lg_sse_line(e) != 0) return -1;
            e->llen = 0;
            p++;
            n--;
        }
    }
    return 0;
}

static void lg_sse_reset(lg_sse *e, double t0, lg_sample *s)
{
    e->llen = e->dlen = 0;
    e->has_data = 0;
    e->t0 = t0;
    e->s = s;
    e->done = e->error = e->usage_seen = 0;
    e->err[0] = '\0';
}

/* ---- One HTTP exchange ------------------------------------------------------------------- */

typedef struct {
    int status;
    int chunked;
    long long content_length; /* -1 = unknown */
    int close;                /* the server will close the connection */
    int got_any;              /* any response byte arrived */
} lg_resp;

static int lg_read_headers(lg_conn *c, lg_resp *r)
{
    char *line;
    r->status = 0;
    r->chunked = 0;
    r->content_length = -1;
    r->close = 0;
    r->got_any = 0;
    long n = lg_conn_line(c, &line);
    if (n < 0) return -1;
    r->got_any = 1;
    int minor = 1;
    if (sscanf(line, "HTTP/1.%d %d", &minor, &r->status) != 2) return -1;
    if (minor == 0) r->close = 1;
    for (;;) {
        n = lg_conn_line(c, &line);
        if (n < 0) return -1;
        if (n == 0) return 0;
        char *colon = strchr(line, ':');
        if (!colon) continue;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        if (strcasecmp(line, "content-length") == 0)
            r->content_length = strtoll(v, NULL, 10);
        else if (strcasecmp(line, "transfer-encoding") == 0 && strcasestr(v, "chunked"))
            r->chunked = 1;
        else if (strcasecmp(line, "connection") == 0) {
            if (strcasestr(v, "close"))
                r->close = 1;
            else if (strcasestr(v, "keep-alive"))
                r->close = 0;
        }
    }
}

/* Pass n body bytes (n < 0: until EOF) to the SSE parser, or to `keep` (error bodies). */
static int lg_body_bytes(lg_conn *c, long long n, lg_sse *sse, char *keep, size_t *kept, size_t keepcap)
{
    while (n != 0) {
        if (c->pos == c->len) {
            int f = lg_conn_fill(c);
            if (f < 0) return -1;
            if (f == 0) return n < 0 ? 0 : -1;
        }
        size_t m = c->len - c->pos;
        if (n > 0 && (long long)m > n) m = (size_t)n;
        if (sse) {
            if (lg_sse_feed(sse, c->buf + c->pos, m) != 0) return -1;
        } else if (keep && *kept + 1 < keepcap) {
            size_t k = keepcap - 1 - *kept < m ? keepcap - 1 - *kept : m;
            memcpy(keep + *kept, c->buf + c->pos, k);
            *kept += k;
            keep[*kept] = '\0';
        }
        c->pos += m;
        if (n > 0) n -= (long long)m;
    }
    return 0;
}

static int lg_read_body(lg_conn *c, const lg_resp *r, lg_sse *sse, char *keep, size_t keepcap)
{
    size_t kept = 0;
    if (keep) keep[0] = '\0';
    if (r->chunked) {
        for (;;) {
            char *line;
            if (lg_conn_line(c, &line) < 0) return -1;
            char *end;
            long long size = strtoll(line, &end, 16);
            if (end == line || size < 0) return -1;
            if (size == 0) { /* trailers until a blank line */
                for (;;) {
                    long n = lg_conn_line(c, &line);
                    if (n < 0) return -1;
                    if (n == 0) return 0;
                }
            }
            if (lg_body_bytes(c, size, sse, keep, &kept, keepcap) != 0) return -1;
            if (lg_conn_line(c, &line) != 0) /* the CR LF after the data */
                return -1;
        }
    }
    if (r->content_length >= 0) return lg_body_bytes(c, r->content_length, sse, keep, &kept, keepcap);
    return lg_body_bytes(c, -1, sse, keep, &kept, keepcap);
}

/* JSON string escaping for the prompt. */
static size_t lg_json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        const char *rep = NULL;
        size_t rl = 0;
        switch (*p) {
        case '"': rep = "\\\""; break;
        case '\\': rep = "\\\\"; break;
        case '\n': rep = "\\n"; break;
        case '\r': rep = "\\r"; break;
        case '\t': rep = "\\t"; break;
        default:
            if (*p < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", *p);
                rep = tmp;
            }
        }
        if (rep) {
            rl = strlen(rep);
        } else {
            tmp[0] = (char)*p;
            tmp[1] = '\0';
            rep = tmp;
            rl = 1;
        }
        if (o + rl < cap) memcpy(out + o, rep, rl);
        o += rl;
    }
    if (o < cap)
        out[o] = '\0';
    else if (cap > 0)
        out[cap - 1] = '\0';
    return o;
}

/* The request bytes (headers + body) into *req; returns its length or -1. */
static long lg_build_request(const lg_config *cfg, const char *prompt_esc, long long seed, char **req, size_t *cap)
{
    char body_head[1024], seedbuf[64] = "";
    if (cfg->use_seed) snprintf(seedbuf, sizeof seedbuf, ",\"seed\":%lld", seed);
    char modelbuf[300] = "";
    if (cfg->model) snprintf(modelbuf, sizeof modelbuf, "\"model\":\"%.256s\",", cfg->model);
    snprintf(body_head, sizeof body_head, "{%s\"max_tokens\":%d,\"temperature\":%.9g%s,\"stream\":true%s,", modelbuf,
             cfg->max_tokens, cfg->temperature, seedbuf,
             cfg->include_usage ? ",\"stream_options\":{\"include_usage\":true}" : "");
    const char *pfx = cfg->chat ? "\"messages\":[{\"role\":\"user\",\"content\":\"" : "\"prompt\":\"";
    const char *sfx = cfg->chat ? "\"}]}" : "\"}";
    size_t body_len = strlen(body_head) + strlen(pfx) + strlen(prompt_esc) + strlen(sfx);
    char auth[600] = "";
    if (cfg->api_key) snprintf(auth, sizeof auth, "Authorization: Bearer %.500s\r\n", cfg->api_key);
    char head[2048];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                      "Accept: text/event-stream\r\n%s%sContent-Length: %zu\r\n\r\n",
                      cfg->path, cfg->host, cfg->port, auth, cfg->keep_alive ? "" : "Connection: close\r\n", body_len);
    if (hl < 0 || (size_t)hl >= sizeof head) return -1;
    size_t total = (size_t)hl + body_len;
    if (lg_grow(req, cap, total + 1) != 0) return -1;
    char *p = *req;
    memcpy(p, head, (size_t)hl);
    p += hl;
    p += sprintf(p, "%s%s%s%s", body_head, pfx, prompt_esc, sfx);
    return (long)total;
}

/* ---- Client thread ---------------------------------------------------------------------- */

static int lg_add_sample(lg_client *cl, const lg_sample *s)
{
    if (cl->n_samples == cl->cap_samples) {
        int nc = cl->cap_samples ? cl->cap_samples * 2 : 64;
        lg_sample *ns = realloc(cl->samples, (size_t)nc * sizeof *ns);
        if (!ns) return -1;
        cl->samples = ns;
        cl->cap_samples = nc;
    }
    cl->samples[cl->n_samples++] = *s;
    return 0;
}

static void *lg_client_run(void *arg)
{
    lg_client *cl = arg;
    const lg_config *cfg = cl->cfg;
    size_t pcap = strlen(cfg->prompt) * 6 + 1;
    char *prompt_esc = malloc(pcap);
    lg_conn *c = &cl->conn;
    lg_sse sse = { 0 };
    char *req = NULL;
    size_t req_cap = 0;
    if (!prompt_esc) {
        lg_client_error(cl, "out of memory");
        goto out;
    }
    lg_json_escape(prompt_esc, pcap, cfg->prompt);
    const double deadline = cl->t0 + cfg->duration;

    for (int r = 0; cfg->requests_per_client == 0 || r < cfg->requests_per_client; r++) {
        if (cli_seconds(CLOCK_MONOTONIC) >= deadline || lg_stopped(cl->sh)) break;
        long long seed = cfg->seed + cl->index + (long long)r * cfg->concurrency;
        long rl = lg_build_request(cfg, prompt_esc, seed, &req, &req_cap);
        if (rl < 0) {
            lg_client_error(cl, "request too large");
            break;
        }
        lg_sample s = { .t_first = -1.0, .t_last = -1.0 };
        lg_resp resp;
        int attempt_ok = 0, sent = 0;
        for (int attempt = 0; attempt < 2 && !attempt_ok; attempt++) {
            int reused = c->fd >= 0;
            memset(&resp, 0, sizeof resp);
            if (c->fd < 0 && lg_conn_open(c, cfg, cl->sh) != 0) {
                if (!lg_stopped(cl->sh)) lg_client_error(cl, "connect: %s", strerror(errno));
                break;
            }
            s.t_start = cli_seconds(CLOCK_MONOTONIC) - cl->t0;
            sent = 1;
            lg_sse_reset(&sse, cl->t0, &s);
            if (lg_send_all(c->fd, req, (size_t)rl) == 0 && lg_read_headers(c, &resp) == 0) {
                attempt_ok = 1;
                break;
            }
            int e = errno;
            lg_conn_close(c);
            if (lg_stopped(cl->sh)) break;
            /* A kept-alive connection the server closed meanwhile: retry once, fresh. */
            if (reused && !resp.got_any) {
                cl->reconnects++;
                continue;
            }
            if (e == EAGAIN || e == EWOULDBLOCK) cl->timeouts++;
            lg_client_error(cl, "no response: %s", e ? strerror(e) : "bad status line");
            break;
        }
        if (!attempt_ok && lg_stopped(cl->sh)) {
            if (sent) lg_add_sample(cl, &s); /* abandoned before its response began */
            break;
        }
        if (!attempt_ok) {
            usleep(10000); /* do not spin on a dead server */
            continue;
        }
        if (resp.status != 200) {
            char body[160];
            int rc = lg_read_body(c, &resp, NULL, body, sizeof body);
            if (resp.status == 503) cl->http_503++;
            lg_client_error(cl, "HTTP %d: %.120s", resp.status, body);
            if (rc != 0 || resp.close) lg_conn_close(c);
            if (resp.status == 503) usleep(50000); /* the queue is full: back off a little */
            continue;
        }
        int rc = lg_read_body(c, &resp, &sse, NULL, 0);
        s.t_end = cli_seconds(CLOCK_MONOTONIC) - cl->t0;
        int e = errno;
        if (rc != 0 || resp.close || !cfg->keep_alive) lg_conn_close(c);
        if (rc != 0 && lg_stopped(cl->sh)) {
            s.tokens = s.chunks; /* abandoned mid-stream: what arrived counts */
            lg_add_sample(cl, &s);
            break;
        }
        if (rc != 0) {
            if (e == EAGAIN || e == EWOULDBLOCK) cl->timeouts++;
            lg_client_error(cl, "stream broken: %s", strerror(e));
            continue;
        }
        if (sse.error) {
            lg_client_error(cl, "%s", sse.err);
            continue;
        }
        if (!sse.done) {
            lg_client_error(cl, "stream ended without data: [DONE]");
            continue;
        }
        s.from_usage = sse.usage_seen;
        s.complete = 1;
        if (!sse.usage_seen) s.tokens = s.chunks;
        if (lg_add_sample(cl, &s) != 0) {
            lg_client_error(cl, "out of memory");
            break;
        }
    }
out:
    lg_conn_close(c);
    free(prompt_esc);
    free(req);
    free(sse.line);
    free(sse.data);
    pthread_mutex_lock(&cl->sh->mu);
    cl->sh->running--;
    pthread_cond_signal(&cl->sh->cv);
    pthread_mutex_unlock(&cl->sh->mu);
    return NULL;
}

/* ---- Statistics -------------------------------------------------------------------------- */

/* Nearest-rank percentile of sorted v[n]; NAN when n == 0. */
static double lg_pct(const double *v, int n, double p)
{
    if (n <= 0) return NAN;
    int k = (int)ceil(p / 100.0 * n) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    return v[k];
}

static void lg_json_num(FILE *f, const char *key, double v, const char *sep)
{
    if (isfinite(v))
        fprintf(f, "\"%s\":%.3f%s", key, v, sep);
    else
        fprintf(f, "\"%s\":null%s", key, sep);
}

/* ---- Command line ------------------------------------------------------------------------ */

static void lg_usage(FILE *f)
{
    fprintf(f, "usage: loadgen [options]\n"
               "Closed-loop streaming load on an lmserve (OpenAI completions) server on loopback.\n"
               "  --url URL               server (default http://127.0.0.1:8080/v1/completions;\n"
               "                          a URL without a path gets /v1/completions)\n"
               "  --concurrency N         client threads, each with one request in flight (default 1)\n"
               "  --max-tokens N          max_tokens per request (default 128)\n"
               "  --temperature T         (default 0.8)\n"
               "  --prompt TEXT           (default \"Once upon a time\")\n"
               "  --seed N                seed base: request r of client c uses N + c + r*concurrency\n"
               "                          (default 1; --no-seed sends none)\n"
               "  --duration S            no new request after S seconds (default 20)\n"
               "  --requests-per-client K stop each client after K requests (default 0 = no limit)\n"
               "  --max-time S            hard stop: at S seconds abandon the requests in flight and\n"
               "                          count the tokens they had streamed (default: none)\n"
               "  --timeout S             per-read socket timeout (default 60)\n"
               "  --model ID              send \"model\": ID\n"
               "  --api-key KEY           send Authorization: Bearer KEY\n"
               "  --new-connection        one TCP connection per request (default: keep-alive)\n"
               "  --no-usage              do not ask for stream_options.include_usage; count content chunks\n"
               "  --json                  print the report as one JSON object\n"
               "  --csv FILE              one line per request: client, start, TTFT, latency (seconds),\n"
               "                          tokens, chunks, complete\n");
}

static int lg_parse_url(lg_config *cfg, const char *url, char *err, size_t errlen)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) != 0) {
        snprintf(err, errlen, "only http:// URLs are supported: %s", url);
        return -1;
    }
    p += 7;
    const char *hs = p, *he;
    if (*p == '[') { /* [::1] */
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he) {
            snprintf(err, errlen, "bad URL: %s", url);
            return -1;
        }
        p = he + 1;
    } else {
        while (*p && *p != ':' && *p != '/') p++;
        he = p;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof cfg->host) {
        snprintf(err, errlen, "bad host in URL: %s", url);
        return -1;
    }
    memcpy(cfg->host, hs, (size_t)(he - hs));
    cfg->host[he - hs] = '\0';
    snprintf(cfg->port, sizeof cfg->port, "80");
    if (*p == ':') {
        p++;
        const char *ps = p;
        while (*p >= '0' && *p <= '9') p++;
        if (p == ps || p - ps > 5) {
            snprintf(err, errlen, "bad port in URL: %s", url);
            return -1;
        }
        memcpy(cfg->port, ps, (size_t)(p - ps));
        cfg->port[p - ps] = '\0';
    }
    if (*p == '\0' || strcmp(p, "/") == 0) p = "/v1/completions";
    if (*p != '/' || strlen(p) >= sizeof cfg->path || strpbrk(p, " \r\n")) {
        snprintf(err, errlen, "bad path in URL: %s", url);
        return -1;
    }
    strcpy(cfg->path, p);
    cfg->chat = strstr(cfg->path, "/chat/completions") != NULL;

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(cfg->host, cfg->port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", cfg->host, gai_strerror(rc));
        return -1;
    }
    int found = 0;
    for (struct addrinfo *a = ai; a && !found; a = a->ai_next) {
        int loop = 0;
        if (a->ai_family == AF_INET) {
            const struct sockaddr_in *s4 = (const void *)a->ai_addr;
            loop = (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
        } else if (a->ai_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const void *)a->ai_addr;
            loop = IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
        }
        if (loop && a->ai_addrlen <= sizeof cfg->addr) {
            memcpy(&cfg->addr, a->ai_addr, a->ai_addrlen);
            cfg->addrlen = a->ai_addrlen;
            found = 1;
        }
    }
    freeaddrinfo(ai);
    if (!found) {
        snprintf(err, errlen, "%.200s is not a loopback address (loadgen only targets this machine)", cfg->host);
        return -1;
    }
    return 0;
}

static int lg_arg_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int lg_arg_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    lg_config cfg = {
        .concurrency = 1,
        .max_tokens = 128,
        .temperature = 0.8,
        .prompt = "Once upon a time",
        .seed = 1,
        .use_seed = 1,
        .duration = 20.0,
        .timeout = 60.0,
        .include_usage = 1,
        .keep_alive = 1,
    };
    const char *url = "http://127.0.0.1:8080/v1/completions";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, takes = 1;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            lg_usage(stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            cfg.json = 1, takes = 0;
        } else if (strcmp(a, "--new-connection") == 0) {
            cfg.keep_alive = 0, takes = 0;
        } else if (strcmp(a, "--no-usage") == 0) {
            cfg.include_usage = 0, takes = 0;
        } else if (strcmp(a, "--no-seed") == 0) {
            cfg.use_seed = 0, takes = 0;
        } else if (!v) {
            bad = 1;
        } else if (strcmp(a, "--url") == 0) {
            url = v;
        } else if (strcmp(a, "--concurrency") == 0) {
            bad = lg_arg_int(v, 1, LG_MAX_CONCURRENCY, &cfg.concurrency);
        } else if (strcmp(a, "--max-tokens") == 0) {
            bad = lg_arg_int(v, 0, 1 << 20, &cfg.max_tokens);
        } else if (strcmp(a, "--temperature") == 0) {
            bad = lg_arg_double(v, 0.0, 100.0, &cfg.temperature);
        } else if (strcmp(a, "--prompt") == 0) {
            cfg.prompt = v;
            bad = strlen(v) > (1u << 20);
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            cfg.seed = strtoll(v, &end, 10);
            bad = errno || end == v || *end || cfg.seed < 0 || cfg.seed > (1LL << 52);
        } else if (strcmp(a, "--duration") == 0) {
            bad = lg_arg_double(v, 0.001, 86400.0, &cfg.duration);
        } else if (strcmp(a, "--requests-per-client") == 0) {
            bad = lg_arg_int(v, 0, 1 << 30, &cfg.requests_per_client);
        } else if (strcmp(a, "--csv") == 0) {
            cfg.csv = v;
        } else if (strcmp(a, "--max-time") == 0) {
            bad = lg_arg_double(v, 0.001, 86400.0, &cfg.max_time);
        } else if (strcmp(a, "--timeout") == 0) {
            bad = lg_arg_double(v, 0.01, 3600.0, &cfg.timeout);
        } else if (strcmp(a, "--model") == 0) {
            cfg.model = v;
            bad = strlen(v) > 256 || strpbrk(v, "\"\\") != NULL;
        } else if (strcmp(a, "--api-key") == 0) {
            cfg.api_key = v;
            bad = strlen(v) > 500 || strpbrk(v, "\r\n") != NULL;
        } else {
            fprintf(stderr, "loadgen: unknown option %s\n", a);
            lg_usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "loadgen: bad or missing value for %s\n", a);
            return 2;
        }
        i += takes;
    }
    char err[300];
    if (lg_parse_url(&cfg, url, err, sizeof err) != 0) {
        fprintf(stderr, "loadgen: %s\n", err);
        return 2;
    }

    lg_client *cl = calloc((size_t)cfg.concurrency, sizeof *cl);
    pthread_t *th = calloc((size_t)cfg.concurrency, sizeof *th);
    if (!cl || !th) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    lg_shared sh = { .running = 0 };
    pthread_mutex_init(&sh.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sh.cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    const double t0 = cli_seconds(CLOCK_MONOTONIC);
    int started = 0;
    for (int i = 0; i < cfg.concurrency; i++) {
        cl[i].cfg = &cfg;
        cl[i].sh = &sh;
        cl[i].index = i;
        cl[i].t0 = t0;
        cl[i].conn.fd = -1;
        pthread_mutex_init(&cl[i].conn.mu, NULL);
        pthread_mutex_lock(&sh.mu);
        sh.running++;
        pthread_mutex_unlock(&sh.mu);
        if (pthread_create(&th[i], &attr, lg_client_run, &cl[i]) != 0) {
            pthread_mutex_lock(&sh.mu);
            sh.running--;
            pthread_mutex_unlock(&sh.mu);
            pthread_mutex_destroy(&cl[i].conn.mu);
            fprintf(stderr, "loadgen: could not start client thread %d\n", i);
            break;
        }
        started++;
    }
    pthread_attr_destroy(&attr);
    /* Wait for the clients; at --max-time abandon whatever is still in flight. */
    pthread_mutex_lock(&sh.mu);
    while (sh.running > 0) {
        if (cfg.max_time <= 0) {
            pthread_cond_wait(&sh.cv, &sh.mu);
            continue;
        }
        double until = t0 + cfg.max_time;
        if (cli_seconds(CLOCK_MONOTONIC) >= until) {
            sh.stop = 1;
            sh.t_stop = cli_seconds(CLOCK_MONOTONIC) - t0;
            break;
        }
        struct timespec ts = { .tv_sec = (time_t)until, .tv_nsec = (long)((until - floor(until)) * 1e9) };
        pthread_cond_timedwait(&sh.cv, &sh.mu, &ts);
    }
    int stopped = sh.stop;
    pthread_mutex_unlock(&sh.mu);
    if (stopped)
        for (int i = 0; i < started; i++) lg_conn_interrupt(&cl[i].conn);
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        pthread_mutex_destroy(&cl[i].conn.mu);
    }
    pthread_cond_destroy(&sh.cv);
    pthread_mutex_destroy(&sh.mu);
    const double wall_end = cli_seconds(CLOCK_MONOTONIC) - t0;
    struct rusage ru;
    double cpu = 0.0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
              1e-6 * (double)ru.ru_stime.tv_usec;

    /* Gather.  Completed requests give latency and decode rate; abandoned ones (in
     * flight at --max-time) add the tokens that had arrived, and their time to first
     * token -- or, when none had arrived, the time they had waited, a lower bound
     * ("censored"), so that a stop never hides slow first tokens. */
    int n_all = 0, errors = 0, e503 = 0, timeouts = 0, reconnects = 0, all_usage = 1;
    const char *first_error = NULL;
    for (int i = 0; i < started; i++) {
        n_all += cl[i].n_samples;
        errors += cl[i].errors;
        e503 += cl[i].http_503;
        timeouts += cl[i].timeouts;
        reconnects += cl[i].reconnects;
        if (!first_error && cl[i].first_error[0]) first_error = cl[i].first_error;
    }
    errors += cfg.concurrency - started;
    double *ttft = malloc(((size_t)n_all + 1) * sizeof *ttft);
    double *lat = malloc(((size_t)n_all + 1) * sizeof *lat);
    double *rate = malloc(((size_t)n_all + 1) * sizeof *rate);
    if (!ttft || !lat || !rate) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    int n = 0, nt = 0, nr = 0, abandoned = 0, censored = 0;
    long long tokens = 0, chunks = 0;
    double last_end = 0.0;
    for (int i = 0; i < started; i++) {
        for (int k = 0; k < cl[i].n_samples; k++) {
            const lg_sample *s = &cl[i].samples[k];
            tokens += s->tokens;
            chunks += s->chunks;
            if (s->t_first >= 0) {
                ttft[nt++] = s->t_first - s->t_start;
            } else if (!s->complete) {
                ttft[nt++] = sh.t_stop - s->t_start;
                censored++;
            }
            if (!s->complete) {
                abandoned++;
                continue;
            }
            all_usage &= s->from_usage;
            lat[n++] = s->t_end - s->t_start;
            if (s->t_end > last_end) last_end = s->t_end;
            if (s->tokens >= 2 && s->t_last > s->t_first && s->t_first >= 0)
                rate[nr++] = (double)(s->tokens - 1) / (s->t_last - s->t_first);
        }
    }
    if (cfg.csv) {
        FILE *f = fopen(cfg.csv, "w");
        if (!f) {
            fprintf(stderr, "loadgen: %s: %s\n", cfg.csv, strerror(errno));
        } else {
            fprintf(f, "client,start_s,ttft_s,latency_s,tokens,chunks,complete\n");
            for (int i = 0; i < started; i++)
                for (int k = 0; k < cl[i].n_samples; k++) {
                    const lg_sample *s = &cl[i].samples[k];
                    fprintf(f, "%d,%.6f,%.6f,%.6f,%d,%d,%d\n", i, s->t_start,
                            s->t_first >= 0 ? s->t_first - s->t_start : -1.0,
                            s->complete ? s->t_end - s->t_start : -1.0, s->tokens, s->chunks, s->complete);
                }
            fclose(f);
        }
    }
    qsort(ttft, (size_t)nt, sizeof *ttft, bench_cmp_double);
    qsort(lat, (size_t)n, sizeof *lat, bench_cmp_double);
    qsort(rate, (size_t)nr, sizeof *rate, bench_cmp_double);
    const double span = stopped ? sh.t_stop : last_end > 0 ? last_end : wall_end;
    const double tps = span > 0 ? (double)tokens / span : 0.0;
    const char *src = n_all == 0 ? "none" : !all_usage ? "chunks" : abandoned ? "usage+chunks" : "usage";

    if (cfg.json) {
        printf("{\"url\":\"http://%s:%s%s\",\"concurrency\":%d,\"max_tokens\":%d,"
               "\"temperature\":%.9g,\"keep_alive\":%s,",
               cfg.host, cfg.port, cfg.path, cfg.concurrency, cfg.max_tokens, cfg.temperature,
               cfg.keep_alive ? "true" : "false");
        printf("\"requests\":%d,\"errors\":%d,\"http_503\":%d,\"timeouts\":%d,\"reconnects\":%d,"
               "\"abandoned\":%d,\"ttft_censored\":%d,"
               "\"tokens\":%lld,\"content_chunks\":%lld,\"token_source\":\"%s\",",
               n, errors, e503, timeouts, reconnects, abandoned, censored, tokens, chunks, src);
        lg_json_num(stdout, "duration_s", span, ",");
        lg_json_num(stdout, "tokens_per_s", tps, ",");
        lg_json_num(stdout, "ttft_ms_p50", 1e3 * lg_pct(ttft, nt, 50), ",");
        lg_json_num(stdout, "ttft_ms_p99", 1e3 * lg_pct(ttft, nt, 99), ",");
        lg_json_num(stdout, "latency_ms_p50", 1e3 * lg_pct(lat, n, 50), ",");
        lg_json_num(stdout, "latency_ms_p99", 1e3 * lg_pct(lat, n, 99), ",");
        lg_json_num(stdout, "stream_tokens_per_s_p50", lg_pct(rate, nr, 50), ",");
        lg_json_num(stdout, "loadgen_cpu_s", cpu, ",");
        printf("\"first_error\":");
        if (first_error) {
            char esc[LG_ERRLEN * 6 + 1];
            lg_json_escape(esc, sizeof esc, first_error);
            printf("\"%s\"}\n", esc);
        } else {
            printf("null}\n");
        }
    } else {
        printf("loadgen: http://%s:%s%s, concurrency %d, max_tokens %d, temperature %g, %s\n", cfg.host, cfg.port,
               cfg.path, cfg.concurrency, cfg.max_tokens, cfg.temperature,
               cfg.keep_alive ? "keep-alive" : "new connection per request");
        printf("  requests      %d ok, %d errors (%d x 503, %d timeouts) in %.2f s\n", n, errors, e503, timeouts, span);
        if (stopped)
            printf("  max time      %d requests abandoned in flight (%d before their first token)\n", abandoned,
                   censored);
        printf("  tokens        %lld (from %s), %.1f tok/s aggregate\n", tokens, src, tps);
        printf("  TTFT          p50 %.1f ms, p99 %.1f ms\n", 1e3 * lg_pct(ttft, nt, 50), 1e3 * lg_pct(ttft, nt, 99));
        printf("  latency       p50 %.1f ms, p99 %.1f ms\n", 1e3 * lg_pct(lat, n, 50), 1e3 * lg_pct(lat, n, 99));
        printf("  per stream    %.1f tok/s (median decode rate after the first token)\n", lg_pct(rate, nr, 50));
        printf("  loadgen CPU   %.2f s user+system\n", cpu);
        if (first_error) printf("  first error   %s\n", first_error);
    }
    for (int i = 0; i < cfg.concurrency; i++) free(cl[i].samples);
    free(cl);
    free(th);
    free(ttft);
    free(lat);
    free(rate);
    return errors > 0 && n == 0 ? 1 : 0;
}
