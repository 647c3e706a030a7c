/* generate.c -- `lmserve generate`: complete one prompt on the command line.
 *
 * Loads the model, tokenizes the prompt (BOS as the tokenizer wants), and runs
 * the sampler's decode loop (sampler_generate) over a sampler_lm whose
 * next_logits evaluates the model on one sequence (model_seq_eval reuses the
 * cached prefix, so within the window each step computes one new position).
 * Past the window (--ctx, default the model's) the loop crops as
 * --context-overflow says: slide (the default, the reference loop's crop: the last ctx
 * tokens every step, so each step recomputes the window), shift or stop.  Text
 * is streamed: the prompt first, then each new token as it is appended,
 * detokenized (whole UTF-8 characters only).  EOS is a stop id and prints as
 * nothing.  The speed goes to stderr. */
#include "cli/cli.h"
#include "cli/opt.h"
#include "model/model.h"
#include "sampler/sampler.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    sampler_lm lm; /* first: the sampler sees this */
    model *m;
    model_seq *seq;
    model_detok detok;
    double t_first; /* time of the first call */
    int n_calls;
    int print_failed;
} gen_lm;

/* Print ids[from..to) through the incremental detokenizer. */
static int print_tokens(gen_lm *g, const int32_t *ids, int from, int to)
{
    char buf[8192];
    for (int i = from; i < to; i++) {
        int n = model_detok_push(g->m, &g->detok, ids[i], buf, sizeof buf);
        if (n < 0) return n;
        fwrite(buf, 1, (size_t)n, stdout);
    }
    fflush(stdout);
    return 0;
}

static int gen_next_logits(sampler_lm *lm, const int32_t *ctx, int n_ctx, float *logits)
{
    gen_lm *g = (gen_lm *)lm;
    if (g->n_calls++ == 0) g->t_first = cli_seconds(CLOCK_MONOTONIC);
    return model_seq_eval(g->m, g->seq, ctx, n_ctx, logits);
}

/* sampler_generate's per-token callback: print the token just appended. */
static int gen_on_token(void *user, int32_t token, int n_generated)
{
    (void)n_generated;
    gen_lm *g = user;
    if (print_tokens(g, &token, 0, 1) < 0) {
        g->print_failed = 1;
        return 1; /* stop */
    }
    return 0;
}

static void usage(FILE *f)
{
    fputs("usage: lmserve generate --model FILE --prompt TEXT [options]\n"
          "\n"
          "  --model PATH              GGUF file, llama2.c checkpoint, course or HF folder (required)\n"
          "  --tokenizer FILE          llama2.c tokenizer.bin (default: tokenizer.bin beside the model)\n"
          "  --prompt TEXT             the text to continue (required; may be \"\")\n"
          "  --max-tokens N            new tokens to generate (default 256)\n"
          "  --ctx N                   the window the model sees; 0 = the model's (default 0)\n"
          "  --context-overflow slide|shift|stop  past the window: slide = the last ctx tokens\n"
          "                            every step, recomputed (exact; a forward pass\n"
          "                            over the window per token); shift = keep the last ctx/2\n"
          "                            when full (cheaper, approximate); stop = end there\n"
          "                            (default slide)\n"
          "  --temperature T           0 = greedy (default 1)\n"
          "  --top-k K                 keep the K most likely tokens (default 0 = off)\n"
          "  --top-p P                 nucleus sampling, 0 < P <= 1 (default 0 = off)\n"
          "  --repetition-penalty R    > 0, 1 = none (default 0 = off)\n"
          "  --seed S                  RNG seed (default: from the clock)\n"
          "  --threads N               kernel threads (default 0 = number of CPUs)\n"
          "  --kv-type f32|f16         KV cache element type (default f32; f16 halves its memory)\n"
          "  -h, --help                this text\n"
          "\n"
          "Prints the prompt and its continuation to stdout, the speed to stderr.\n",
          f);
}

