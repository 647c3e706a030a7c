/* quantize.c -- `lmserve quantize IN OUT --type TYPE`: write a GGUF model with its
 * matrices quantized (model_quantize: llama.cpp's recipes, fall-backs and bytes).
 * IN and OUT come first; the options after them go through cli_parse.  One line per
 * tensor goes to stderr unless --quiet. */
#include "cli/cli.h"
#include "cli/opt.h"
#include "model/model.h"

#include <stdio.h>
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
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (argc < 3 || argv[1][0] == '-' || argv[2][0] == '-') {
        fprintf(stderr, "lmserve quantize: IN and OUT come first (see --help)\n");
        return 2;
    }
    const char *in = argv[1], *out = argv[2], *type = NULL;
    int threads = 0, quiet = 0, requant = 0;
    const cli_opt options[] = {
        OPT_STR("--type", &type),
        OPT_INT("--threads", &threads, 0, 1024),
        OPT_FLAG("--allow-requantize", &requant, 1),
        OPT_FLAG("--quiet", &quiet, 1),
    };
    /* the options after IN OUT (cli_parse skips its argv[0]: OUT here) */
    int prc = cli_parse("lmserve quantize", options, sizeof options / sizeof options[0], argc - 2, argv + 2);
    if (prc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (prc != CLI_OK) return 2;
    if (!type) {
        fprintf(stderr, "lmserve quantize: --type is required (see --help)\n");
        return 2;
    }
    model_quantize_opts o = {
        .type = type, .n_threads = threads, .allow_requantize = requant, .log = quiet ? NULL : log_line
    };
    char err[512];
    if (model_quantize(in, out, &o, err, sizeof err) != MODEL_OK) {
        fprintf(stderr, "lmserve quantize: %s\n", err);
        return 1;
    }
    return 0;
}
