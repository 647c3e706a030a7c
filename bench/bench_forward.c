/* bench_forward.c -- decode speed of the engine: single stream and batched.
 *
 * Single stream: a short prompt (prefill), then --gen tokens one step at a time,
 * each step's input being the argmax of the previous logits (greedy decoding
 * without the sampler); the time of the decode steps only, median of --runs.
 * Batched: B sequences each prefilled with a short prompt, then --steps decode
 * steps that run all B sequences in one model_forward call; reports B * steps /
 * time.  Token ids are fixed by a seed, so runs are repeatable.
 *
 * usage: bench_forward --model FILE [--tokenizer FILE] [--threads N] [--gen N]
 *                      [--prompt N] [--runs N] [--batch 1,4,16,64] [--steps N]
 */
#include "bench/bench_util.h"
#include "cli/opt.h"
#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static int32_t tok_at(uint64_t i, int vocab)
{
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
    z ^= z >> 29;
    return (int32_t)(3 + z % (uint64_t)(vocab - 3));
}

/* One single-stream run: returns decode tokens/s or a negative code; the prompt's
 * tokens/s (all of it in one model_forward call) into *pre. */
static double single_run(model *m, int prompt, int gen, int run, double *pre)
{
    const model_info *in = model_get_info(m);
    model_seq *s = model_seq_new(m, 0);
    float *lg = malloc((size_t)in->vocab_size * sizeof(float));
    int32_t *p = malloc((size_t)prompt * sizeof(int32_t));
    double r = -1;
    if (!s || !lg || !p) goto out;
    for (int i = 0; i < prompt; i++) p[i] = tok_at((uint64_t)run * 1000 + i, in->vocab_size);
    model_batch_item it = { .seq = s, .tokens = p, .n_tokens = prompt, .logits = lg };
    double tp = cli_seconds(CLOCK_MONOTONIC);
    if (model_forward(m, &it, 1)) goto out;
    *pre = prompt / (cli_seconds(CLOCK_MONOTONIC) - tp);
    double t0 = cli_seconds(CLOCK_MONOTONIC);
    for (int g = 0; g < gen; g++) {
        int32_t t = argmax(lg, in->vocab_size);
        it = (model_batch_item){ .seq = s, .tokens = &t, .n_tokens = 1, .logits = lg };
        if (model_forward(m, &it, 1)) goto out;
    }
    r = gen / (cli_seconds(CLOCK_MONOTONIC) - t0);
out:
    model_seq_free(s);
    free(lg);
    free(p);
    return r;
}

