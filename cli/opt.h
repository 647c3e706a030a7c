/* opt.h -- the one command-line parser of the lmserve sub-commands (opt.c).
 *
 * Every option is written `--name VALUE` or `--name=VALUE`; a flag takes no value
 * (`--name=x` is an error), and `-h` / `--help` asks for the help text.  A command
 * lists its options in a table -- name, kind, where the value goes, its range --
 * and cli_parse fills the destinations in command-line order (a later repeat
 * wins).  Anything wrong (an unknown option, a missing value, a number out of
 * range or not a number at all, a stray argument) is one line on stderr,
 * "CMD: what is wrong (see --help)", naming the option. */
#ifndef LMSERVE_CLI_OPT_H
#define LMSERVE_CLI_OPT_H

#include <stddef.h>

typedef enum {
    CLI_FLAG,  /* int *: set to .set when present; no value */
    CLI_STR,   /* const char **: the value itself (argv's storage) */
    CLI_INT,   /* int *: a decimal integer in [lo, hi] */
    CLI_SIZE,  /* size_t *: a decimal integer in [lo, hi] */
    CLI_U64,   /* uint64_t *: a decimal integer in [0, 2^64) (no sign) */
    CLI_FLOAT, /* float *: a finite number in [lo, hi] */
    CLI_FN,    /* anything: .parse(value, out) returns 0, or -1 if the value is not .expect */
} cli_kind;

typedef struct {
    const char *name; /* "--port" */
    cli_kind kind;
    void *out;
    double lo, hi;                              /* CLI_INT, CLI_SIZE, CLI_FLOAT: the accepted range (inclusive) */
    int set;                                    /* CLI_FLAG: the value stored */
    int (*parse)(const char *value, void *out); /* CLI_FN */
    const char *expect;                         /* CLI_FN: what a good value looks like, for the message */
} cli_opt;

/* Table rows, one macro per kind (the fields a kind does not use stay zero). */
#define OPT_FLAG(n, p, v)                                     \
    {                                                         \
        .name = (n), .kind = CLI_FLAG, .out = (p), .set = (v) \
    }
#define OPT_STR(n, p)                            \
    {                                            \
        .name = (n), .kind = CLI_STR, .out = (p) \
    }
#define OPT_INT(n, p, l, h)                                            \
    {                                                                  \
        .name = (n), .kind = CLI_INT, .out = (p), .lo = (l), .hi = (h) \
    }
#define OPT_SIZE(n, p, l, h)                                            \
    {                                                                   \
        .name = (n), .kind = CLI_SIZE, .out = (p), .lo = (l), .hi = (h) \
    }
#define OPT_U64(n, p)                            \
    {                                            \
        .name = (n), .kind = CLI_U64, .out = (p) \
    }
#define OPT_FLOAT(n, p, l, h)                                            \
    {                                                                    \
        .name = (n), .kind = CLI_FLOAT, .out = (p), .lo = (l), .hi = (h) \
    }
#define OPT_FN(n, p, fn, what)                                                   \
    {                                                                            \
        .name = (n), .kind = CLI_FN, .out = (p), .parse = (fn), .expect = (what) \
    }

enum { CLI_OK = 0, CLI_HELP = 1, CLI_BAD = -1 };

/* A value parser several commands share (an OPT_FN): --kv-type "f32" | "f16" into
 * an int, model_set_kv_f16's argument. */
int cli_kv_type(const char *value, void *out);
#define CLI_KV_TYPE_EXPECT "f32 or f16"
/* --context-overflow "slide" | "shift" | "stop" into an int, SAMPLER_CROP_*. */
int cli_context_overflow(const char *value, void *out);
#define CLI_CONTEXT_OVERFLOW_EXPECT "slide, shift or stop"

/* Parse argv[1..argc) (argv[0] is the sub-command's name) against opts[0..n_opts).
 * cmd starts every message ("lmserve serve").  Returns CLI_OK, CLI_HELP (-h or
 * --help came first; nothing after it is read) or CLI_BAD (message printed). */
int cli_parse(const char *cmd, const cli_opt *opts, size_t n_opts, int argc, char **argv);

#endif /* LMSERVE_CLI_OPT_H */
