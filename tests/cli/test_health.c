/* test_health.c -- `lmserve health` (cli/health.c): its options go through cli_parse
 * (both spellings, the same range message), and its exit code follows the status line
 * of a listener in this process that answers one request. */
#include <criterion/criterion.h>

#include "cli/cli.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    int fd;             /* listening socket */
    const char *answer; /* what to send back after the request's header */
    char request[512];  /* what it received */
} listener;

static void *serve_one(void *arg)
{
    listener *l = arg;
    int c = accept(l->fd, NULL, NULL);
    if (c < 0) return NULL;
    size_t got = 0;
    while (got < sizeof l->request - 1 && !strstr(l->request, "\r\n\r\n")) {
        ssize_t r = recv(c, l->request + got, sizeof l->request - 1 - got, 0);
        if (r <= 0) break;
        got += (size_t)r;
        l->request[got] = '\0';
    }
    send(c, l->answer, strlen(l->answer), MSG_NOSIGNAL);
    close(c);
    return NULL;
}

/* A socket bound to 127.0.0.1 on a free port; listening only if `listen_too`. */
static int bound_socket(int listen_too, char port[16])
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (listen_too) cr_assert_eq(listen(fd, 1), 0);
    snprintf(port, 16, "%u", ntohs(a.sin_port));
    return fd;
}

static int health(const char *const *args)
{
    char *argv[16] = { "health" };
    int argc = 1;
    while (args[argc - 1]) {
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    return cli_health(argc, argv);
}

/* Run `lmserve health` against a listener that answers `answer`, options spelled
 * `--x v` or (equals_form) `--x=v`; the request it received is left in l->request. */
static int against(const char *answer, int equals_form, listener *l)
{
    char port[16], port_eq[32];
    l->fd = bound_socket(1, port);
    l->answer = answer;
    l->request[0] = '\0';
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, serve_one, l), 0);
    snprintf(port_eq, sizeof port_eq, "--port=%s", port);
    int rc = equals_form ? health((const char *[]){ "--host=127.0.0.1", port_eq, "--timeout=5", NULL })
                         : health((const char *[]){ "--host", "127.0.0.1", "--port", port, "--timeout", "5", NULL });
    pthread_join(t, NULL);
    close(l->fd);
    return rc;
}

Test(health, exit_code_follows_the_status_in_both_spellings)
{
    listener l;
    for (int eq = 0; eq < 2; eq++) {
        cr_assert_eq(against("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", eq, &l), 0, "spelling %d", eq);
        cr_assert(!strncmp(l.request, "GET /health HTTP/1.0\r\n", 22), "request '%s'", l.request);
        cr_assert_eq(against("HTTP/1.1 503 Service Unavailable\r\n\r\n", eq, &l), 1, "spelling %d", eq);
        cr_assert_eq(against("not http\r\n", eq, &l), 1, "spelling %d", eq);
    }
}

Test(health, nothing_listening_is_1)
{
    char port[16], port_eq[32];
    int fd = bound_socket(0, port); /* bound, not listening: connections are refused */
    snprintf(port_eq, sizeof port_eq, "--port=%s", port);
    cr_assert_eq(health((const char *[]){ port_eq, "--timeout=2", NULL }), 1);
    close(fd);
}

Test(health, bad_options_are_2_and_help_is_0)
{
    cr_assert_eq(health((const char *[]){ "--timeout=0", NULL }), 2);
    cr_assert_eq(health((const char *[]){ "--timeout", "3601", NULL }), 2);
    cr_assert_eq(health((const char *[]){ "--timeout=soon", NULL }), 2);
    cr_assert_eq(health((const char *[]){ "--timeout=", NULL }), 2);
    cr_assert_eq(health((const char *[]){ "--port", NULL }), 2);
    cr_assert_eq(health((const char *[]){ "--bogus", "1", NULL }), 2);
    cr_assert_eq(health((const char *[]){ "--help", NULL }), 0);
}