static double batch_run(model *m, int B, int prompt, int steps)
{
    const model_info *in = model_get_info(m);
    model_seq **s = calloc((size_t)B, sizeof *s);
    model_batch_item *it = calloc((size_t)B, sizeof *it);
    float *lg = malloc((size_t)B * in->vocab_size * sizeof(float));
    int32_t *t = malloc((size_t)B * (prompt > 1 ? prompt : 1) * sizeof(int32_t));
    double r = -1;
    if (!s || !it || !lg || !t) goto out;
    for (int b = 0; b < B; b++) {
        if (!(s[b] = model_seq_new(m, 0))) goto out;
        for (int i = 0; i < prompt; i++) t[b * prompt + i] = tok_at((uint64_t)b * 7919 + i, in->vocab_size);
        it[b] = (model_batch_item){
            .seq = s[b], .tokens = t + b * prompt, .n_tokens = prompt, .logits = lg + (size_t)b * in->vocab_size
        };
    }
    if (model_forward(m, it, B)) /* all prompts in one prefill call */
        goto out;
    double t0 = cli_seconds(CLOCK_MONOTONIC);
    for (int st = 0; st < steps; st++) {
        for (int b = 0; b < B; b++) {
            t[b] = argmax(lg + (size_t)b * in->vocab_size, in->vocab_size);
            it[b].tokens = t + b;
            it[b].n_tokens = 1;
        }
        if (model_forward(m, it, B)) goto out;
    }
    r = (double)B * steps / (cli_seconds(CLOCK_MONOTONIC) - t0);
out:
    for (int b = 0; s && b < B; b++) model_seq_free(s[b]);
    free(s);
    free(it);
    free(lg);
    free(t);
    return r;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *tok = NULL, *batches = "1,4,16,64";
    int threads = 2, gen = 256, prompt = 8, runs = 3, steps = 32, kv_f16 = 0;
    const cli_opt opts[] = {
        OPT_STR("--model", &path),
        OPT_STR("--tokenizer", &tok),
        OPT_STR("--batch", &batches),
        OPT_INT("--threads", &threads, 1, 64),
        OPT_INT("--gen", &gen, 1, 1 << 20),
        OPT_INT("--prompt", &prompt, 1, 1 << 20),
        OPT_INT("--runs", &runs, 1, 100),
        OPT_INT("--steps", &steps, 1, 1 << 20),
        OPT_FN("--kv-type", &kv_f16, cli_kv_type, CLI_KV_TYPE_EXPECT),
    };
    int prc = cli_parse("bench_forward", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (prc == CLI_BAD) return 2;
    if (prc == CLI_HELP || !path) {
        fprintf(stderr, "usage: bench_forward --model FILE [--tokenizer FILE] [--threads N] [--gen N]\n"
                        "  [--prompt N] [--runs N] [--batch 1,4,16,64] [--steps N] [--kv-type f32|f16]\n");
        return 2;
    }
    model *m;
    char err[512];
    model_load_opts o = { .tokenizer_path = tok, .n_threads = threads };
    if (model_load(&m, path, &o, err, sizeof err)) {
        fprintf(stderr, "bench_forward: %s\n", err);
        return 1;
    }
    model_settle(m); /* measure on the weights' final (huge) pages */
    model_set_kv_f16(m, kv_f16);
    const model_info *in = model_get_info(m);
    if (prompt + gen > in->ctx_len) gen = in->ctx_len - prompt;
    if (prompt + steps > in->ctx_len) steps = in->ctx_len - prompt;
    if (gen < 1 || steps < 1) {
        fprintf(stderr, "bench_forward: context %d too short for a %d-token prompt\n", in->ctx_len, prompt);
        model_free(m);
        return 1;
    }
    printf("model %s: %s %s, dim %d, hidden %d, layers %d, heads %d/%d, vocab %d, ctx %d, "
           "%.1f MB of weights, %d threads\n",
           path, in->format, in->weight_type, in->dim, in->hidden_dim, in->n_layers, in->n_heads, in->n_kv_heads,
           in->vocab_size, in->ctx_len, in->weight_bytes / 1e6, threads);
    double *r = malloc(2 * (size_t)runs * sizeof(double)), ignored;
    if (!r) {
        model_free(m);
        return 1;
    }
    double *pre = r + runs;
    single_run(m, prompt, gen < 16 ? gen : 16, 99, &ignored); /* warm-up: page in the weights */
    for (int k = 0; k < runs; k++) r[k] = single_run(m, prompt, gen, k, &pre[k]);
    qsort(r, (size_t)runs, sizeof *r, bench_cmp_double);
    qsort(pre, (size_t)runs, sizeof *pre, bench_cmp_double);
    printf("single stream: %.1f tok/s (median of %d runs of %d tokens after a %d-token prompt; min %.1f max %.1f)\n",
           r[runs / 2], runs, gen, prompt, r[0], r[runs - 1]);
    printf("prompt: %.1f tok/s (the %d-token prompt in one model_forward call; median of %d, min %.1f max %.1f)\n",
           pre[runs / 2], prompt, runs, pre[0], pre[runs - 1]);
    free(r);
    const char *b = batches;
    while (*b) {
        char *end;
        long B = strtol(b, &end, 10);
        if (end == b || B < 1 || B > 4096) break;
        double t = batch_run(m, (int)B, prompt, steps);
        if (t < 0)
            printf("batch %3ld: failed\n", B);
        else
            printf("batch %3ld: %.1f tok/s aggregate, %.1f tok/s per stream (%d steps)\n", B, t, t / B, steps);
        fflush(stdout);
        b = *end == ',' ? end + 1 : end;
    }
    model_free(m);
    return 0;
}
