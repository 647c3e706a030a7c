/* http.c -- libmicrohttpd driven by a libuv loop (external epoll mode), request
 * lifecycle, parking/resuming connections, the ready list, signals and the
 * graceful shutdown, and running request work off the loop thread.  See server.h for
 * the design and RELIABILITY.md for how connections, limits and failures are tested. */
#include "server/http.h"
#include "server/constraint.h"
#include "model/model.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Grammars kept compiled, with their automaton tables and masks, for requests that
 * repeat them (constraint.c). */
#define CONSTRAINT_TABLE_SIZE 16

static void mhd_run(server *s);

/* the nice value of the threads that parse and tokenize request bodies (offload_work) */
#define WORKER_NICE 10
/* Bodies up to this size are parsed on the loop thread: parsing and tokenizing cost time
 * in proportion to the body, and a body this small keeps the loop busy only briefly;
 * a larger one (up to --body-limit) is parsed on a worker so the streams keep flowing. */
#define OFFLOAD_MIN_BODY (8 * 1024)

/* ---- how long the loop thread is busy ----------------------------------------------------
 *
 * While the loop thread runs one callback, every other connection waits, streams included.
 * Each callback's CPU time (the thread's own clock: time the thread was descheduled by a
 * busy machine is not counted) is summed and its maximum kept; /metrics shows both. */

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void busy_begin(server *s)
{
    if (s->busy_depth++ == 0) s->busy_t0 = thread_cpu();
}

static void busy_end(server *s)
{
    if (--s->busy_depth > 0) return;
    double d = thread_cpu() - s->busy_t0;
    s->loop_busy_total += d;
    if (d > s->loop_busy_max) s->loop_busy_max = d;
}

/* ---- jansson's allocations ---------------------------------------------------------------- */

static _Thread_local int json_oom;

static void *json_malloc_noted(size_t n)
{
    void *p = malloc(n);
    if (!p) json_oom = 1;
    return p;
}

int json_alloc_failed(void)
{
    int f = json_oom;
    json_oom = 0;
    return f;
}

/* ---- request objects -------------------------------------------------------------- */

static void req_unref(http_req *r)
{
    if (--r->refs > 0) return;
    if (r->job) {
        if (r->job->req == r) r->job->req = NULL;
        job_unref(r->job);
    }
    job_params_clear(&r->wp); /* results of work that was never answered */
    free(r->wbody);
    sbuf_free(&r->body);
    free(r->url);
    free(r);
}

static void unpark(server *s, http_req *r)
{
    if (!r->parked) return;
    r->parked = 0;
    MHD_resume_connection(r->conn);
    (void)s;
}

/* The client of r has gone: its job (if any) is cancelled and, if r is parked, it
 * is resumed so that libmicrohttpd finishes it (a stream's reader and a waiting
 * completion both end the connection on a client cancel). */
static void req_client_gone(server *s, http_req *r)
{
    /* Work on its body is bounded and is left to finish: the client may have only
     * half-closed, and then it still reads the answer (what happens next is as above). */
    if (r->working) return;
    if (r->job) engine_cancel(s->eng, r->job, CANCEL_CLIENT);
    unpark(s, r);
}

void http_park(server *s, http_req *r)
{
    if (r->parked) return;
    if (r->hc && r->hc->peer_closed) {
        /* the client left before there was anything to wait for */
        if (r->job) engine_cancel(s->eng, r->job, CANCEL_CLIENT);
        return;
    }
    MHD_suspend_connection(r->conn);
    r->parked = 1;
}

/* ---- connections: noticing a client that has closed ------------------------------
 *
 * libmicrohttpd 0.9.75 in epoll mode registers each connection edge-triggered and
 * reads it once per readiness edge; a read that returns fewer bytes than its buffer
 * holds clears the connection's read-ready flag, as if the socket were drained.  A
 * client that sends part of a request and closes makes its data and its FIN arrive
 * together: one edge, one short read of the data, and the end-of-file behind it is
 * never read, because no further edge will come.  The socket stays in CLOSE-WAIT,
 * holding a connection slot and a per-address slot, until the idle timeout.
 *
 * So every connection is watched from accept to close with a uv_poll_t for
 * UV_DISCONNECT (EPOLLRDHUP, level-triggered, in libuv's own epoll set).  When the
 * client has closed:
 *   - a request in progress is cancelled (engine_cancel) and resumed if parked;
 *   - once libmicrohttpd has read every byte the client sent (SIOCINQ is 0), we call
 *     shutdown(fd, SHUT_RD).  That changes nothing for the peer (it has sent its FIN;
 *     no byte can follow it) but wakes the socket's waiters: MHD's epoll gets a new
 *     edge and its next read returns 0, the end-of-file, so MHD closes the connection
 *     itself (at once when it is reading a request; after the answer has been sent
 *     when it is writing one).  Nudging only when nothing is left unread matters:
 *     an edge that merged with one MHD has not consumed yet, followed by another
 *     short read, would be lost the same way.
 * The watch is closed in MHD's connection-closed notification, which MHD makes before
 * it closes the descriptor. */

static void on_watch_closed(uv_handle_t *h) { free(h->data); }

