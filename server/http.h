/* http.h -- the loop-thread side of the server (internal to server/): the server
 * object, one http_req per HTTP request, and the helpers routes.c uses to answer.
 * Everything here runs on the loop thread only. */
#ifndef LMSERVE_SERVER_HTTP_H
#define LMSERVE_SERVER_HTTP_H

#include "server/server_internal.h"
#include "server/chat.h"

#include <microhttpd.h>
#include <sys/socket.h>

struct model;

enum { M_GET = 1, M_HEAD = 2, M_POST = 4, M_OPTIONS = 8, M_OTHER = 16 };

enum {
    ROUTE_COMPLETIONS,
    ROUTE_CHAT,
    ROUTE_MODELS,
    ROUTE_MODEL,
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_TOKENIZER_INFO,
    ROUTE_STATIC,
};

typedef struct http_conn http_conn;

/* One per TCP connection, from accept to close (MHD's socket context). */
struct http_conn {
    server *srv;
    struct MHD_Connection *mc;
    int fd;
    uv_poll_t watch;                /* UV_DISCONNECT on fd, stopped once it fires */
    int peer_closed;                /* the client has closed (FIN or reset) */
    http_req *req;                  /* the request in progress on it, or NULL */
    http_conn *eof_prev, *eof_next; /* srv->eofs: closed by the client, MHD not yet told */
    int in_eofs;
};

struct http_req {
    int refs; /* MHD's con_cls + a streaming response */
    server *srv;
    struct MHD_Connection *conn;
    http_conn *hc; /* NULL once the request is completed */
    int route;     /* ROUTE_* or -1 */
    int method;    /* M_* */
    char method_s[12];
    char *url;
    double t0;    /* arrival: the request's headers are in */
    double t_out; /* a stream's first bytes taken by the connection (0: none yet) */
    sbuf body;
    int too_large;
    int oom;        /* the body could not be stored: answered 503 */
    int out_broken; /* its job's output could not be formatted whole (on_async) */
    job *job;
    int waiting; /* a non-streamed job is running; the handler answers on resume */
    int parked;  /* suspended by us */
    int status;
    int close; /* close the connection after the answer (bad framing) */
    /* Work done off the loop thread (http_offload): parsing, validating, tokenizing. */
    uv_work_t work;
    void (*work_fn)(http_req *r);                         /* on a libuv worker thread */
    enum MHD_Result (*finish_fn)(server *s, http_req *r); /* on the loop thread, in the handler */
    int working;                                          /* work_fn is running (or queued) */
    int worked;                                           /* work_fn is done: finish_fn answers on resume */
    /* the work's results */
    int wrc; /* 0 or -1 with werr set */
    api_error werr;
    job_params wp; /* completions (freed with r unless a job took them) */
    char *wbody;   /* tokenize/detokenize: the answer's JSON (freed with r) */
    size_t wbody_len;
    http_req *prev, *next; /* srv->reqs */
};

/* The Host names a server answers (guard.c). */
typedef struct {
    int check;    /* 0: any Host */
    char **names; /* --allowed-hosts, lower case; ".example.com": it and its subdomains */
    int n;
} guard_hosts;

struct server {
    server_config cfg;
    guard_hosts hosts;
    struct model *m;
    char model_id[256];
    chat_cfg chat;          /* [const] how chats are rendered (chat.c) */
    char server_header[96]; /* "lmserve/VERSION" */
    validate_ctx vc;
    sampler_vocab *cvocab;                /* the model's tokens for constraints */
    struct constraint_table *constraints; /* compiled grammars by text (constraint.h) */
    engine *eng;
    metrics met;
    uv_loop_t loop;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer, drain_timer, force_timer;
    uv_async_t async;
    uv_signal_t sigint, sigterm;
    struct MHD_Daemon *d;
    uv_mutex_t ready_mu;
    job *ready_head;
    http_req *reqs;
    int n_reqs;
    http_conn *eofs;
    int n_conns;
    int draining, finishing;
    int ctx;
    int port, ipv6;                /* where it listens */
    unsigned handles;              /* H_* (http.c): the loop handles initialised */
    int loop_ok, mutex_ok, met_ok; /* what server_free must undo */
    int busy_depth;                /* the loop thread's time in callbacks (http.c) */
    double busy_t0, loop_busy_total, loop_busy_max;
};

/* routes.c */
int route_find(const char *url, unsigned *allowed);
/* Answer a request whose body (if any) is complete.  Returns MHD_YES/MHD_NO. */
enum MHD_Result routes_dispatch(server *s, http_req *r);
/* Called again on resume for a parked non-streamed completion. */
enum MHD_Result routes_resume(server *s, http_req *r);

/* guard.c: checks before routing, and log escaping (see the file's comment) */
/* 0, or -1 with e set (400, or 501 for a transfer coding other than chunked). */
int guard_framing(struct MHD_Connection *c, const char *version, api_error *e);
/* g checks Host names when the server listens on loopback or list is given; list is
 * --allowed-hosts ("a.example,.b.example"; "*": any).  0, or -1 out of memory. */
int guard_hosts_init(guard_hosts *g, const char *list, int on_loopback);
void guard_hosts_free(guard_hosts *g);
int guard_host_allowed(const guard_hosts *g, const char *host);
int guard_addr_is_loopback(const struct sockaddr *sa);
/* A POST may carry no Origin, the server's own (the Host's) or cors_origin ("*": any). */
int guard_origin_allowed(const char *origin, const char *host, const char *cors_origin);
/* s (at most max_in bytes of it) with every byte outside printable ASCII, and the
 * backslash, written \xNN, and "..." if cut; into out (cap > 0).  Returns the length. */
size_t guard_log_escape(char *out, size_t cap, const char *s, size_t max_in);

/* http.c */
enum MHD_Result http_send(server *s, http_req *r, int status, const char *ctype, const void *data, size_t len,
                          const char *const *headers);
/* The same with a malloc'd body that the response takes (freed with it, even on failure):
 * no copy of a large answer on the loop thread. */
enum MHD_Result http_send_owned(server *s, http_req *r, int status, const char *ctype, char *data, size_t len,
                                const char *const *headers);
enum MHD_Result http_send_error(server *s, http_req *r, const api_error *e);
/* 503 out_of_memory; MHD_NO (the connection closes) when not even that can be sent. */
enum MHD_Result http_send_oom(server *s, http_req *r);
/* Steals o; NULL (a failed build) or a failed dump is 503 out_of_memory. */
enum MHD_Result http_send_json(server *s, http_req *r, int status, json_t *o);
/* Start a streamed (SSE) answer for r->job. */
enum MHD_Result http_send_stream(server *s, http_req *r);
/* r's job is done: its outbox (the whole answer) is the body, read without a copy. */
enum MHD_Result http_send_job_body(server *s, http_req *r, int status, const char *const *headers);
void http_park(server *s, http_req *r);
/* Run r->work_fn (set with finish_fn) on a libuv worker thread and park r
 * meanwhile; when it is done r is resumed and finish_fn answers.  The loop thread never
 * parses or tokenizes a large request body itself: a 1 MiB body takes a few hundred
 * milliseconds, during which every other connection, streams included, would wait.
 * Bodies of at most 8 KiB are worked on at once, on the loop thread. */
enum MHD_Result http_offload(server *s, http_req *r);

#endif
