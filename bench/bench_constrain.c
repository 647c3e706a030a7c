/* bench_constrain.c -- the per-token cost of constrained decoding, beside the step it rides on.
 *
 *   step        one decode step of --model at batch 1 (model_forward of one token after
 *               a 16-token prompt; median of --steps steps): what a single stream pays
 *               per token for the forward pass;
 *   constraint  per token, sampler_step with the constraint minus sampler_step without
 *               it, on the same logits (temperature 0.8, no other warper), in the
 *               thread's CPU time (a busy machine's waits are not counted), timed
 *               alternately token by token over --seqs sequences of up to --tokens
 *               tokens.  "cold": every sequence gets a new cache, so the first visit of
 *               each automaton state (its trie walk) is paid as a request with a new
 *               grammar pays it; "warm": the sequences share one cache, as requests
 *               repeating a grammar do (the server keeps caches by grammar).
 * The vocabulary is --vocab-model's (default: --model's): the constraint's cost depends
 * on the vocabulary's bytes, the step's on the model's shape, so a random-weight model
 * of a real shape can be paired with a real vocabulary of the same size.  Logits are
 * Gaussian (sd 2) from a seeded RNG with a few large spikes: they decide which path
 * through the grammar is taken, not the cost of a step.
 *
 * Cases: json_object, a JSON Schema (nested object, bounds, enum, pattern, anyOf, $ref),
 * a choice, and a GBNF grammar.  One line per case and cache: tokens timed, sequences
 * whose text was completed, constraint microseconds per token (mean; median, the cost of
 * a step whose mask is cached; 99th percentile, a step that walked the trie), and the
 * mean as a share of the median decode step and of the fastest one (on a busy machine
 * the median step is slowed far more than the constraint, so the share of the fastest
 * is the honest upper figure).
 *
 * --decode N [--case NAME] [--cache cold|warm]: instead, a whole decode loop at one
 * stream for timing the process from outside, A against B: N tokens, each a
 * model_forward of one token and a sampler_step (temperature 0.8) on its logits, in
 * sequences of --tokens tokens after a 16-token prompt (a new sequence when one is
 * full).  --case none (the default) samples unconstrained; a case name constrains every
 * token, starting the constraint again whenever its text is complete (as the next
 * request would), its cache new each time (cold) or shared (warm).  Everything else --
 * loading, the trie, compiling the cases -- is the same whatever the case, so the
 * difference of two runs is the constraint's cost over N decode steps; --decode 0
 * times that common setup alone.  It also prints sampler_step's own thread CPU time per
 * token, so paired runs give the constraint's share without the forward pass's noise.
 *
 * usage: bench_constrain --model FILE [--tokenizer FILE] [--vocab-model PATH]
 *                        [--vocab-tokenizer FILE] [--threads N] [--steps N] [--seqs N]
 *                        [--tokens N] [--seed N] [--decode N [--case NAME] [--cache cold|warm]]
 */
#include "bench/bench_util.h"
#include "model/model.h"
#include "sampler/sampler.h"
#include "server/schema.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *token_bytes(void *user, int32_t id, size_t *len)
{
    const model *m = user;
    if (model_token_is_special(m, id)) return NULL;
    return model_token_bytes(m, id, len);
}

/* Median seconds of one decode step at batch 1 (wall time: both threads work); the
 * fastest step into *best. */
