/* guard.c -- what a request must pass before it is routed, and how client-supplied
 * text is written to the log.
 *
 *   framing   one way to find where the body ends (RFC 9112 section 6): at most one
 *             Content-Length, never with Transfer-Encoding, no transfer coding but
 *             chunked, none at all in HTTP/1.0, no whitespace in a header's name.
 *             libmicrohttpd takes the first Content-Length, lets chunked win over
 *             Content-Length, reads an unknown coding until the client closes and
 *             ignores "Transfer-Encoding :" -- a proxy that frames the same bytes
 *             differently would let a client slip a second request past it.  A
 *             request that fails gets 400 (501 for an unknown coding) and its
 *             connection is closed after the answer.
 *   Host      a server listening on a loopback address answers only loopback names
 *             (localhost, *.localhost, 127.0.0.0/8, [::1]) and --allowed-hosts: a web
 *             page whose name the attacker rebinds to 127.0.0.1 sends its own name.
 *   Origin    a POST (every route that runs the model is one) that carries an Origin
 *             other than the server's own or --cors-origin is refused: a page on
 *             another site can send a text/plain POST without asking first.
 *   logs      bytes outside printable ASCII, and the backslash, are written \xNN, and
 *             every value is cut to a length, so no client can forge a line or send
 *             a terminal an escape sequence.
 */
#include "server/http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- framing ------------------------------------------------------------------------ */

typedef struct {
    int n_length, n_coding, bad_name;
    const char *coding;
} framing_seen;

static int is_tchar(unsigned char c) /* RFC 9110 token */ { return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c)); }

static enum MHD_Result framing_visit(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    framing_seen *f = cls;
    (void)kind;
    if (!*key) f->bad_name = 1;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        if (!is_tchar(*p)) f->bad_name = 1;
    if (!strcasecmp(key, "Content-Length")) f->n_length++;
    if (!strcasecmp(key, "Transfer-Encoding")) {
        f->n_coding++;
        f->coding = value;
    }
    return MHD_YES;
}

/* value is "chunked", whatever its case and the blanks around it */
static int is_chunked(const char *v)
{
    if (!v) return 0;
    while (*v == ' ' || *v == '\t') v++;
    if (strncasecmp(v, "chunked", 7) != 0) return 0;
    for (v += 7; *v; v++)
        if (*v != ' ' && *v != '\t') return 0;
    return 1;
}

int guard_framing(struct MHD_Connection *c, const char *version, api_error *e)
{
    framing_seen f = { 0 };
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_visit, &f);
    if (f.bad_name) {
        api_error_set(e, 400, "invalid_request_error", NULL, "bad_header",
                      "A header's name holds a character a name cannot have (whitespace before "
                      "the colon?)");
    } else if (f.n_length > 1) {
        api_error_set(e, 400, "invalid_request_error", NULL, "bad_framing",
                      "The request has %d Content-Length headers; one is allowed", f.n_length);
    } else if (f.n_coding && version && !strcmp(version, "HTTP/1.0")) {
        api_error_set(e, 400, "invalid_request_error", NULL, "bad_framing",
                      "Transfer-Encoding is not allowed in an HTTP/1.0 request");
    } else if (f.n_coding && f.n_length) {
        api_error_set(e, 400, "invalid_request_error", NULL, "bad_framing",
                      "The request has both Content-Length and Transfer-Encoding");
    } else if (f.n_coding > 1 || (f.n_coding && !is_chunked(f.coding))) {
        char shown[64];
        guard_log_escape(shown, sizeof shown, f.coding ? f.coding : "", 40);
        api_error_set(e, 501, "invalid_request_error", NULL, "unsupported_transfer_encoding",
                      "Transfer-Encoding '%s'%s is not supported; only chunked is", shown,
                      f.n_coding > 1 ? " (in several headers)" : "");
    } else {
        return 0;
    }
    return -1;
}

/* ---- Host ------------------------------------------------------------------------------- */

/* The name part of a Host value (no port, no brackets), lower case, into out;
 * *has_port set.  -1 if it does not fit. */