int cli_generate(int argc, char **argv)
{
    const char *model_path = NULL, *tok_path = NULL, *prompt = NULL;
    int max_tokens = 256, top_k = 0, threads = 0, kv_f16 = 0, ctx = 0, crop = SAMPLER_CROP_SLIDE;
    float temperature = 1.0f, top_p = 0.0f, rep = 0.0f;
    uint64_t seed = (uint64_t)time(NULL);

    const cli_opt options[] = {
        OPT_STR("--model", &model_path),
        OPT_STR("--tokenizer", &tok_path),
        OPT_STR("--prompt", &prompt),
        OPT_INT("--max-tokens", &max_tokens, 0, 1 << 24),
        OPT_INT("--ctx", &ctx, 0, 1 << 24),
        OPT_FN("--context-overflow", &crop, cli_context_overflow, CLI_CONTEXT_OVERFLOW_EXPECT),
        OPT_FLOAT("--temperature", &temperature, 0, FLT_MAX),
        OPT_INT("--top-k", &top_k, 0, 1 << 30),
        OPT_FLOAT("--top-p", &top_p, 0, 1),
        OPT_FLOAT("--repetition-penalty", &rep, 0, FLT_MAX),
        OPT_INT("--threads", &threads, 0, 1024),
        OPT_FN("--kv-type", &kv_f16, cli_kv_type, CLI_KV_TYPE_EXPECT),
        OPT_U64("--seed", &seed),
    };
    int prc = cli_parse("lmserve generate", options, sizeof options / sizeof options[0], argc, argv);
    if (prc == CLI_HELP) {
        usage(stdout);
        return 0;
    }
    if (prc != CLI_OK) return 2;
    if (!model_path || !prompt) {
        fprintf(stderr, "lmserve generate: --model and --prompt are required\n");
        usage(stderr);
        return 2;
    }

    char err[512];
    model *m = NULL;
    model_load_opts opts = { .tokenizer_path = tok_path, .n_threads = (int)threads };
    if (model_load(&m, model_path, &opts, err, sizeof err) != MODEL_OK) {
        fprintf(stderr, "lmserve generate: %s\n", err);
        return 1;
    }
    model_set_kv_f16(m, kv_f16);
    const model_info *info = model_get_info(m);
    int rc = 1;
    int32_t *prompt_ids = NULL, *out = NULL;
    gen_lm g = { .m = m };
    size_t plen = strlen(prompt);
    int n_prompt = model_tokenize(m, prompt, plen, info->add_bos, NULL, 0);
    if (n_prompt < 0) {
        fprintf(stderr, "lmserve generate: cannot tokenize the prompt: %s\n", model_strerror(n_prompt));
        goto done;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "lmserve generate: the prompt is empty and the model has no BOS token\n");
        goto done;
    }
    int W = ctx > 0 && ctx < info->ctx_len ? ctx : info->ctx_len;
    if (n_prompt > W && crop != SAMPLER_CROP_SLIDE) {
        fprintf(stderr,
                "lmserve generate: the prompt has %d tokens; the window holds %d "
                "(--context-overflow slide would keep its last %d)\n",
                n_prompt, W, W);
        goto done;
    }
    prompt_ids = malloc((size_t)n_prompt * sizeof *prompt_ids);
    out = malloc(((size_t)n_prompt + (size_t)max_tokens) * sizeof *out);
    if (!prompt_ids || !out) {
        fprintf(stderr, "lmserve generate: out of memory\n");
        goto done;
    }
    model_tokenize(m, prompt, plen, info->add_bos, prompt_ids, n_prompt);

    g.seq = model_seq_new(m, W);
    if (!g.seq) {
        fprintf(stderr, "lmserve generate: cannot create a sequence (out of memory?)\n");
        goto done;
    }
    model_detok_init(&g.detok);
    g.lm.vocab_size = info->vocab_size;
    g.lm.max_seq_len = W;
    g.lm.next_logits = gen_next_logits;
    int32_t stop[2];
    int n_stop = 0;
    if (info->eos_id >= 0) stop[n_stop++] = info->eos_id;
    if (info->bos_ends_text) stop[n_stop++] = info->bos_id; /* llama2.c: as run.c */
    sampler_params sp = {
        .temperature = temperature,
        .top_k = (int)top_k,
        .top_p = top_p,
        .repetition_penalty = rep,
        .seed = seed,
        .stop_ids = n_stop ? stop : NULL,
        .n_stop_ids = n_stop,
        .crop = crop,
        .on_token = gen_on_token,
        .on_token_user = &g,
    };
    const char *bad_name = NULL;
    if (sampler_params_validate(&sp, info->vocab_size, &bad_name) != SAMPLER_OK) {
        fprintf(stderr, "lmserve generate: invalid sampling parameter '%s'\n", bad_name ? bad_name : "?");
        goto done;
    }
    if (print_tokens(&g, prompt_ids, 0, n_prompt) < 0) {
        fprintf(stderr, "lmserve generate: cannot detokenize the prompt\n");
        goto done;
    }
    if (max_tokens == 0) {
        rc = 0;
        goto done;
    }
    int total = sampler_generate(&g.lm, prompt_ids, n_prompt, (int)max_tokens, &sp, out);
    double t_end = cli_seconds(CLOCK_MONOTONIC);
    if (total < 0 || g.print_failed) {
        fprintf(stdout, "\n");
        fprintf(stderr, "lmserve generate: generation failed (error %d)\n", total < 0 ? total : -1);
        goto done;
    }
    char tail[16];
    int n = model_detok_flush(m, &g.detok, tail, sizeof tail);
    if (n > 0) fwrite(tail, 1, (size_t)n, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    /* speed: new tokens over the time since the first model call (prompt prefill included) */
    int n_gen = total - n_prompt;
    double dt = t_end - g.t_first;
    if (n_gen > 0 && dt > 0)
        fprintf(stderr, "achieved tok/s: %.1f (%d new tokens, %d prompt tokens, %.3f s)\n", (double)n_gen / dt, n_gen,
                n_prompt, dt);
    rc = 0;
done:
    model_seq_free(g.seq);
    free(prompt_ids);
    free(out);
    model_free(m);
    return rc;
}