static void eofs_remove(server *s, http_conn *hc)
{
    if (!hc->in_eofs) return;
    if (hc->eof_prev)
        hc->eof_prev->eof_next = hc->eof_next;
    else
        s->eofs = hc->eof_next;
    if (hc->eof_next) hc->eof_next->eof_prev = hc->eof_prev;
    hc->eof_prev = hc->eof_next = NULL;
    hc->in_eofs = 0;
}

/* After each MHD_run: tell MHD about the end-of-file of every closed client whose
 * bytes it has all read. */
static void eofs_tell(server *s)
{
    for (http_conn *hc = s->eofs, *next; hc; hc = next) {
        next = hc->eof_next;
        /* not while its request's body is being worked on: MHD would read the end-of-file
         * before the answer is queued and drop a half-closed client's answer */
        if (hc->req && (hc->req->working || hc->req->worked)) continue;
        int unread = 0;
        if (ioctl(hc->fd, SIOCINQ, &unread) == 0 && unread > 0) continue;
        shutdown(hc->fd, SHUT_RD);
        eofs_remove(s, hc);
    }
}

static void on_peer_closed(uv_poll_t *h, int status, int events)
{
    http_conn *hc = h->data;
    server *s = hc->srv;
    if (status == 0 && !(events & UV_DISCONNECT)) return;
    busy_begin(s);
    uv_poll_stop(h); /* level-triggered: once is enough */
    hc->peer_closed = 1;
    if (hc->req) req_client_gone(s, hc->req);
    if (!hc->in_eofs) {
        hc->in_eofs = 1;
        hc->eof_prev = NULL;
        hc->eof_next = s->eofs;
        if (s->eofs) s->eofs->eof_prev = hc;
        s->eofs = hc;
    }
    mhd_run(s);
    busy_end(s);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        s->n_conns++;
        *socket_context = NULL;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        http_conn *hc = ci ? calloc(1, sizeof *hc) : NULL;
        /* without a watch the connection still works; a client that leaves is then
         * noticed by the idle timeout only */
        if (!hc) return;
        hc->srv = s;
        hc->mc = c;
        hc->fd = ci->connect_fd;
        if (uv_poll_init(&s->loop, &hc->watch, hc->fd) != 0) {
            free(hc);
            return;
        }
        hc->watch.data = hc;
        if (uv_poll_start(&hc->watch, UV_DISCONNECT, on_peer_closed) != 0) {
            uv_close((uv_handle_t *)&hc->watch, on_watch_closed);
            return;
        }
        *socket_context = hc;
        return;
    }
    /* MHD_CONNECTION_NOTIFY_CLOSED: the descriptor is still open */
    s->n_conns--;
    http_conn *hc = *socket_context;
    if (!hc) return;
    *socket_context = NULL;
    if (hc->req) hc->req->hc = NULL;
    eofs_remove(s, hc);
    uv_close((uv_handle_t *)&hc->watch, on_watch_closed);
}

/* ---- answering ------------------------------------------------------------------------ */

/* Out of memory (the policy is in server.h): a header libmicrohttpd cannot add makes
 * the answer fail as a whole, never go out without it. */
static int add_common_headers(server *s, struct MHD_Response *resp)
{
    int ok = MHD_add_response_header(resp, "Server", s->server_header) == MHD_YES;
    if (s->cfg.cors_origin) {
        ok &= MHD_add_response_header(resp, "Access-Control-Allow-Origin", s->cfg.cors_origin) == MHD_YES;
        if (strcmp(s->cfg.cors_origin, "*") != 0) ok &= MHD_add_response_header(resp, "Vary", "Origin") == MHD_YES;
    }
    return ok;
}

/* Queue resp (and drop our reference).  MHD_NO, which closes the connection, when a
 * header cannot be added or the answer cannot be queued. */
static enum MHD_Result send_response(server *s, http_req *r, int status, const char *ctype, struct MHD_Response *resp,
                                     const char *const *headers)
{
    int ok = !ctype || MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) == MHD_YES;
    for (int i = 0; ok && headers && headers[i]; i += 2)
        ok &= MHD_add_response_header(resp, headers[i], headers[i + 1]) == MHD_YES;
    ok = ok && add_common_headers(s, resp);
    if (ok && (s->draining || r->close))
        ok &= MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES;
    enum MHD_Result ret = MHD_NO;
    if (ok) {
        r->status = status;
        ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    }
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result http_send(server *s, http_req *r, int status, const char *ctype, const void *data, size_t len,
                          const char *const *headers)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    return send_response(s, r, status, ctype, resp, headers);
}

enum MHD_Result http_send_owned(server *s, http_req *r, int status, const char *ctype, char *data, size_t len,
                                const char *const *headers)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(data);
        return MHD_NO;
    }
    return send_response(s, r, status, ctype, resp, headers);
}

/* The answer when not even the error's body can be built */
static const char OOM_BODY[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                               "\"param\":null,\"code\":\"out_of_memory\"}}";

enum MHD_Result http_send_error(server *s, http_req *r, const api_error *e)
{
    const char *retry[] = { "Retry-After", "1", NULL };
    const char *auth[] = { "WWW-Authenticate", "Bearer", NULL };
    char *body = api_error_json(e);
    if (!body) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(sizeof OOM_BODY - 1, (void *)OOM_BODY, MHD_RESPMEM_PERSISTENT);
        return resp ? send_response(s, r, 503, "application/json", resp, retry) : MHD_NO;
    }
    const char *const *h = e->status == 503 ? retry : e->status == 401 ? auth : NULL;
    return http_send_owned(s, r, e->status, "application/json", body, strlen(body), h);
}

