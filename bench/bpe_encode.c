/* bpe_encode.c -- encode JSON-lines strings with lmserve's byte-level BPE (a tool for
 * the npm cross-check in tests/node/bpe_crosscheck.test.mjs, and a rough speed gauge).
 *
 *   bpe_encode TOKENIZER.json            < in.jsonl > out.jsonl
 *   bpe_encode ENCODER.json VOCAB.bpe    < in.jsonl > out.jsonl
 *
 * Each input line is a JSON string; each output line is a JSON array of ids.
 * The throughput (input bytes per second) goes to stderr. */
#include "model/tokenizers/tok_bpe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s tokenizer.json | encoder.json vocab.bpe  < strings.jsonl\n", argv[0]);
        return 2;
    }
    tokenizer t;
    char err[512] = "";
    int rc = argc == 2 ? tok_bpe_load_hf(&t, argv[1], err, sizeof err)
                       : tok_bpe_load_gpt2_files(&t, argv[1], argv[2], err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0, total = 0;
    ssize_t n;
    int32_t *ids = NULL;
    int idcap = 0;
    struct timespec a, b;
    double secs = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t je;
        json_t *s = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!json_is_string(s)) {
            fprintf(stderr, "bad input line: %s\n", je.text);
            json_decref(s);
            rc = 1;
            break;
        }
        size_t len = json_string_length(s);
        clock_gettime(CLOCK_MONOTONIC, &a);
        int k = tok_bpe_encode(&t, json_string_value(s), len, 0, ids, idcap);
        if (k > idcap) {
            int32_t *more = realloc(ids, (size_t)k * sizeof *ids);
            if (!more) {
                fprintf(stderr, "bpe_encode: out of memory\n");
                json_decref(s);
                rc = 1;
                break;
            }
            ids = more;
            idcap = k;
            k = tok_bpe_encode(&t, json_string_value(s), len, 0, ids, idcap);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        secs += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
        total += len;
        json_decref(s);
        if (k < 0) {
            rc = 1;
            break;
        }
        putchar('[');
        for (int i = 0; i < k; i++) printf(i ? ",%d" : "%d", ids[i]);
        puts("]");
    }
    fprintf(stderr, "bpe_encode: %zu bytes in %.3f s (%.1f MB/s)\n", total, secs,
            secs > 0 ? (double)total / secs / 1e6 : 0.0);
    free(ids);
    free(line);
    tok_bpe_clear(&t);
    return rc;
}
