/* serve.c -- `lmserve serve`: parse the command line into a server_config and run
 * the server (server/server.h). */
#include "cli/cli.h"
#include "cli/opt.h"
#include "model/model.h"
#include "sampler/sampler.h"
#include "server/server.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MODEL_REL "models/default/model.gguf"

static void usage(FILE *f, const server_config *d)
{
    fprintf(f,
            "usage: lmserve serve [--model FILE] [options]\n"
            "\n"
            "Serve a model over HTTP with an OpenAI-compatible API (completions, chat, SSE streaming).\n"
            "\n"
            "  --model FILE             model file or folder (default: $LMSERVE_DEFAULT_MODEL, else\n"
            "                           " DEFAULT_MODEL_REL " beside the binary's checkout or install)\n"
            "  --tokenizer FILE         llama2.c tokenizer.bin (default: the model's own / beside it)\n"
            "  --model-id NAME          id reported and accepted as \"model\" (default: the file's own name,\n"
            "                           GGUF general.name, else the file or folder name without extension)\n"
            "  --chat-template NAME|FILE  how chats are rendered: a built-in template (chatml, llama2,\n"
            "                           llama3, zephyr, gemma, phi3), a Jinja file, or 'none' for plain\n"
            "                           'role: content' lines (default: the model's own template, if any)\n"
            "  --host ADDR              address to listen on (default: %s)\n"
            "  --port N                 port; 0 picks a free one (default: %d)\n"
            "  --threads N              kernel threads; 0 = number of CPUs (default: %d)\n"
            "  --parallel N             sequences decoded together (slots) (default: %d)\n"
            "  --queue N                requests that may wait for a slot before 503 (default: %d)\n"
            "  --ctx N                  context window per sequence; 0 = the model's (default: %d)\n"
            "  --context-overflow slide|shift|stop  past the window (a request's context_overflow may\n"
            "                           choose): slide = the last ctx tokens every step, recomputed\n"
            "                           (exact; a forward pass over the window per token); shift = keep\n"
            "                           the last ctx/2 when full (cheaper, approximate); stop = end the\n"
            "                           choice, finish_reason length (default: %s)\n"
            "  --kv-type f32|f16        KV cache element type: f16 halves its memory and attention's\n"
            "                           memory traffic; logits move by <1e-3 of their scale (default: f32)\n"
            "  --cache-mb N             prefix cache: KV entries of finished requests kept for later ones\n"
            "                           with the same prompt start, within N MiB; 0 = no KV reuse at all,\n"
            "                           not even between the n choices of a request (default: room for 4\n"
            "                           full windows, at least 64)\n"
            "  --api-key KEY            require 'Authorization: Bearer KEY' on every route but /health\n"
            "                           and the playground's files; an empty key is an error\n"
            "                           (default: $LMSERVE_API_KEY, else none)\n"
            "  --cors-origin ORIGIN     send CORS headers for this origin ('*' for any), and accept POSTs\n"
            "                           from its pages (default: none: only the server's own pages)\n"
            "  --allowed-hosts LIST     Host names answered besides loopback ones, comma-separated;\n"
            "                           .example.com = it and its subdomains; '*' = any (default: on a\n"
            "                           loopback address loopback names only, elsewhere any)\n"
            "  --max-tokens-limit N     largest max_tokens accepted (default: %d)\n"
            "  --max-choices N          largest n x number of prompts per request (default: %d)\n"
            "  --body-limit BYTES       largest request body; larger gets 413 (default: %zu)\n"
            "  --timeout S              idle/slow connection timeout in seconds (default: %d)\n"
            "  --max-connections N      concurrent connections (default: %d)\n"
            "  --max-connections-per-ip N  concurrent connections per client address; 0 = no limit\n"
            "                           (default: --max-connections / 8; behind a proxy: --max-connections)\n"
            "  --shutdown-timeout S     on SIGINT/SIGTERM, let requests finish this long (default: %d)\n"
            "  --prefill-chunk N        prompt tokens per sequence per step (default: %d)\n"
            "  --step-budget N          prompt tokens per step over all sequences (default: %d)\n"
            "  --outbox-limit BYTES     output buffered for a client that does not read before its\n"
            "                           request is cancelled (default: %zu)\n"
            "  --response-limit BYTES   largest answer that is not streamed; one that could not fit is\n"
            "                           refused (400), one that grows past it ends with a 400; 0 = no\n"
            "                           limit (default: %zu)\n"
            "  --no-log                 no per-request log lines\n"
            "  -h, --help               this help\n",
            d->host, d->port, d->threads, d->parallel, d->queue, d->ctx, sampler_crop_name(d->context_overflow),
            d->max_tokens_limit, d->max_choices, d->body_limit, d->timeout, d->max_connections, d->shutdown_timeout,
            d->prefill_chunk, d->step_budget, d->outbox_limit, d->response_limit);
}