enum MHD_Result http_send_oom(server *s, http_req *r)
{
    api_error e;
    api_error_set(&e, 503, "server_error", NULL, "out_of_memory", "out of memory");
    return http_send_error(s, r, &e);
}

enum MHD_Result http_send_json(server *s, http_req *r, int status, json_t *o)
{
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    /* a value built since routes_dispatch began, or the text, may lack a part */
    if (body && json_alloc_failed()) {
        free(body);
        body = NULL;
    }
    if (!body) return http_send_oom(s, r);
    return http_send_owned(s, r, status, "application/json", body, strlen(body), NULL);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    http_req *r = cls;
    job *j = r->job;
    if (!r->conn || !j || r->out_broken) return MHD_CONTENT_READER_END_WITH_ERROR;
    int c = atomic_load(&j->cancel);
    if (c == CANCEL_CLIENT || c == CANCEL_OVERFLOW) return MHD_CONTENT_READER_END_WITH_ERROR;
    int done = 0;
    json_alloc_failed();                         /* forget an earlier failure */
    size_t n = job_out_take(j, buf, max, &done); /* formats what the engine sent (output_drain) */
    if (json_alloc_failed()) {
        /* as in on_async: these bytes may lack a field, the stream is cut short instead */
        r->out_broken = 1;
        engine_cancel(r->srv->eng, j, CANCEL_CLIENT);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (n && r->t_out == 0 && atomic_load(&j->stat_ttft) >= 0) r->t_out = srv_now();
    if (n) return (ssize_t)n;
    if (done) return MHD_CONTENT_READER_END_OF_STREAM;
    http_park(r->srv, r);
    return r->parked ? 0 : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls) { req_unref(cls); }

enum MHD_Result http_send_job_body(server *s, http_req *r, int status, const char *const *headers)
{
    /* the job's outbox holds the whole answer: MHD reads it in blocks (no copy of it) */
    job *j = r->job;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(j->out.len - j->out_off, 64 * 1024, stream_reader, r, stream_free);
    if (!resp) return MHD_NO;
    r->refs++; /* the response's, dropped by stream_free */
    return send_response(s, r, status, "application/json", resp, headers);
}

enum MHD_Result http_send_stream(server *s, http_req *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, r, stream_free);
    if (!resp) return MHD_NO;
    r->refs++; /* the response's, dropped by stream_free */
    const char *h[] = { MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache", "X-Accel-Buffering", "no", NULL };
    return send_response(s, r, 200, "text/event-stream", resp, h);
}

/* ---- work off the loop thread --------------------------------------------------------- */

static void offload_work(uv_work_t *w)
{
    /* Parsing a large body yields the CPU to token generation: on Linux the nice value
     * is per thread, and libuv's worker threads run only this server's work.  On a busy
     * machine the engine thread otherwise shares its core with the parse. */
    static _Thread_local int niced;
    if (!niced) {
        niced = 1;
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), WORKER_NICE);
    }
    http_req *r = w->data;
    r->work_fn(r);
}

static void offload_done(uv_work_t *w, int status)
{
    http_req *r = w->data;
    server *s = r->srv;
    busy_begin(s);
    r->working = 0;
    if (r->conn && status == 0) {
        r->worked = 1;
        unpark(s, r);
    }
    /* else the connection ended while the work ran (the client left): nobody waits for
     * the results, req_unref frees them */
    req_unref(r);
    mhd_run(s);
    busy_end(s);
}

enum MHD_Result http_offload(server *s, http_req *r)
{
    if (r->body.len <= OFFLOAD_MIN_BODY) {
        /* a small body costs less than the trip to a worker thread; answered at once, a
         * client that half-closed after its request still gets its answer */
        r->work_fn(r);
        return r->finish_fn(s, r);
    }
    r->work.data = r;
    r->refs++; /* the work's reference: r outlives its connection until offload_done */
    r->working = 1;
    if (uv_queue_work(&s->loop, &r->work, offload_work, offload_done) != 0) {
        r->working = 0;
        r->refs--;
        api_error e;
        api_error_set(&e, 503, "server_error", NULL, "server_busy", "the server could not start the request");
        return http_send_error(s, r, &e);
    }
    /* parked even when the client has already closed (http_park would not): it may have
     * only half-closed, and the work ends by itself */
    if (!r->parked) {
        MHD_suspend_connection(r->conn);
        r->parked = 1;
    }
    return MHD_YES;
}

/* ---- MHD callbacks -------------------------------------------------------------------- */

static int method_bit(const char *m)
{
    if (!strcmp(m, "GET")) return M_GET;
    if (!strcmp(m, "HEAD")) return M_HEAD;
    if (!strcmp(m, "POST")) return M_POST;
    if (!strcmp(m, "OPTIONS")) return M_OPTIONS;
    return M_OTHER;
}

static void allow_string(unsigned allowed, char *out, size_t n)
{
    out[0] = '\0';
    const char *names[] = { "GET", "HEAD", "POST", "OPTIONS" };
    for (int i = 0; i < 4; i++) {
        if (!(allowed & (1u << i)) && i != 3) continue;
        if (out[0]) strncat(out, ", ", n - strlen(out) - 1);
        strncat(out, names[i], n - strlen(out) - 1);
    }
}