static double step_time(model *m, int steps, double *best)
{
    const model_info *in = model_get_info(m);
    model_seq *s = model_seq_new(m, 0);
    float *lg = malloc((size_t)in->vocab_size * sizeof *lg);
    double *t = malloc((size_t)steps * sizeof *t);
    double r = -1;
    if (!s || !lg || !t) goto out;
    int32_t prompt[16];
    for (int i = 0; i < 16; i++) prompt[i] = 3 + (int32_t)((i * 2654435761u) % (uint32_t)(in->vocab_size - 3));
    model_batch_item it = { .seq = s, .tokens = prompt, .n_tokens = 16, .logits = lg };
    if (model_forward(m, &it, 1)) goto out;
    int done = 0;
    for (int k = 0; k < steps && model_seq_len(s) < model_seq_capacity(s); k++) {
        int32_t tok = 3 + (int32_t)((k * 40503u + 7) % (uint32_t)(in->vocab_size - 3));
        model_batch_item one = { .seq = s, .tokens = &tok, .n_tokens = 1, .logits = lg };
        double t0 = cli_seconds(CLOCK_MONOTONIC);
        if (model_forward(m, &one, 1)) goto out;
        t[done++] = cli_seconds(CLOCK_MONOTONIC) - t0;
    }
    if (done == 0) goto out;
    qsort(t, (size_t)done, sizeof *t, bench_cmp_double);
    r = t[done / 2];
    *best = t[0];
out:
    model_seq_free(s);
    free(lg);
    free(t);
    return r;
}

static void gaussian(float *x, int n, sampler_rng *r)
{
    for (int i = 0; i + 1 < n; i += 2) {
        double u1 = (sampler_rng_uniform(r) + 0x1p-25), u2 = sampler_rng_uniform(r);
        double rad = sqrt(-2.0 * log(u1)) * 2.0;
        x[i] = (float)(rad * cos(6.283185307179586 * u2));
        x[i + 1] = (float)(rad * sin(6.283185307179586 * u2));
    }
    if (n & 1) x[n - 1] = 0.0f;
    for (int j = 0; j < 4; j++) x[sampler_rng_next(r) % (uint64_t)n] += 6.0f + (float)j;
}

static const char *SCHEMA =
    "{\"type\": \"object\", \"properties\": {"
    "\"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 24},"
    "\"age\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 120},"
    "\"email\": {\"type\": \"string\", \"pattern\": \"^[a-z]+@[a-z]+\\\\.com$\"},"
    "\"tags\": {\"type\": \"array\", \"items\": {\"enum\": [\"red\", \"green\", \"blue\"]}, \"maxItems\": 4},"
    "\"address\": {\"$ref\": \"#/$defs/address\"},"
    "\"score\": {\"anyOf\": [{\"type\": \"number\", \"minimum\": 0, \"maximum\": 1}, {\"type\": \"null\"}]}},"
    "\"required\": [\"name\", \"age\", \"tags\", \"address\"], \"additionalProperties\": false,"
    "\"$defs\": {\"address\": {\"type\": \"object\", \"properties\": {"
    "\"street\": {\"type\": \"string\", \"maxLength\": 40}, \"zip\": {\"type\": \"string\", \"pattern\": "
    "\"^[0-9]{5}$\"}},"
    "\"required\": [\"street\", \"zip\"]}}}";

static const char *GRAMMAR = "root ::= expr\n"
                             "expr ::= term ( ws [-+] ws term )*\n"
                             "term ::= factor ( ws [*/] ws factor )*\n"
                             "factor ::= [0-9]{1,6} | \"(\" ws expr ws \")\" | [a-z]+\n"
                             "ws ::= \" \"?\n";

typedef struct {
    const char *name;
    sampler_grammar *g;
} bcase;

static const char *const CASE_NAMES[4] = { "json_object", "json_schema", "choice", "grammar" };

/* Case c's grammar, compiled anew (a cache that owns its grammar needs its own). */
static int compile_case(int c, sampler_grammar **g)
{
    static const char *const choices[3] = { "positive", "negative", "neutral" };
    static const size_t lens[3] = { 8, 8, 7 };
    schema_error se;
    *g = NULL;
    if (c == 0) return schema_compile_json_object(g);
    if (c == 2) return schema_compile_choice(choices, lens, 3, g, &se);
    if (c == 3) return sampler_grammar_parse(g, GRAMMAR, strlen(GRAMMAR), NULL);
    json_t *sj = json_loads(SCHEMA, 0, NULL);
    int rc = sj ? schema_compile(sj, g, &se) : -1;
    json_decref(sj);
    return rc;
}

