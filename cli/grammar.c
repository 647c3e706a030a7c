/* grammar.c -- `lmserve grammar`: the GBNF a request's constraint compiles to.
 *
 * Reads a request body (JSON with response_format, grammar or choice) from --request
 * FILE or standard input and prints the GBNF text the server runs for it -- what a JSON
 * Schema became, whitespace rule and all -- or, for a request the server would
 * refuse, the 400's param and message on standard error (exit 1).  With
 * --check TEXT-FILE it also says whether that text is a whole string of the
 * language, a prefix of one, or neither (exit 0, 3 or 4). */
#include "cli/cli.h"
#include "cli/opt.h"
#include "server/constraint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_all(FILE *f, size_t *n)
{
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    while (b) {
        size_t got = fread(b + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
        if (len == cap) {
            char *q = realloc(b, cap * 2);
            if (!q) {
                free(b);
                return NULL;
            }
            b = q;
            cap *= 2;
        }
    }
    *n = len;
    return b;
}

static char *read_path(const char *path, size_t *n)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "lmserve grammar: cannot open %s\n", path);
        return NULL;
    }
    char *b = read_all(f, n);
    if (f != stdin) fclose(f);
    if (!b) fprintf(stderr, "lmserve grammar: out of memory reading %s\n", path);
    return b;
}

int cli_grammar(int argc, char **argv)
{
    const char *in = "-", *check = NULL;
    const cli_opt opts[] = {
        OPT_STR("--request", &in),
        OPT_STR("--check", &check),
    };
    int prc = cli_parse("lmserve grammar", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (prc == CLI_HELP) {
        printf("usage: lmserve grammar [--request FILE] [--check TEXT-FILE]\n"
               "  --request FILE     a request body with response_format, grammar or choice\n"
               "                     (default: standard input, also written -)\n"
               "  --check TEXT-FILE  also match the text: exit 0 whole, 3 prefix, 4 neither\n"
               "Prints the GBNF the server compiles the constraint to; a request the server\n"
               "would refuse prints its 400 param and message on standard error (exit 1).\n");
        return 0;
    }
    if (prc != CLI_OK) return 2;
    size_t n;
    char *body = read_path(in, &n);
    if (!body) return 1;
    json_error_t je;
    json_t *root = json_loadb(body, n, 0, &je);
    free(body);
    if (!json_is_object(root)) {
        fprintf(stderr, "lmserve grammar: %s: not a JSON object%s%s\n", in, root ? "" : ": ", root ? "" : je.text);
        json_decref(root);
        return 1;
    }
    sampler_grammar *g = NULL;
    char *gbnf = NULL;
    size_t len = 0;
    constraint_error e;
    int rc = constraint_compile(root, &g, &gbnf, &len, &e);
    json_decref(root);
    if (rc < 0) {
        fprintf(stderr, "lmserve grammar: %d %s: %s\n", e.status, e.param, e.message);
        return 1;
    }
    if (!gbnf) {
        fprintf(stderr, "lmserve grammar: the request has no constraint (response_format, grammar or choice)\n");
        return 1;
    }
    fwrite(gbnf, 1, len, stdout);
    free(gbnf);
    int status = 0;
    if (check) {
        size_t tn;
        char *text = read_path(check, &tn);
        if (!text) {
            status = 1;
        } else {
            int m = sampler_grammar_match(g, text, tn);
            status = m == SAMPLER_MATCH_FULL ? 0 : m == SAMPLER_MATCH_PREFIX ? 3 : m == SAMPLER_MATCH_NONE ? 4 : 1;
            free(text);
        }
    }
    sampler_grammar_free(g);
    return status;
}