static int auth_ok(server *s, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t a = strlen(h), b = strlen(s->cfg.api_key);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)((i < a ? h[i] : 0) ^ s->cfg.api_key[i]);
    return diff == 0;
}

static enum MHD_Result first_call(server *s, http_req *r, struct MHD_Connection *c, const char *version)
{
    api_error e;
    if (guard_framing(c, version, &e) < 0) {
        r->close = 1; /* where this request ends is unknown: nothing after it can be read */
        return http_send_error(s, r, &e);
    }
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!guard_host_allowed(&s->hosts, host)) {
        api_error_set(&e, 403, "invalid_request_error", NULL, "host_not_allowed",
                      "Host '%.100s' is not allowed: this server answers loopback names only (it listens "
                      "on a loopback address); name others with --allowed-hosts",
                      host);
        return http_send_error(s, r, &e);
    }
    unsigned allowed = 0;
    r->route = route_find(r->url, &allowed);
    if (r->route < 0) {
        api_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown route %s %.200s", r->method_s,
                      r->url);
        return http_send_error(s, r, &e);
    }
    char allow[64];
    allow_string(allowed, allow, sizeof allow);
    if (r->method == M_OPTIONS) {
        const char *cors[] = { "Allow",
                               allow,
                               "Access-Control-Allow-Methods",
                               allow,
                               "Access-Control-Allow-Headers",
                               "Authorization, Content-Type",
                               "Access-Control-Max-Age",
                               "86400",
                               NULL };
        const char *plain[] = { "Allow", allow, NULL };
        return http_send(s, r, 204, NULL, "", 0, s->cfg.cors_origin ? cors : plain);
    }
    if (!(allowed & (unsigned)r->method)) {
        api_error_set(&e, 405, "invalid_request_error", NULL, "method_not_allowed",
                      "Method %s is not allowed on %.200s (allowed: %s)", r->method_s, r->url, allow);
        char *body = api_error_json(&e);
        if (!body) return http_send_oom(s, r);
        const char *h[] = { "Allow", allow, NULL };
        return http_send_owned(s, r, 405, "application/json", body, strlen(body), h);
    }
    /* a web page on another site can send a POST (text/plain needs no preflight): only the
     * server's own pages and --cors-origin may */
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (r->method == M_POST && !guard_origin_allowed(origin, host, s->cfg.cors_origin)) {
        api_error_set(&e, 403, "invalid_request_error", NULL, "cross_origin",
                      "A request from the page at '%.100s' is refused: allow that origin with --cors-origin", origin);
        return http_send_error(s, r, &e);
    }
    /* /health and the playground's own files (GET /, its assets: no model access) need no key */
    if (s->cfg.api_key && r->route != ROUTE_HEALTH && r->route != ROUTE_STATIC && !auth_ok(s, c)) {
        api_error_set(&e, 401, "invalid_request_error", NULL, "invalid_api_key",
                      "Missing or incorrect API key: send 'Authorization: Bearer KEY'");
        return http_send_error(s, r, &e);
    }
    if (r->method == M_POST) {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->cfg.body_limit) {
            api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                          "Request body is larger than %zu bytes", s->cfg.body_limit);
            return http_send_error(s, r, &e);
        }
        return MHD_YES; /* wait for the body */
    }
    return routes_dispatch(s, r);
}

/* 503 for a request that has no record (it could not be allocated); MHD_NO if even
 * that fails.  Not counted in /metrics nor logged: on_completed has nothing to count. */
