/* opt.c -- the one command-line parser (opt.h). */
#include "cli/opt.h"
#include "model/model.h"
#include "sampler/sampler.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A decimal integer, the whole string (strtoll's leading space and sign allowed). */
static int parse_ll(const char *v, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno) return -1;
    *out = x;
    return 0;
}

/* Store value into o's destination; 0, or -1 after printing why not. */
static int store(const char *cmd, const cli_opt *o, const char *v)
{
    long long i;
    unsigned long long u;
    double d;
    char *end;
    switch (o->kind) {
    case CLI_STR: *(const char **)o->out = v; return 0;
    case CLI_INT:
    case CLI_SIZE:
        if (parse_ll(v, &i) || (double)i < o->lo || (double)i > o->hi) {
            fprintf(stderr, "%s: %s expects an integer in [%.0f, %.0f], got '%s'\n", cmd, o->name, o->lo, o->hi, v);
            return -1;
        }
        if (o->kind == CLI_INT)
            *(int *)o->out = (int)i;
        else
            *(size_t *)o->out = (size_t)i;
        return 0;
    case CLI_U64:
        errno = 0;
        u = strtoull(v, &end, 10);
        if (!*v || *end || errno || strchr(v, '-')) {
            fprintf(stderr, "%s: %s expects a non-negative integer, got '%s'\n", cmd, o->name, v);
            return -1;
        }
        *(uint64_t *)o->out = (uint64_t)u;
        return 0;
    case CLI_FLOAT:
        errno = 0;
        d = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(d) || !(d >= o->lo && d <= o->hi)) {
            fprintf(stderr, "%s: %s expects a number in [%g, %g], got '%s'\n", cmd, o->name, o->lo, o->hi, v);
            return -1;
        }
        *(float *)o->out = (float)d;
        return 0;
    case CLI_FN:
        if (o->parse(v, o->out) == 0) return 0;
        fprintf(stderr, "%s: %s expects %s, got '%s'\n", cmd, o->name, o->expect, v);
        return -1;
    case CLI_FLAG: break;
    }
    return -1;
}

int cli_parse(const char *cmd, const cli_opt *opts, size_t n_opts, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return CLI_HELP;
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", cmd, a);
            return CLI_BAD;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const cli_opt *o = NULL;
        for (size_t k = 0; k < n_opts && !o; k++)
            if (strlen(opts[k].name) == len && !strncmp(opts[k].name, a, len)) o = &opts[k];
        if (!o) {
            fprintf(stderr, "%s: unknown option '%.*s' (see --help)\n", cmd, (int)len, a);
            return CLI_BAD;
        }
        if (o->kind == CLI_FLAG) {
            if (eq) {
                fprintf(stderr, "%s: %s takes no value (see --help)\n", cmd, o->name);
                return CLI_BAD;
            }
            *(int *)o->out = o->set;
            continue;
        }
        const char *v = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
        if (!v) {
            fprintf(stderr, "%s: %s needs a value (see --help)\n", cmd, o->name);
            return CLI_BAD;
        }
        if (store(cmd, o, v)) return CLI_BAD;
    }
    return CLI_OK;
}

int cli_kv_type(const char *value, void *out)
{
    int k = model_parse_kv_type(value);
    if (k < 0) return -1;
    *(int *)out = k;
    return 0;
}

int cli_context_overflow(const char *value, void *out)
{
    int policy = sampler_crop_parse(value);
    if (policy < 0) return -1;
    *(int *)out = policy;
    return 0;
}