static int host_name(const char *host, char *out, size_t cap, int *has_port)
{
    const char *end;
    *has_port = 0;
    if (*host == '[') {
        const char *close = strchr(host, ']');
        if (!close) return -1;
        *has_port = close[1] == ':';
        host++;
        end = close;
    } else {
        end = strrchr(host, ':');
        if (end)
            *has_port = 1;
        else
            end = host + strlen(host);
    }
    size_t n = (size_t)(end - host);
    if (n == 0 || n >= cap) return -1;
    for (size_t i = 0; i < n; i++) out[i] = (char)tolower((unsigned char)host[i]);
    out[n] = '\0';
    return 0;
}

static int name_is_loopback(const char *name)
{
    size_t n = strlen(name);
    if (!strcmp(name, "localhost") || (n > 10 && !strcmp(name + n - 10, ".localhost"))) return 1;
    struct in_addr a4;
    if (inet_pton(AF_INET, name, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, name, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return 0;
}

int guard_addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

int guard_hosts_init(guard_hosts *g, const char *list, int on_loopback)
{
    memset(g, 0, sizeof *g);
    g->check = on_loopback || (list && *list);
    if (!list) return 0;
    for (const char *p = list; *p;) {
        while (*p == ',' || *p == ' ') p++;
        if (!*p) break;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        size_t n = (size_t)(e - p);
        if (n == 1 && *p == '*') {
            g->check = 0;
        } else {
            char **grown = realloc(g->names, sizeof *g->names * (size_t)(g->n + 1));
            if (!grown) {
                guard_hosts_free(g);
                return -1;
            }
            g->names = grown;
            char *name = malloc(n + 1);
            if (!name) {
                guard_hosts_free(g);
                return -1;
            }
            for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)p[i]);
            name[n] = '\0';
            g->names[g->n++] = name;
        }
        p = e;
    }
    return 0;
}

void guard_hosts_free(guard_hosts *g)
{
    for (int i = 0; i < g->n; i++) free(g->names[i]);
    free(g->names);
    memset(g, 0, sizeof *g);
}

int guard_host_allowed(const guard_hosts *g, const char *host)
{
    if (!g->check || !host) return 1; /* no Host at all: HTTP/1.0, never a browser */
    char name[256];
    int has_port;
    if (host_name(host, name, sizeof name, &has_port) < 0) return 0;
    if (name_is_loopback(name)) return 1;
    size_t n = strlen(name);
    for (int i = 0; i < g->n; i++) {
        const char *a = g->names[i];
        if (!strcmp(a, name)) return 1;
        size_t m = strlen(a);
        /* ".example.com": example.com and every name under it */
        if (a[0] == '.' && (!strcmp(a + 1, name) || (n > m && !strcmp(name + n - m, a)))) return 1;
    }
    return 0;
}

/* ---- Origin -------------------------------------------------------------------------- */

int guard_origin_allowed(const char *origin, const char *host, const char *cors_origin)
{
    if (!origin) return 1; /* not sent by a browser page: curl, the SDKs */
    if (cors_origin && (!strcmp(cors_origin, "*") || !strcasecmp(cors_origin, origin))) return 1;
    if (!host) return 0;
    /* the server's own origin: scheme://authority with the authority the Host names */
    const char *a = strstr(origin, "://");
    if (!a || strchr(a + 3, '/')) return 0;
    size_t scheme = (size_t)(a - origin);
    a += 3;
    if (!strcasecmp(a, host)) return 1;
    /* a Host without a port (a proxy may drop it) is the scheme's default port */
    char hn[256], on[256];
    int host_port, origin_port;
    if (host_name(host, hn, sizeof hn, &host_port) < 0 || host_port) return 0;
    if (host_name(a, on, sizeof on, &origin_port) < 0 || strcmp(hn, on) != 0) return 0;
    if (!origin_port) return 1;
    const char *port = strrchr(a, ':') + 1;
    return (scheme == 4 && !strncasecmp(origin, "http", 4) && !strcmp(port, "80")) ||
           (scheme == 5 && !strncasecmp(origin, "https", 5) && !strcmp(port, "443"));
}

/* ---- logs ------------------------------------------------------------------------------ */

size_t guard_log_escape(char *out, size_t cap, const char *s, size_t max_in)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    if (cap == 0) return 0;
    for (; s[i] && i < max_in; i++) {
        unsigned char c = (unsigned char)s[i];
        int plain = c >= 0x20 && c < 0x7f && c != '\\';
        if (o + (plain ? 1 : 4) + 4 > cap) break; /* room for this and a closing "..." */
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    if (s[i] && o + 3 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return o;
}
