/* quantize.c -- `lmserve quantize IN OUT --type TYPE`: write a GGUF model with its
 * matrices quantized (model_quantize: llama.cpp's recipes, fall-backs and bytes).
 * One line per tensor goes to stderr unless --quiet. */
#include "cli/cli.h"
#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lmserve quantize IN.gguf OUT.gguf --type TYPE [options]\n"
            "\n"
            "  --type TYPE          %s\n"
            "                       (the _S/_M/_L mixtures are llama.cpp's: e.g. Q4_K_M stores attn_v and\n"
            "                       ffn_down of some layers, and the classifier, as Q6_K; rows that are not\n"
            "                       whole 256-weight blocks fall back to Q4_0/Q5_0/Q5_1/Q8_0, then F16)\n"
            "  --threads N          threads (default 0 = number of CPUs)\n"
            "  --allow-requantize   accept input tensors that are already quantized\n"
            "  --quiet              no per-tensor lines on stderr\n"
            "  -h, --help           this text\n",
            model_quantize_types());
}

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "%s\n", line);
}

int cli_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *type = NULL;
    long threads = 0;
    int quiet = 0, requant = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (!strcmp(a, "--allow-requantize")) {
            requant = 1;
            continue;
        }
        if (!strcmp(a, "--type") || !strcmp(a, "--threads")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lmserve quantize: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--type")) {
                type = v;
            } else {
                char *end;
                errno = 0;
                threads = strtol(v, &end, 10);
                if (errno || end == v || *end || threads < 0 || threads > 1024) {
                    fprintf(stderr, "lmserve quantize: invalid value for --threads: '%s'\n", v);
                    return 2;
                }
            }
            continue;
        }
        if (a[0] == '-' && a[1]) {
            fprintf(stderr, "lmserve quantize: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!in) in = a;
        else if (!out) out = a;
        else {
            fprintf(stderr, "lmserve quantize: one input and one output file (extra: %s)\n", a);
            return 2;
        }
    }
    if (!in || !out || !type) {
        fprintf(stderr, "lmserve quantize: IN, OUT and --type are required\n");
        usage(stderr);
        return 2;
    }
    model_quantize_opts o = {.type = type, .n_threads = (int)threads, .allow_requantize = requant,
                             .log = quiet ? NULL : log_line};
    char err[512];
    if (model_quantize(in, out, &o, err, sizeof err) != MODEL_OK) {
        fprintf(stderr, "lmserve quantize: %s\n", err);
        return 1;
    }
    return 0;
}