/* The default model: $LMSERVE_DEFAULT_MODEL, else models/default/model.gguf in the
 * checkout the binary lives in (build/lmserve or build/<variant>/lmserve), else the
 * install's share/lmserve/default/model.gguf. */
static int default_model(char *out, size_t n)
{
    const char *env = getenv("LMSERVE_DEFAULT_MODEL");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return -1;
    exe[len] = '\0';
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", exe);
    for (int up = 0; up < 4; up++) {
        char *slash = strrchr(dir, '/');
        if (!slash) break;
        *slash = '\0';
        char cand[PATH_MAX + 64];
        snprintf(cand, sizeof cand, "%s/" DEFAULT_MODEL_REL, dir);
        if (access(cand, R_OK) == 0) {
            snprintf(out, n, "%s", cand);
            return 0;
        }
        snprintf(cand, sizeof cand, "%s/share/lmserve/default/model.gguf", dir);
        if (access(cand, R_OK) == 0) {
            snprintf(out, n, "%s", cand);
            return 0;
        }
    }
    return -1;
}

int cli_serve(int argc, char **argv)
{
    server_config c, d;
    server_config_init(&c);
    server_config_init(&d);
    c.version = cli_version();
    const char *env_key = getenv("LMSERVE_API_KEY");
    if (env_key) c.api_key = env_key; /* even empty: the server refuses that, loudly */
    const cli_opt opts[] = {
        OPT_STR("--model", &c.model_path),
        OPT_STR("--tokenizer", &c.tokenizer_path),
        OPT_STR("--model-id", &c.model_id),
        OPT_STR("--chat-template", &c.chat_template),
        OPT_STR("--host", &c.host),
        OPT_STR("--api-key", &c.api_key),
        OPT_STR("--cors-origin", &c.cors_origin),
        OPT_STR("--allowed-hosts", &c.allowed_hosts),
        OPT_FN("--kv-type", &c.kv_f16, cli_kv_type, CLI_KV_TYPE_EXPECT),
        OPT_FN("--context-overflow", &c.context_overflow, cli_context_overflow, CLI_CONTEXT_OVERFLOW_EXPECT),
        OPT_INT("--port", &c.port, 0, 65535),
        OPT_INT("--threads", &c.threads, 0, 1024),
        OPT_INT("--parallel", &c.parallel, 1, SERVER_MAX_PARALLEL),
        OPT_INT("--queue", &c.queue, 0, 1000000),
        OPT_INT("--ctx", &c.ctx, 0, 1 << 24),
        OPT_INT("--cache-mb", &c.cache_mb, 0, 1 << 30),
        OPT_INT("--max-tokens-limit", &c.max_tokens_limit, 1, 1 << 24),
        OPT_INT("--max-choices", &c.max_choices, 1, 1024),
        OPT_SIZE("--body-limit", &c.body_limit, 64, 1L << 30),
        OPT_INT("--timeout", &c.timeout, 1, 86400),
        OPT_INT("--max-connections", &c.max_connections, 1, 1000000),
        OPT_INT("--max-connections-per-ip", &c.max_connections_per_ip, 0, 1000000),
        OPT_INT("--shutdown-timeout", &c.shutdown_timeout, 0, 86400),
        OPT_INT("--prefill-chunk", &c.prefill_chunk, 1, 1 << 16),
        OPT_INT("--step-budget", &c.step_budget, 1, 1 << 20),
        OPT_SIZE("--outbox-limit", &c.outbox_limit, 4096, 1L << 30),
        OPT_SIZE("--response-limit", &c.response_limit, 0, 1L << 40),
        OPT_FLAG("--no-log", &c.log_requests, 0),
    };
    int rc = cli_parse("lmserve serve", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (rc == CLI_HELP) {
        usage(stdout, &d);
        return 0;
    }
    if (rc != CLI_OK) return 2;
    if (c.cors_origin && !*c.cors_origin) c.cors_origin = NULL; /* an empty origin: none */
    char path[PATH_MAX + 64];
    if (!c.model_path) {
        if (default_model(path, sizeof path) < 0) {
            fprintf(stderr, "lmserve serve: no --model given and no default model found "
                            "(set $LMSERVE_DEFAULT_MODEL or create " DEFAULT_MODEL_REL ")\n");
            return 2;
        }
        c.model_path = path;
    }
    if (access(c.model_path, R_OK) != 0) {
        fprintf(stderr, "lmserve serve: cannot read model '%s': %s\n", c.model_path, strerror(errno));
        return 1;
    }
    server *srv;
    if (server_new(&srv, &c) < 0) return 1;
    int run = server_run(srv);
    server_free(srv);
    return run == 0 ? 0 : 1;
}
