/* train.c -- `lmserve train`: train a byte-level llama model on a text file. */
#include "cli/cli.h"
#include "cli/opt.h"
#include "train/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fputs("usage: lmserve train --data FILE.txt --out MODEL.gguf [options]\n"
          "\n"
          "Train a llama-architecture model with a byte vocabulary (259 tokens) on a text\n"
          "file and write it as GGUF, ready for `lmserve serve --model MODEL.gguf`.\n"
          "\n"
          "shape:\n"
          "  --dim N            embedding width, multiple of 8           (128)\n"
          "  --layers N         transformer blocks                       (4)\n"
          "  --heads N          attention heads                          (4)\n"
          "  --kv-heads N       key/value heads (grouped-query)          (= heads)\n"
          "  --hidden N         SwiGLU width, multiple of 8              (8/3 dim, rounded up to 8)\n"
          "  --ctx N            context length (training window)         (128)\n"
          "  --untied           separate classifier matrix               (tied to the embedding)\n"
          "optimisation:\n"
          "  --steps N          optimizer steps                          (1000)\n"
          "  --batch B          sequences per step                       (16)\n"
          "  --lr X             peak learning rate                       (1e-3)\n"
          "  --warmup N         linear warmup steps                      (100)\n"
          "  --min-lr X         final learning rate of the cosine decay  (lr / 10)\n"
          "  --weight-decay X   AdamW decoupled decay, matrices only     (0.1)\n"
          "  --clip X           global gradient-norm clip, 0 = off       (1.0)\n"
          "  --beta2 X          AdamW second-moment decay                (0.95)\n"
          "  --seed S           initialisation and data order            (1337)\n"
          "  --threads N        worker threads                           (number of CPUs)\n"
          "data and evaluation:\n"
          "  --val-frac X       held-out fraction (every k-th 8 KiB chunk) (0.05)\n"
          "  --eval-every N     validate every N steps, 0 = at the end   (200)\n"
          "  --eval-tokens N    held-out tokens per validation           (32768)\n"
          "files:\n"
          "  --ckpt PATH        checkpoint with optimizer state          (OUT minus .gguf + .ckpt.gguf)\n"
          "  --save-every N     write the checkpoint every N steps       (0 = at the end)\n"
          "  --resume PATH      continue from a checkpoint (shape from the file)\n"
          "  --stop-at N        stop after step N (the schedule still spans --steps)\n"
          "  --f16              store OUT's matrices as F16 (checkpoints stay F32)\n"
          "  --sample N         after training, print N bytes greedy and sampled (T=0.8)\n"
          "  --prompt TEXT      prompt for --sample                      (\"And\")\n"
          "  --quiet            no progress output\n"
          "\n"
          "Runs are bit-identical for the same seed and thread count.  Loss is reported\n"
          "in nats and in bits per byte (bpb).\n",
          f);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            unsigned char *q = cap < ((size_t)1 << 31) ? realloc(buf, cap * 2) : NULL;
            if (!q) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = q;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* What the command line says beyond train_opts. */
typedef struct {
    const char *data;   /* --data */
    const char *prompt; /* --prompt for --sample */
    int n_sample;       /* --sample */
} train_args;

/* The command line into *o and *a, with the derived defaults (kv heads, hidden
 * width, final learning rate) and the checks that need several options.
 * CLI_OK, CLI_HELP (usage printed) or CLI_BAD (message printed). */