/* The --decode loop (see the header): the tokens decoded and the constrained texts
 * completed, or -1 on a failure. */
static int decode_loop(model *m, const sampler_vocab *sv, const sampler_grammar *g, int c_index, int warm, int n_tokens,
                       int seq_tokens, uint64_t seed, int *completed, double *sampler_cpu)
{
    const model_info *in = model_get_info(m);
    int V = in->vocab_size, done = 0, pos = 0, ok = 0;
    uint64_t texts = 0;
    float *lg = malloc((size_t)V * sizeof *lg);
    model_seq *s = NULL;
    sampler *smp = NULL;
    sampler_constraint *con = NULL;
    sampler_constraint_cache *cc = NULL;
    *completed = 0;
    *sampler_cpu = 0;
    if (!lg) goto out;
    if (g && warm) {
        sampler_grammar *copy = NULL;
        if (compile_case(c_index, &copy) || !(cc = sampler_constraint_cache_new(copy, sv))) goto out;
    }
    int32_t prompt[16], tok = 0;
    for (int i = 0; i < 16; i++) prompt[i] = 3 + (int32_t)((i * 2654435761u) % (uint32_t)(V - 3));
    while (done < n_tokens) {
        if (!s || pos >= seq_tokens) {
            model_seq_free(s);
            s = model_seq_new(m, 0);
            model_batch_item it = { .seq = s, .tokens = prompt, .n_tokens = 16, .logits = lg };
            if (!s || model_forward(m, &it, 1)) goto out;
            pos = 0;
        }
        if (!smp) {
            if (g && !(con = warm ? sampler_constraint_new_shared(cc) : sampler_constraint_new(g, sv))) goto out;
            sampler_params sp = { .temperature = 0.8f, .seed = seed + texts++, .constraint = con };
            if (!(smp = sampler_new(V, &sp))) goto out;
        }
        sampler_choice c;
        /* CPU time of this thread: the constraint's work runs on it alone, and this clock
         * does not count the time the thread waits while the machine is busy */
        double t0 = cli_seconds(CLOCK_THREAD_CPUTIME_ID);
        int rc = sampler_step(smp, lg, &tok, 1, 0, SAMPLER_TOKEN_ONLY, &c);
        *sampler_cpu += cli_seconds(CLOCK_THREAD_CPUTIME_ID) - t0;
        if (rc) goto out;
        tok = c.token;
        if (con && c.constraint == SAMPLER_CONSTRAINT_COMPLETE) { /* the next text starts afresh */
            sampler_free(smp);
            sampler_constraint_free(con);
            smp = NULL;
            con = NULL;
            (*completed)++;
        }
        model_batch_item one = { .seq = s, .tokens = &tok, .n_tokens = 1, .logits = lg };
        if (model_forward(m, &one, 1)) goto out;
        done++;
        pos++;
    }
    ok = 1;
out:
    sampler_free(smp);
    sampler_constraint_free(con);
    sampler_constraint_cache_free(cc);
    model_seq_free(s);
    free(lg);
    return ok ? done : -1;
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *tok_path = NULL, *vpath = NULL, *vtok = NULL;
    int threads = 2, steps = 64, seqs = 20, tokens = 128, decode = -1, warm_decode = 0;
    const char *case_name = "none";
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (!strcmp(a, "--model"))
            model_path = v;
        else if (!strcmp(a, "--tokenizer"))
            tok_path = v;
        else if (!strcmp(a, "--vocab-model"))
            vpath = v;
        else if (!strcmp(a, "--vocab-tokenizer"))
            vtok = v;
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else if (!strcmp(a, "--steps"))
            steps = atoi(v);
        else if (!strcmp(a, "--seqs"))
            seqs = atoi(v);
        else if (!strcmp(a, "--tokens"))
            tokens = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--decode"))
            decode = atoi(v);
        else if (!strcmp(a, "--case"))
            case_name = v;
        else if (!strcmp(a, "--cache") && (!strcmp(v, "cold") || !strcmp(v, "warm")))
            warm_decode = !strcmp(v, "warm");
        else
            goto usage;
        i++;
    }
    if (!model_path || threads < 1 || steps < 1 || seqs < 1 || tokens < 1 || decode < -1) goto usage;

    char err[512];
    model *m = NULL, *vm = NULL;
    model_load_opts o = { .tokenizer_path = tok_path, .n_threads = threads };
    if (model_load(&m, model_path, &o, err, sizeof err)) {
        fprintf(stderr, "bench_constrain: %s\n", err);
        return 1;
    }
    if (vpath) {
        model_load_opts vo = { .tokenizer_path = vtok, .n_threads = 1 };
        if (model_load(&vm, vpath, &vo, err, sizeof err)) {
            fprintf(stderr, "bench_constrain: %s\n", err);
            return 1;
        }
    }
    const model *vocab_model = vm ? vm : m;
    const model_info *mi = model_get_info(m), *vi = model_get_info(vocab_model);
    int V = vi->vocab_size;
    if (mi->vocab_size != V) {
        fprintf(stderr, "bench_constrain: the vocabularies differ in size (%d and %d)\n", mi->vocab_size, V);
        return 1;
    }
    int32_t ends[2];
    int n_end = 0;
    if (vi->eos_id >= 0) ends[n_end++] = vi->eos_id;
    if (vi->bos_ends_text && vi->bos_id >= 0) ends[n_end++] = vi->bos_id;
    sampler_vocab *sv = NULL;
    double t0 = cli_seconds(CLOCK_MONOTONIC);
    if (sampler_vocab_new(&sv, V, token_bytes, (void *)vocab_model, ends, n_end) != SAMPLER_OK) {
        fprintf(stderr, "bench_constrain: cannot build the vocabulary trie\n");
        return 1;
    }
    double t_trie = cli_seconds(CLOCK_MONOTONIC) - t0;

    bcase cases[4];
    for (int c = 0; c < 4; c++) {
        cases[c].name = CASE_NAMES[c];
        if (compile_case(c, &cases[c].g)) {
            fprintf(stderr, "bench_constrain: case %s does not compile\n", CASE_NAMES[c]);
            return 1;
        }
    }

    if (decode >= 0) {
        const sampler_grammar *g = NULL;
        int known = !strcmp(case_name, "none"), ci = -1;
        for (int c = 0; c < 4; c++)
            if (!strcmp(case_name, cases[c].name)) g = cases[c].g, known = 1, ci = c;
        if (!known) {
            fprintf(stderr, "bench_constrain: --case is none, json_object, json_schema, choice or grammar\n");
            return 2;
        }
        int completed = 0;
        double sampler_cpu = 0;
        t0 = cli_seconds(CLOCK_MONOTONIC);
        int n = decode_loop(m, sv, g, ci, warm_decode, decode, tokens, seed, &completed, &sampler_cpu);
        if (n < 0) {
            fprintf(stderr, "bench_constrain: the decode loop failed\n");
            return 1;
        }
        printf("decode %s (%s cache): %d tokens, %d texts completed, %.3f s; sampler_step %.1f us/token "
               "(thread CPU); trie built in %.1f ms\n",
               case_name, warm_decode ? "warm" : "cold", n, completed, cli_seconds(CLOCK_MONOTONIC) - t0,
               n ? sampler_cpu * 1e6 / n : 0.0, t_trie * 1e3);
        for (int c = 0; c < 4; c++) sampler_grammar_free(cases[c].g);
        sampler_vocab_free(sv);
        model_free(vm);
        model_free(m);
        return 0;
    }

    double best_step = 0;
    double step = step_time(m, steps, &best_step);
    if (step <= 0) {
        fprintf(stderr, "bench_constrain: model_forward failed\n");
        return 1;
    }
    printf("model %s (vocab %d); vocabulary of %s; trie built in %.1f ms; one decode step at batch 1: %.3f ms "
           "(median of %d; fastest %.3f ms)\n",
           model_path, V, vpath ? vpath : model_path, t_trie * 1e3, step * 1e3, steps, best_step * 1e3);

    float *lg = malloc((size_t)V * sizeof *lg);
    size_t cap = (size_t)seqs * (size_t)tokens;
    double *over = malloc(cap * sizeof *over);
    if (!lg || !over) return 1;
    printf("%-12s %-6s %7s %9s %10s %9s %9s %9s %11s\n", "case", "cache", "tokens", "complete", "us/token", "p50 us",
           "p99 us", "of step", "of fastest");
    for (int c = 0; c < 8; c++) {
        /* cold: a new cache per sequence, as a request with a grammar never seen pays;
         * warm: one cache for all sequences, as requests repeating a grammar share */
        int warm = c & 1;
        const bcase *bc = &cases[c / 2];
        sampler_constraint_cache *cc = NULL;
        if (warm) {
            sampler_grammar *copy = NULL;
            if (compile_case(c / 2, &copy) == 0) cc = sampler_constraint_cache_new(copy, sv);
            if (!cc) return 1;
        }
        sampler_rng r;
        sampler_rng_seed(&r, seed);
        size_t n = 0;
        int complete = 0;
        double sum = 0;
        for (int q = 0; q < seqs; q++) {
            sampler_constraint *con = warm ? sampler_constraint_new_shared(cc) : sampler_constraint_new(bc->g, sv);
            sampler_params pw = { .temperature = 0.8f, .seed = seed + (uint64_t)q, .constraint = con };
            sampler_params po = { .temperature = 0.8f, .seed = seed + (uint64_t)q };
            sampler *sw = sampler_new(V, &pw), *so = sampler_new(V, &po);
            if (!con || !sw || !so) return 1;
            int32_t ids[1] = { 3 };
            for (int k = 0; k < tokens; k++) {
                gaussian(lg, V, &r);
                sampler_choice a, b;
                double ta = cli_seconds(CLOCK_THREAD_CPUTIME_ID);
                int rc = sampler_step(sw, lg, ids, 1, 0, SAMPLER_TOKEN_ONLY, &a);
                double tb = cli_seconds(CLOCK_THREAD_CPUTIME_ID);
                sampler_step(so, lg, ids, 1, 0, SAMPLER_TOKEN_ONLY, &b);
                double tc = cli_seconds(CLOCK_THREAD_CPUTIME_ID);
                if (rc) {
                    fprintf(stderr, "bench_constrain: sampler_step failed (%d)\n", rc);
                    return 1;
                }
                over[n++] = (tb - ta) - (tc - tb);
                sum += (tb - ta) - (tc - tb);
                if (a.constraint == SAMPLER_CONSTRAINT_COMPLETE) {
                    complete++;
                    break;
                }
            }
            sampler_free(sw);
            sampler_free(so);
            sampler_constraint_free(con);
        }
        qsort(over, n, sizeof *over, bench_cmp_double);
        double mean = sum / (double)n, p50 = over[(n - 1) / 2], p99 = over[(size_t)((double)(n - 1) * 0.99)];
        printf("%-12s %-6s %7zu %6d/%-3d %10.1f %9.1f %9.1f %8.2f%% %10.2f%%\n", bc->name, warm ? "warm" : "cold", n,
               complete, seqs, mean * 1e6, p50 * 1e6, p99 * 1e6, 100.0 * mean / step, 100.0 * mean / best_step);
        fflush(stdout);
        sampler_constraint_cache_free(cc);
    }
    for (int c = 0; c < 4; c++) sampler_grammar_free(cases[c].g);
    free(lg);
    free(over);
    sampler_vocab_free(sv);
    model_free(vm);
    model_free(m);
    return 0;
usage:
    fprintf(stderr, "usage: bench_constrain --model FILE [--tokenizer FILE] [--vocab-model PATH]\n"
                    "         [--vocab-tokenizer FILE] [--threads N] [--steps N] [--seqs N] [--tokens N] [--seed N]\n"
                    "         [--decode N [--case none|json_object|json_schema|choice|grammar] [--cache cold|warm]]\n");
    return 2;
}
