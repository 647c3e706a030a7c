/* test_lifecycle.c -- server_new / server_run / server_free in-process: a server starts,
 * answers, stops on SIGTERM and is freed, twice in one process; setups that fail return
 * an error and leave nothing behind (ASan's leak check covers that under SANITIZE). */
#include "server/server.h"
#include "tests/testdata.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *run_thread(void *p) { return (void *)(long)server_run(p); }

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One request on its own connection: the status, and the answer in out. */
static int request(int port, const char *method, const char *path, const char *body, char *out, size_t cap)
{
    int fd = connect_to(port);
    cr_assert(fd >= 0, "cannot connect to port %d", port);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    cr_assert(write(fd, req, (size_t)n) == n);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = read(fd, out + got, cap - 1 - got)) > 0) got += (size_t)r;
    out[got] = '\0';
    close(fd);
    int status = 0;
    cr_assert(sscanf(out, "HTTP/1.1 %d", &status) == 1, "no status line: %.200s", out);
    return status;
}

static void config(server_config *c, const char *model)
{
    server_config_init(c);
    c->model_path = model;
    c->port = 0;
    c->threads = 1;
    c->parallel = 2;
    c->log_requests = 0;
    c->version = "test";
}

Test(lifecycle, start_answer_stop_twice)
{
    char model[1024];
    td_model(model, sizeof model, "stories260K.gguf");
    for (int round = 0; round < 2; round++) {
        server_config c;
        config(&c, model);
        server *s = NULL;
        cr_assert_eq(server_new(&s, &c), 0, "round %d", round);
        cr_assert_not_null(s);
        int port = server_port(s);
        cr_assert_gt(port, 0);
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, run_thread, s), 0);
        char out[8192];
        cr_assert_eq(request(port, "GET", "/health", NULL, out, sizeof out), 200, "%s", out);
        cr_assert(strstr(out, "\"status\":\"ok\""), "%s", out);
        cr_assert_eq(request(port, "POST", "/tokenize", "{\"content\": \"Once upon a time\"}", out, sizeof out), 200);
        cr_assert(strstr(out, "\"tokens\":[1,403,407,261,378]"), "%s", out);
        cr_assert_eq(
            request(port, "POST", "/v1/completions", "{\"prompt\": \"Once\", \"max_tokens\": 3}", out, sizeof out), 200,
            "%s", out);
        cr_assert(strstr(out, "\"completion_tokens\":3"), "%s", out);
        /* the process's SIGTERM: the server's own watcher stops it gracefully */
        cr_assert_eq(kill(getpid(), SIGTERM), 0);
        void *rv = NULL;
        cr_assert_eq(pthread_join(t, &rv), 0);
        cr_assert_eq((long)rv, 0);
        server_free(s);
        int fd = connect_to(port);
        cr_assert_lt(fd, 0, "port %d still accepts after server_free", port);
    }
}

Test(lifecycle, failed_setups_return_an_error)
{
    char model[1024];
    td_model(model, sizeof model, "stories260K.gguf");
    server_config c;
    server *s = (server *)&c; /* set to NULL on failure */

    config(&c, "/nonexistent/model.gguf");
    cr_assert_lt(server_new(&s, &c), 0);
    cr_assert_null(s);

    config(&c, model);
    c.api_key = "";
    s = (server *)&c;
    cr_assert_lt(server_new(&s, &c), 0);
    cr_assert_null(s);

    config(&c, model);
    c.host = "no.such.host.invalid";
    s = (server *)&c;
    cr_assert_lt(server_new(&s, &c), 0);
    cr_assert_null(s);

    /* a port that is taken (by a socket without SO_REUSEPORT, which the server's own
     * listening sockets share) */
    int taken = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    cr_assert(bind(taken, (struct sockaddr *)&a, sizeof a) == 0 && listen(taken, 1) == 0);
    cr_assert(getsockname(taken, (struct sockaddr *)&a, &al) == 0);
    config(&c, model);
    c.port = ntohs(a.sin_port);
    s = (server *)&c;
    cr_assert_lt(server_new(&s, &c), 0);
    cr_assert_null(s);
    close(taken);

    /* a chat template that cannot be read: after listening and loading the model */
    config(&c, model);
    c.chat_template = "/nonexistent/template.jinja";
    s = (server *)&c;
    cr_assert_lt(server_new(&s, &c), 0);
    cr_assert_null(s);
    server_free(NULL);
}