static int parse_args(int argc, char **argv, train_opts *o, train_args *a)
{
    float min_lr = -1.0f;
    int kv_heads = 0, hidden = 0;
    const cli_opt opts[] = {
        OPT_STR("--data", &a->data),
        OPT_STR("--out", &o->out_path),
        OPT_STR("--ckpt", &o->ckpt_path),
        OPT_STR("--resume", &o->resume_path),
        OPT_STR("--prompt", &a->prompt),
        OPT_FLAG("--untied", &o->shape.tied, 0),
        OPT_FLAG("--f16", &o->f16, 1),
        OPT_FLAG("--quiet", &o->progress, 0),
        OPT_INT("--dim", &o->shape.dim, 8, 8192),
        OPT_INT("--layers", &o->shape.n_layers, 1, 256),
        OPT_INT("--heads", &o->shape.n_heads, 1, 1024),
        OPT_INT("--kv-heads", &kv_heads, 1, 1024),
        OPT_INT("--hidden", &hidden, 8, 65536),
        OPT_INT("--ctx", &o->shape.ctx_len, 2, 8192),
        OPT_INT("--steps", &o->steps, 0, 100000000),
        OPT_INT("--batch", &o->batch, 1, 4096),
        OPT_INT("--warmup", &o->warmup, 0, 100000000),
        OPT_INT("--threads", &o->n_threads, 1, 64),
        OPT_INT("--eval-every", &o->eval_every, 0, 100000000),
        OPT_INT("--eval-tokens", &o->eval_tokens, 1, 100000000),
        OPT_INT("--save-every", &o->save_every, 0, 100000000),
        OPT_INT("--stop-at", &o->stop_at, 0, 100000000),
        OPT_INT("--sample", &a->n_sample, 0, 100000),
        OPT_U64("--seed", &o->seed),
        OPT_FLOAT("--lr", &o->lr, 1e-9, 10.0),
        OPT_FLOAT("--min-lr", &min_lr, 0.0, 10.0),
        OPT_FLOAT("--weight-decay", &o->weight_decay, 0.0, 10.0),
        OPT_FLOAT("--clip", &o->clip, 0.0, 1e9),
        OPT_FLOAT("--beta2", &o->beta2, 0.0, 0.99999999),
        OPT_FLOAT("--val-frac", &o->val_frac, 0.0, 0.5),
    };
    int rc = cli_parse("lmserve train", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (rc == CLI_HELP) usage(stdout);
    if (rc != CLI_OK) return rc;
    if (!a->data || !o->out_path) {
        fprintf(stderr, "lmserve train: --data and --out are required (see --help)\n");
        return CLI_BAD;
    }
    o->shape.n_kv_heads = kv_heads ? kv_heads : o->shape.n_heads;
    o->shape.hidden_dim = hidden ? hidden : (8 * o->shape.dim / 3 + 7) / 8 * 8;
    o->min_lr = min_lr >= 0 ? min_lr : o->lr / 10.0f;
    if (o->min_lr > o->lr) {
        fprintf(stderr, "lmserve train: --min-lr must not exceed --lr\n");
        return CLI_BAD;
    }
    char err[512];
    if (!o->resume_path && train_shape_check(&o->shape, err, sizeof err)) {
        fprintf(stderr, "lmserve train: %s\n", err);
        return CLI_BAD;
    }
    return CLI_OK;
}

/* The default checkpoint path: OUT without ".gguf", plus ".ckpt.gguf" (malloc'd). */
static char *default_ckpt(const char *out)
{
    size_t n = strlen(out);
    char *p = malloc(n + 16);
    if (!p) return NULL;
    memcpy(p, out, n + 1);
    if (n > 5 && !strcmp(p + n - 5, ".gguf")) p[n - 5] = 0;
    strcat(p, ".ckpt.gguf");
    return p;
}

/* --sample: n bytes after prompt from the written model, greedy and at T = 0.8. */
static int print_samples(const char *path, const char *prompt, int n_sample, uint64_t seed)
{
    char err[512];
    train_net *n = NULL;
    if (train_net_load(&n, path, err, sizeof err)) {
        fprintf(stderr, "lmserve train: %s\n", err);
        return 1;
    }
    size_t cap = (size_t)n_sample + 1;
    char *buf = malloc(cap);
    if (!buf) {
        fprintf(stderr, "lmserve train: out of memory\n");
        train_net_free(n);
        return 1;
    }
    train_generate(n, prompt, n_sample, 0.0f, seed, buf, cap);
    printf("greedy: %s%s\n", prompt, buf);
    train_generate(n, prompt, n_sample, 0.8f, seed, buf, cap);
    printf("sampled (T=0.8, seed %llu): %s%s\n", (unsigned long long)seed, prompt, buf);
    free(buf);
    train_net_free(n);
    return 0;
}

int cli_train(int argc, char **argv)
{
    train_opts o;
    train_opts_default(&o);
    o.log = stderr;
    train_args a = { .prompt = "And" };
    int rc = parse_args(argc, argv, &o, &a);
    if (rc != CLI_OK) return rc == CLI_HELP ? 0 : 2;
    char *ckpt_alloc = o.ckpt_path ? NULL : default_ckpt(o.out_path);
    if (!o.ckpt_path && !ckpt_alloc) {
        fprintf(stderr, "lmserve train: out of memory\n");
        return 1;
    }
    if (ckpt_alloc) o.ckpt_path = ckpt_alloc;
    size_t len = 0;
    unsigned char *text = read_file(a.data, &len);
    if (!text) {
        fprintf(stderr, "lmserve train: %s: cannot read\n", a.data);
        free(ckpt_alloc);
        return 1;
    }
    char err[512];
    train_result res;
    rc = train_run(&o, text, len, &res, err, sizeof err);
    free(text);
    if (rc) {
        fprintf(stderr, "lmserve train: %s\n", err);
        free(ckpt_alloc);
        return 1;
    }
    if (res.steps_run > 0)
        fprintf(stderr,
                "lmserve train: step %d (%d this run), %.1f s, %.0f tok/s; train %.4f bpb, "
                "val %.4f bpb; wrote %s and %s\n",
                res.steps_done, res.steps_run, res.seconds, res.tok_per_s, res.train_bpb, res.val_bpb, o.out_path,
                o.ckpt_path);
    else
        fprintf(stderr, "lmserve train: step %d (nothing left to train); val %.4f bpb; wrote %s\n", res.steps_done,
                res.val_bpb, o.out_path);
    free(ckpt_alloc);
    return a.n_sample > 0 ? print_samples(o.out_path, a.prompt, a.n_sample, o.seed) : 0;
}