static enum MHD_Result oom_unrecorded(server *s, struct MHD_Connection *c)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(sizeof OOM_BODY - 1, (void *)OOM_BODY, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    enum MHD_Result ret = MHD_NO;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") == MHD_YES &&
        MHD_add_response_header(resp, "Retry-After", "1") == MHD_YES && add_common_headers(s, resp) &&
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") == MHD_YES)
        ret = MHD_queue_response(c, 503, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    server *s = cls;
    http_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return oom_unrecorded(s, c);
        r->refs = 1;
        r->srv = s;
        r->conn = c;
        r->t0 = srv_now();
        r->route = -1;
        r->method = method_bit(method);
        snprintf(r->method_s, sizeof r->method_s, "%s", method);
        r->url = strdup(url);
        if (!r->url) {
            free(r);
            return oom_unrecorded(s, c);
        }
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r->hc = ci ? ci->socket_context : NULL;
        if (r->hc) r->hc->req = r;
        r->next = s->reqs;
        if (s->reqs) s->reqs->prev = r;
        s->reqs = r;
        s->n_reqs++;
        *con_cls = r;
        return first_call(s, r, c, version);
    }
    if (*upload_size) {
        if (!r->too_large && !r->oom) {
            if (r->body.len + *upload_size > s->cfg.body_limit) {
                r->too_large = 1;
                sbuf_free(&r->body);
            } else if (sbuf_append(&r->body, upload, *upload_size) < 0) {
                r->oom = 1; /* the rest is read and dropped; the answer is 503 */
                sbuf_free(&r->body);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    /* resumed while its work runs: only shutdown's last resort (on_force) does that */
    if (r->working) return MHD_NO;
    if (r->worked) {
        r->worked = 0;
        return r->finish_fn(s, r);
    }
    if (r->waiting) return routes_resume(s, r);
    if (r->status) return MHD_YES; /* already answered */
    if (r->oom) return http_send_oom(s, r);
    if (r->too_large) {
        api_error e;
        api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                      "Request body is larger than %zu bytes", s->cfg.body_limit);
        return http_send_error(s, r, &e);
    }
    return routes_dispatch(s, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)c;
    server *s = cls;
    http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    int prompt = 0, completion = 0, cached = 0, steps = -1;
    double ttft = -1, queue = -1, wait = -1, fwd = -1, t_submit = 0, t_first = 0;
    if (r->job) {
        job *j = r->job;
        uv_mutex_lock(&j->mu);
        int done = j->done;
        uv_mutex_unlock(&j->mu);
        if (!done || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) engine_cancel(s->eng, j, CANCEL_CLIENT);
        /* counts so far (a cancelled request reports what it got) */
        prompt = atomic_load(&j->stat_prompt);
        completion = atomic_load(&j->stat_completion);
        cached = atomic_load(&j->stat_cached);
        ttft = atomic_load(&j->stat_ttft);
        queue = atomic_load(&j->stat_queue);
        wait = atomic_load(&j->stat_wait);
        fwd = atomic_load(&j->stat_fwd);
        steps = atomic_load(&j->stat_steps);
        t_submit = j->t_submit;
        t_first = t_submit + ttft;
        j->req = NULL;
    }
    r->conn = NULL;
    if (r->hc) {
        if (r->hc->req == r) r->hc->req = NULL;
        r->hc = NULL;
    }
    int status = r->status ? r->status : 499;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 200) status = 499;
    metrics_request(&s->met, status, prompt, completion);
    if (s->cfg.log_requests) {
        double total = (srv_now() - r->t0) * 1e3;
        char tt[32] = "-", tl[160] = "";
        if (ttft >= 0) {
            snprintf(tt, sizeof tt, "%.1fms", ttft * 1e3);
            /* the timeline to the first token: arrival -> queued (in: body, validation,
             * tokenizing) -> admitted (queue) -> first forward with its tokens begins
             * (wait) -> first token (fwd) -> a stream's first bytes taken (out); steps:
             * engine steps begun from queued to first token */
            char out[32] = "-";
            if (r->t_out > 0) snprintf(out, sizeof out, "%.1fms", (r->t_out - t_first) * 1e3);
            snprintf(tl, sizeof tl, " in=%.1fms queue=%.1fms wait=%.1fms fwd=%.1fms out=%s steps=%d",
                     (t_submit - r->t0) * 1e3, queue * 1e3, wait * 1e3, fwd * 1e3, out, steps);
        }
        char method[4 * sizeof r->method_s + 4], url[256];
        guard_log_escape(method, sizeof method, r->method_s, sizeof r->method_s);
        guard_log_escape(url, sizeof url, r->url, (size_t)-1);
        fprintf(stderr, "lmserve: %s %s %d prompt=%d reused=%d completion=%d ttft=%s total=%.1fms%s\n", method, url,
                status, prompt, cached, completion, tt, total, tl);
    }
    if (r->prev)
        r->prev->next = r->next;
    else
        s->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    s->n_reqs--;
    req_unref(r);
}

/* ---- the loop ------------------------------------------------------------------------------ */

static void finish_shutdown(server *s);

static void on_mhd_timer(uv_timer_t *t)
{
    busy_begin(t->data);
    mhd_run(t->data);
    busy_end(t->data);
}

static void mhd_run(server *s)
{
    if (!s->d || s->finishing) return;
    MHD_run(s->d);
    eofs_tell(s);
    /* Run MHD again at least once a second even when it has no timeout to report.
     * At --max-connections MHD takes its listening socket out of its epoll set and
     * puts it back only inside a later MHD_run; when the idle timeout then closes
     * every connection, MHD has no timeout left and nothing polls, so no MHD_run
     * ever comes and the server stops accepting for good (test_hostile.py
     * test_flood_global: a flood past the limit wedged the server). */
    MHD_UNSIGNED_LONG_LONG to = 0;
    if (MHD_get_timeout(s->d, &to) != MHD_YES || to > 1000) to = 1000;
    uv_timer_start(&s->mhd_timer, on_mhd_timer, (uint64_t)to, 0);
    if (s->draining && s->n_reqs == 0) finish_shutdown(s);
}

static void on_mhd_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    busy_begin(h->data);
    mhd_run(h->data);
    busy_end(h->data);
}

static void notify(void *cls, job *j)
{
    server *s = cls;
    uv_mutex_lock(&s->ready_mu);
    if (!j->in_ready) {
        j->in_ready = 1;
        job_ref(j);
        j->ready_next = s->ready_head;
        s->ready_head = j;
    }
    uv_mutex_unlock(&s->ready_mu);
    uv_async_send(&s->async);
}

/* Detach the ready list.  Jobs keep in_ready set until ready_next() has read their
 * link, so the engine cannot re-link a job while the loop thread walks the list. */
static job *ready_take(server *s)
{
    uv_mutex_lock(&s->ready_mu);
    job *list = s->ready_head;
    s->ready_head = NULL;
    uv_mutex_unlock(&s->ready_mu);
    return list;
}

static job *ready_next(server *s, job *j)
{
    uv_mutex_lock(&s->ready_mu);
    job *next = j->ready_next;
    j->ready_next = NULL;
    j->in_ready = 0;
    uv_mutex_unlock(&s->ready_mu);
    return next;
}

