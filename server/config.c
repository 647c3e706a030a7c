/* config.c -- the server's defaults (listed by `lmserve serve --help`). */
#include "server/server.h"

#include <string.h>

void server_config_init(server_config *c)
{
    memset(c, 0, sizeof *c);
    c->host = "127.0.0.1";
    c->port = 8080;
    c->threads = 0;
    c->parallel = 16;
    c->queue = 64;
    c->ctx = 0;
    c->cache_mb = -1; /* kv_store_default_budget: 4 full windows, at least 64 MiB */
    c->max_tokens_limit = 4096;
    c->max_choices = 64;
    c->body_limit = 1u << 20;
    c->timeout = 60;
    c->max_connections = 512;
    c->max_connections_per_ip = -1; /* max_connections / 8 */
    c->shutdown_timeout = 10;
    c->prefill_chunk = 64;
    /* 128, not 256: when 16 streams finish together and resubmit, their prompts take two
     * steps instead of one, so half of them get their first token a step sooner; side by
     * side this lowered the time to first token at 16 streams without costing throughput
     * (the measurements are in the commit that set this value), while 64 cost throughput. */
    c->step_budget = 128;
    c->outbox_limit = 1u << 20;
    c->response_limit = 16u << 20;
    c->log_requests = 1;
}
