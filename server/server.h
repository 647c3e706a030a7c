/* server.h -- lmserve's HTTP server: OpenAI-compatible API over libmicrohttpd + libuv.
 *
 * Design
 * ------
 * Two threads own everything:
 *
 *   loop thread (the caller of server_run): one libuv loop drives libmicrohttpd in
 *   external epoll mode (a uv_poll_t watches MHD's epoll fd, a uv_timer_t is re-armed
 *   from MHD_get_timeout after every MHD_run).  Requests are routed (routes.c),
 *   validated into job parameters before anything is queued (validate.c), and turned
 *   into a `job` that is pushed onto the engine's bounded queue.  A connection whose
 *   job has nothing to send yet is suspended ("parked").  Every connection's socket is
 *   watched for UV_DISCONNECT from accept to close: a client that leaves cancels its
 *   job at once, and libmicrohttpd is made to read the end-of-file its edge-triggered
 *   epoll would otherwise miss (http.c), so the connection is released at once.
 *   Suspend and resume happen only on this thread, with the state tracked in the
 *   request.
 *
 *   engine thread (engine.c, the scheduler): the only user of model_forward.
 *   Continuous batching: every step gathers all running sequences (up to
 *   --parallel; the n choices of a request are separate sequences) into ONE
 *   model_forward call.  Decoding sequences feed one token; prompts are prefilled
 *   in chunks under a per-step token budget so running streams never freeze
 *   behind a long prompt.  Each sequence has its own sampler seeded with seed +
 *   choice index, and model_forward computes each row the same way whatever else
 *   is in the batch, so a seeded request gives bit-identical tokens and logprobs
 *   alone or under load.  The scheduler knows nothing of JSON: it appends typed
 *   events to the job (a token with its scores, the text the detokenizer
 *   released, a finish reason; at the end, how the job ended and its usage),
 *   puts the job on a ready list and uv_async_send wakes the loop thread, which
 *   drains the whole list (sends coalesce).
 *
 *   output stage (output.c, on the loop thread): turns a job's events into SSE
 *   chunks or, at the end, the whole JSON body, through one append path that
 *   holds each answer to its size limit, then resumes the parked connection.
 *
 * Context window (--ctx, default the model's): past it, --context-overflow (or a
 * request's context_overflow) decides, with the sampler's crop (sampler_crop_start):
 * slide, the default, computes every token from the last ctx tokens at positions
 * 0..ctx-1 -- the window is recomputed as a prefill (what the cache still holds
 * exactly is kept) and a longer prompt is cropped to its last ctx tokens; shift keeps
 * the last ctx/2 tokens when the window is full; stop ends the choice.  Under shift
 * and stop a prompt longer than the window is a 400 context_length_exceeded.
 *
 * Out of memory: every allocation is checked, and a failure ends only the request that
 * met it, with 503 out_of_memory in OpenAI's error shape (a stream that has begun is cut
 * short or ends with an error event; when not even the error can be built, the connection
 * is closed).  Nothing is left half-built behind a 200: jansson drops some allocation
 * failures silently (a string that loses a byte), so its allocator notes every failure
 * (json_alloc_failed) and the server checks that note after each parse and each answer it
 * builds.  A capacity is grown only after its realloc succeeded, never `p = realloc(p, n)`.
 * Failing to start (model, port, loop) is a message on stderr and a negative return.
 * tests/integration/test_failalloc.py fails each allocation of the loop thread in turn.
 *
 * Shutdown (SIGINT/SIGTERM): MHD_quiesce_daemon, let in-flight requests finish until
 * --shutdown-timeout, then cancel the rest (streams get an error event and [DONE]),
 * join the engine, MHD_stop_daemon (no connection is suspended by then), close every
 * handle, return 0.
 */
#ifndef LMSERVE_SERVER_H
#define LMSERVE_SERVER_H

#include <stddef.h>

/* ---- Types ---------------------------------------------------------------- */

#define SERVER_MAX_PARALLEL 1024 /* most sequences one engine step may hold (--parallel) */

typedef struct {
    const char *model_path;     /* required */
    const char *tokenizer_path; /* NULL: the model's own / tokenizer.bin beside it */
    const char *model_id;       /* NULL: file name without extension */
    const char *host;           /* "127.0.0.1" */
    int port;                   /* 8080; 0 = a free port */
    int threads;                /* kernel threads; 0 = number of CPUs */
    int parallel;               /* sequences decoded together */
    int queue;                  /* requests waiting for a slot before 503 */
    int ctx;                    /* per-sequence context; 0 = the model's */
    int kv_f16;                 /* KV cache in F16 (--kv-type f16); 0 = F32 */
    int cache_mb;               /* prefix cache budget in MiB; 0 = no KV reuse; -1 = sized for the model */
    const char *api_key;        /* NULL: no auth */
    const char *cors_origin;    /* NULL: no CORS headers; also the one other origin a POST may come from */
    /* Host names answered besides loopback ones, comma-separated; ".example.com" is it and
     * its subdomains; "*" any.  NULL: on a loopback address only loopback names (a page
     * whose name an attacker rebinds to 127.0.0.1 is refused), elsewhere any. */
    const char *allowed_hosts;
    int max_tokens_limit; /* largest accepted max_tokens */
    int max_choices;      /* largest n * number of prompts */
    size_t body_limit;    /* bytes */
    int timeout;          /* idle connection timeout, seconds */
    int max_connections;
    /* Connections one client address may hold.  -1: max_connections / 8, so it takes
     * eight addresses to fill the server; 0: no per-address limit.  Behind a proxy every
     * client has the proxy's address: give the proxy the whole budget (= max_connections)
     * and let it limit its own clients (docker/nginx.conf). */
    int max_connections_per_ip;
    int shutdown_timeout;      /* seconds to let streams finish on SIGTERM */
    int prefill_chunk;         /* prompt tokens per sequence per step */
    int step_budget;           /* prompt tokens per step over all sequences */
    size_t outbox_limit;       /* bytes buffered for a slow client before its job is cancelled */
    size_t response_limit;     /* bytes a non-streamed answer may reach (0: no limit): refused
                                 * up front when it could not fit, else ended at the limit (400) */
    int log_requests;          /* one line per request on stderr */
    const char *version;       /* the build's version: /health, the Server header (NULL: "unknown") */
    int context_overflow;      /* past the window: 0 slide (the default), 1 shift, 2 stop
                                 * (sampler.h's SAMPLER_CROP_*); a request may choose */
    const char *chat_template; /* --chat-template NAME|FILE|none; NULL: the model's own */
} server_config;

/* ---- Prototypes ------------------------------------------------------------- */

/* Fill c with the defaults listed by `lmserve serve --help`. */
void server_config_init(server_config *c);

typedef struct server server;

/* Load the model, start the engine thread, listen and print "lmserve: listening on
 * http://HOST:PORT" to stderr.  0 and *out set, or a negative code with a message printed
 * (an empty API key, a model that cannot be loaded, a port that cannot be bound, an
 * init that failed); nothing is left behind then.  Process-wide: SIGPIPE is ignored and
 * jansson's allocator set (the same for every server); SIGINT and SIGTERM are watched
 * while a server exists.  c's strings must outlive the server. */
int server_new(server **out, const server_config *c);
/* The port it listens on (the one the system chose for port 0). */
int server_port(const server *s);
/* Serve until SIGINT/SIGTERM, then shut down gracefully (see Shutdown above).  0. */
int server_run(server *s);
/* Free s (NULL is fine), run or not. */
void server_free(server *s);

#endif /* LMSERVE_SERVER_H */