static void on_async(uv_async_t *a)
{
    server *s = a->data;
    busy_begin(s);
    job *list = ready_take(s);
    while (list) {
        job *j = list;
        list = ready_next(s, j);
        json_alloc_failed(); /* forget an earlier failure */
        output_drain(j);     /* format the engine's events now: overflow is seen even if nobody reads */
        if (json_alloc_failed() && j->req) {
            /* a JSON value could not be built: what was formatted may lack a field, so
             * the request ends here (503, or a stream cut short) rather than send it */
            j->req->out_broken = 1;
            engine_cancel(s->eng, j, CANCEL_CLIENT);
        }
        if (j->req && j->req->parked) {
            unpark(s, j->req);
        } else if (j->req && atomic_load(&j->cancel) == CANCEL_OVERFLOW && j->req->conn) {
            /* the client stopped reading and its socket is full: MHD will not call the
             * reader again, so let the connection time out now instead of at --timeout */
            MHD_set_connection_option(j->req->conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned int)1);
        }
        job_unref(j);
    }
    mhd_run(s);
    busy_end(s);
}

static void on_force(uv_timer_t *t)
{
    server *s = t->data;
    /* whatever is still parked after the grace period is closed */
    for (http_req *r = s->reqs; r; r = r->next) {
        if (r->job) engine_cancel(s->eng, r->job, CANCEL_CLIENT);
        unpark(s, r);
    }
    mhd_run(s);
}

static void on_drain_deadline(uv_timer_t *t)
{
    server *s = t->data;
    fprintf(stderr, "lmserve: drain deadline reached, ending %d request(s)\n", s->n_reqs);
    engine_cancel_all(s->eng, CANCEL_SHUTDOWN);
    uv_timer_start(&s->force_timer, on_force, 2000, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    server *s = h->data;
    if (s->draining) {
        uv_timer_start(&s->drain_timer, on_drain_deadline, 0, 0);
        return;
    }
    fprintf(stderr, "lmserve: %s received, shutting down (%d request(s) in flight)\n",
            signum == SIGINT ? "SIGINT" : "SIGTERM", s->n_reqs);
    s->draining = 1;
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    uv_timer_start(&s->drain_timer, on_drain_deadline, (uint64_t)s->cfg.shutdown_timeout * 1000, 0);
    mhd_run(s);
}

/* Close every handle server_new initialised (each once); uv_run then completes the closes. */
static void close_handles(server *s)
{
    uv_handle_t *h[] = { (uv_handle_t *)&s->async,       (uv_handle_t *)&s->mhd_poll,    (uv_handle_t *)&s->mhd_timer,
                         (uv_handle_t *)&s->drain_timer, (uv_handle_t *)&s->force_timer, (uv_handle_t *)&s->sigint,
                         (uv_handle_t *)&s->sigterm };
    for (unsigned i = 0; i < sizeof h / sizeof h[0]; i++)
        if ((s->handles & (1u << i)) && !uv_is_closing(h[i])) uv_close(h[i], NULL);
}

static void finish_shutdown(server *s)
{
    if (s->finishing) return;
    s->finishing = 1;
    engine_stop(s->eng);
    s->eng = NULL;
    close_handles(s);
    for (job *l = ready_take(s); l;) {
        job *j = l;
        l = ready_next(s, j);
        job_unref(j);
    }
    MHD_stop_daemon(s->d);
    s->d = NULL;
}

/* ---- setup --------------------------------------------------------------------------------- */

static int tokenize_cb(void *cls, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    return model_tokenize(cls, text, len, add_bos, out, cap);
}

/* The id a model is served under without --model-id: the name the file gives itself (GGUF
 * general.name) unless that is just the architecture's name (llama.cpp's converters write
 * "llama" for llama2.c checkpoints), else the file or folder name without its extension
 * (Hugging Face and course folders are named after their model).  Spaces and control
 * characters become '-', so the id can be typed and put in a URL path. */
static int chat_prompt_cb(void *cls, json_t *messages, int32_t **out, int *n_out, api_error *err)
{
    server *s = cls;
    return chat_prompt(&s->chat, s->m, messages, out, n_out, err);
}

static void default_model_id(const char *path, const model_info *mi, char *out, size_t n)
{
    if (mi->name && mi->name[0] && strcmp(mi->name, mi->arch ? mi->arch : "") != 0) {
        snprintf(out, n, "%s", mi->name);
        for (char *p = out; *p; p++)
            if ((unsigned char)*p <= ' ' || *p == 0x7f) *p = '-';
        return;
    }
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/') start--;
    size_t end = len;
    for (size_t i = len; i > start; i--)
        if (path[i - 1] == '.') {
            if (i - 1 > start) end = i - 1;
            break;
        }
    snprintf(out, n, "%.*s", (int)(end - start), path + start);
}

/* libmicrohttpd's messages, one line each, escaped like everything else in the log */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512], line[512];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n < 0) return;
    size_t len = strlen(msg);
    while (len && msg[len - 1] == '\n') msg[--len] = '\0';
    guard_log_escape(line, sizeof line, msg, (size_t)-1);
    fprintf(stderr, "lmserve: http: %s\n", line);
}

