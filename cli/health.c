/* health.c -- `lmserve health`: ask a running server's GET /health and exit 0 when it
 * answers 200.  The container image's HEALTHCHECK runs it, so the image needs no HTTP
 * client of its own (curl and its libraries would add ~10 MB for one request). */
#include "cli/cli.h"
#include "cli/opt.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fputs("usage: lmserve health [--host ADDR] [--port N] [--timeout S]\n"
          "\n"
          "GET /health from a running server: exit 0 if it answers 200 (ready), 1 otherwise\n"
          "(not reachable, loading, draining).  The container's HEALTHCHECK uses it.\n"
          "\n"
          "  --host ADDR     server address (default: 127.0.0.1)\n"
          "  --port N        server port (default: 8080)\n"
          "  --timeout S     give up after S seconds (default: 3)\n",
          f);
}

/* --timeout: seconds in (0, 3600] into a double. */
static int parse_seconds(const char *v, void *out)
{
    char *end;
    double t = strtod(v, &end);
    if (!*v || *end || !(t > 0 && t <= 3600)) return -1;
    *(double *)out = t;
    return 0;
}

/* Wait until fd is ready for events or the deadline passes: 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - cli_seconds(CLOCK_MONOTONIC);
        if (left <= 0) return 0;
        struct pollfd p = { .fd = fd, .events = events };
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        if (rc < 0 && errno == EINTR) continue;
        return rc < 0 ? -1 : rc > 0;
    }
}

int cli_health(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8080";
    double timeout = 3;
    const cli_opt opts[] = {
        OPT_STR("--host", &host),
        OPT_STR("--port", &port),
        OPT_FN("--timeout", &timeout, parse_seconds, "seconds in (0, 3600]"),
    };
    int rc = cli_parse("lmserve health", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (rc == CLI_HELP) usage(stdout);
    if (rc != CLI_OK) return rc == CLI_HELP ? 0 : 2;
    double deadline = cli_seconds(CLOCK_MONOTONIC) + timeout;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "lmserve health: cannot resolve %s:%s: %s\n", host, port, gai_strerror(gai));
        return 1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int ok = fd >= 0;
    if (ok && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        int e = 0;
        socklen_t el = sizeof e;
        ok = errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 1 &&
             getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0;
    }
    freeaddrinfo(ai);
    if (!ok) {
        fprintf(stderr, "lmserve health: cannot connect to %s:%s\n", host, port);
        if (fd >= 0) close(fd);
        return 1;
    }
    char req[300];
    int n = snprintf(req, sizeof req, "GET /health HTTP/1.0\r\nHost: %.200s\r\n\r\n", host);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        fprintf(stderr, "lmserve health: cannot send the request\n");
        close(fd);
        return 1;
    }
    char buf[512];
    size_t got = 0;
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
        if (wait_fd(fd, POLLIN, deadline) != 1) break;
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1) {
        fprintf(stderr, "lmserve health: no HTTP answer from %s:%s\n", host, port);
        return 1;
    }
    if (status != 200) {
        fprintf(stderr, "lmserve health: %s:%s answered %d\n", host, port, status);
        return 1;
    }
    return 0;
}