/* Each handle's bit in s->handles, in close_handles' order: set once its init succeeded. */
enum { H_ASYNC = 1, H_POLL = 2, H_TIMER = 4, H_DRAIN = 8, H_FORCE = 16, H_SIGINT = 32, H_SIGTERM = 64 };

/* The model, the chat template and the validation context. */
static int setup_model(server *s, const server_config *cfg)
{
    char err[512] = "";
    model_load_opts lo = { .tokenizer_path = cfg->tokenizer_path, .n_threads = cfg->threads };
    int lrc = model_load(&s->m, cfg->model_path, &lo, err, sizeof err);
    if (lrc < 0) {
        fprintf(stderr, "lmserve: cannot load model: %s\n", err[0] ? err : model_strerror(lrc));
        return -1;
    }
    model_set_kv_f16(s->m, cfg->kv_f16);
    const model_info *mi = model_get_info(s->m);
    s->ctx = cfg->ctx > 0 && cfg->ctx < mi->ctx_len ? cfg->ctx : mi->ctx_len;
    if (cfg->model_id)
        snprintf(s->model_id, sizeof s->model_id, "%s", cfg->model_id);
    else
        default_model_id(cfg->model_path, mi, s->model_id, sizeof s->model_id);
    s->vc = (validate_ctx){ .model_id = s->model_id,
                            .vocab = mi->vocab_size,
                            .ctx = s->ctx,
                            .add_bos = mi->add_bos,
                            .bos_id = mi->bos_id,
                            .max_tokens_limit = cfg->max_tokens_limit,
                            .max_choices = cfg->max_choices,
                            .context_overflow = cfg->context_overflow,
                            .response_limit = cfg->response_limit,
                            .tokenize = tokenize_cb,
                            .tok_cls = s->m };
    if (constraint_vocab_from_model(s->m, &s->cvocab) != SAMPLER_OK ||
        !(s->constraints = constraint_table_new(s->cvocab, CONSTRAINT_TABLE_SIZE))) {
        fprintf(stderr, "lmserve: out of memory building the vocabulary trie\n");
        return -1;
    }
    s->vc.constraints = s->constraints;
    char cmsg[512];
    if (chat_setup(&s->chat, s->m, cfg->chat_template, cmsg, sizeof cmsg) < 0) {
        fprintf(stderr, "lmserve: %s\n", cmsg);
        return -1;
    }
    if (chat_active(&s->chat)) {
        s->vc.chat_prompt = chat_prompt_cb;
        s->vc.chat_cls = s;
        s->vc.chat_stop_token = s->chat.stop_token;
        s->vc.chat_stop_text = s->chat.stop_is_text ? s->chat.stop_text : NULL;
    }
    return 0;
}

/* libmicrohttpd listening on cfg->host:cfg->port, and s->port the port it got. */
static int setup_listener(server *s, const server_config *cfg)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", cfg->port);
    int gai = getaddrinfo(cfg->host, port_s, &hints, &ai);
    if (gai != 0 || !ai) {
        fprintf(stderr, "lmserve: cannot resolve host '%s': %s\n", cfg->host, gai_strerror(gai));
        if (ai) freeaddrinfo(ai);
        return -1;
    }
    int per_ip = cfg->max_connections_per_ip;
    if (per_ip < 0) per_ip = cfg->max_connections / 8 > 0 ? cfg->max_connections / 8 : 1;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: MHD's default (SO_REUSEADDR) lets a restart
     * bind while old connections linger in TIME_WAIT, and SO_REUSEPORT, which that option
     * adds, would let a second server share a busy port and take some of its clients. */
    s->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                            NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)cfg->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->timeout, MHD_OPTION_END);
    int listen_errno = errno;
    s->ipv6 = ai->ai_family == AF_INET6;
    int on_loopback = guard_addr_is_loopback(ai->ai_addr);
    freeaddrinfo(ai);
    if (!s->d) {
        fprintf(stderr, "lmserve: cannot listen on %s:%d: %s\n", cfg->host, cfg->port, strerror(listen_errno));
        return -1;
    }
    if (guard_hosts_init(&s->hosts, cfg->allowed_hosts, on_loopback) < 0) {
        fprintf(stderr, "lmserve: out of memory\n");
        return -1;
    }
    const union MHD_DaemonInfo *li = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    s->port = cfg->port;
    if (li && getsockname(li->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

/* The loop's handles: MHD's epoll fd, its timer, the shutdown timers, the signals. */
static int setup_handles(server *s)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || uv_poll_init(&s->loop, &s->mhd_poll, di->epoll_fd) != 0) return -1;
    s->handles |= H_POLL;
    s->mhd_poll.data = s;
    if (uv_timer_init(&s->loop, &s->mhd_timer) != 0) return -1;
    s->handles |= H_TIMER;
    if (uv_timer_init(&s->loop, &s->drain_timer) != 0) return -1;
    s->handles |= H_DRAIN;
    if (uv_timer_init(&s->loop, &s->force_timer) != 0) return -1;
    s->handles |= H_FORCE;
    s->mhd_timer.data = s->drain_timer.data = s->force_timer.data = s;
    if (uv_signal_init(&s->loop, &s->sigint) != 0) return -1;
    s->handles |= H_SIGINT;
    if (uv_signal_init(&s->loop, &s->sigterm) != 0) return -1;
    s->handles |= H_SIGTERM;
    s->sigint.data = s->sigterm.data = s;
    if (uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll) != 0 ||
        uv_signal_start(&s->sigint, on_signal, SIGINT) != 0 || uv_signal_start(&s->sigterm, on_signal, SIGTERM) != 0)
        return -1;
    return 0;
}

int server_new(server **out, const server_config *cfg)
{
    *out = NULL;
    if (cfg->api_key && !*cfg->api_key) {
        fprintf(stderr, "lmserve: the API key is empty, which would accept any client: give a key, or "
                        "to serve without one, give no --api-key and leave LMSERVE_API_KEY unset\n");
        return -1;
    }
    server *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "lmserve: out of memory\n");
        return -1;
    }
    s->cfg = *cfg;
    snprintf(s->server_header, sizeof s->server_header, "lmserve/%s", cfg->version ? cfg->version : "unknown");
    /* process-wide, and the same for every server: jansson's hash seed and allocator, and
     * SIGPIPE ignored (a client that leaves mid-write is an error return, not a signal) */
    json_object_seed(0);
    json_set_alloc_funcs(json_malloc_noted, free);
    signal(SIGPIPE, SIG_IGN);

    /* Listen first, then load: an address that cannot be listened on fails before a long
     * load, and a client that connects while the model loads waits in the listen backlog
     * and is answered once the model is ready (MHD accepts nothing before the loop runs). */
    const char *what = "out of memory";
    if (setup_listener(s, cfg) < 0 || setup_model(s, cfg) < 0) goto fail_quiet;
    if (metrics_init(&s->met) != 0) goto fail;
    s->met_ok = 1;
    if (uv_mutex_init(&s->ready_mu) != 0) goto fail;
    s->mutex_ok = 1;
    what = "cannot set up the event loop";
    if (uv_loop_init(&s->loop) != 0) goto fail;
    s->loop_ok = 1;
    if (uv_async_init(&s->loop, &s->async, on_async) != 0) goto fail;
    s->handles |= H_ASYNC;
    s->async.data = s;
    engine_config ec = { .model = s->m,
                         .parallel = cfg->parallel,
                         .ctx = s->ctx,
                         .queue = cfg->queue,
                         .prefill_chunk = cfg->prefill_chunk,
                         .step_budget = cfg->step_budget,
                         .outbox_limit = cfg->outbox_limit,
                         .response_limit = cfg->response_limit,
                         .metrics = &s->met,
                         .notify = notify,
                         .notify_cls = s,
                         .cache_bytes =
                             cfg->cache_mb < 0 ? kv_store_default_budget(s->m, s->ctx) : (size_t)cfg->cache_mb << 20 };
    if (engine_start(&s->eng, &ec) < 0) {
        what = "cannot start the engine thread";
        goto fail;
    }
    if (setup_handles(s) < 0) goto fail;

    const model_info *mi = model_get_info(s->m);
    fprintf(stderr,
            "lmserve: model %s (%s %s, %d layers, dim %d, vocab %d, ctx %d), %d slots, queue %d, "
            "prefix cache %zu MiB\n",
            s->model_id, mi->arch, mi->weight_type, mi->n_layers, mi->dim, mi->vocab_size, s->ctx, cfg->parallel,
            cfg->queue, ec.cache_bytes >> 20);
    if (s->chat.error[0])
        fprintf(stderr,
                "lmserve: warning: the model's chat template is not understood (%s): chat requests "
                "will be refused (501); choose one with --chat-template NAME|FILE, or 'none' for plain "
                "'role: content' lines\n",
                s->chat.error);
    else if (s->chat.tpl)
        fprintf(stderr, "lmserve: chat template: %s (%s)%s%s\n", s->chat.name,
                !strcmp(s->chat.source, "model") ? "from the model" : s->chat.source,
                s->chat.stop_token >= 0 || s->chat.stop_is_text ? ", stops at " : "", s->chat.stop_text);
    if (s->ipv6)
        fprintf(stderr, "lmserve: listening on http://[%s]:%d\n", cfg->host, s->port);
    else
        fprintf(stderr, "lmserve: listening on http://%s:%d\n", cfg->host, s->port);
    fflush(stderr);
    *out = s;
    return 0;

fail:
    fprintf(stderr, "lmserve: %s\n", what);
fail_quiet:
    server_free(s);
    return -1;
}

int server_port(const server *s) { return s->port; }

int server_run(server *s)
{
    mhd_run(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    if (!s->finishing) finish_shutdown(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    fprintf(stderr, "lmserve: stopped\n");
    return 0;
}

void server_free(server *s)
{
    if (!s) return;
    if (!s->finishing) {
        /* never run, or set up only in part */
        engine_stop(s->eng);
        s->eng = NULL;
        if (s->d) MHD_stop_daemon(s->d);
        s->d = NULL;
        if (s->loop_ok) close_handles(s);
    }
    if (s->loop_ok) {
        uv_run(&s->loop, UV_RUN_DEFAULT); /* the closes complete */
        uv_loop_close(&s->loop);
    }
    guard_hosts_free(&s->hosts);
    if (s->mutex_ok) uv_mutex_destroy(&s->ready_mu);
    if (s->met_ok) metrics_destroy(&s->met);
    chat_free(&s->chat);
    constraint_table_free(s->constraints); /* every job is gone: no cache is held elsewhere */
    sampler_vocab_free(s->cvocab);
    model_free(s->m);
    free(s);
}
