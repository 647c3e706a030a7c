/* train.c -- `lmserve train`: train a byte-level llama model on a text file. */
#include "cli/cli.h"
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

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double lo, double hi, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = (float)v;
    return 0;
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
            if (!q) { free(buf); buf = NULL; break; }
            buf = q;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) { free(buf); buf = NULL; }
            break;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

int cli_train(int argc, char **argv)
{
    train_opts o;
    train_opts_default(&o);
    o.log = stderr;
    const char *data = NULL;
    float min_lr = -1.0f;
    int kv_heads = 0, hidden = 0, n_sample = 0;
    const char *prompt = "And";
    char *ckpt_alloc = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l = 0;
        int bad = 0, used = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--untied")) { o.shape.tied = 0; used = 0; }
        else if (!strcmp(a, "--f16")) { o.f16 = 1; used = 0; }
        else if (!strcmp(a, "--quiet")) { o.progress = 0; used = 0; }
        else if (!v) {
            fprintf(stderr, "lmserve train: %s %s (see --help)\n", a,
                    strncmp(a, "--", 2) ? "is not an option" : "needs a value, or is unknown");
            return 2;
        }
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) o.out_path = v;
        else if (!strcmp(a, "--ckpt")) o.ckpt_path = v;
        else if (!strcmp(a, "--resume")) o.resume_path = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--dim")) { bad = parse_long(v, 8, 8192, &l); o.shape.dim = (int)l; }
        else if (!strcmp(a, "--layers")) { bad = parse_long(v, 1, 256, &l); o.shape.n_layers = (int)l; }
        else if (!strcmp(a, "--heads")) { bad = parse_long(v, 1, 1024, &l); o.shape.n_heads = (int)l; }
        else if (!strcmp(a, "--kv-heads")) { bad = parse_long(v, 1, 1024, &l); kv_heads = (int)l; }
        else if (!strcmp(a, "--hidden")) { bad = parse_long(v, 8, 65536, &l); hidden = (int)l; }
        else if (!strcmp(a, "--ctx")) { bad = parse_long(v, 2, 8192, &l); o.shape.ctx_len = (int)l; }
        else if (!strcmp(a, "--steps")) { bad = parse_long(v, 0, 100000000, &l); o.steps = (int)l; }
        else if (!strcmp(a, "--batch")) { bad = parse_long(v, 1, 4096, &l); o.batch = (int)l; }
        else if (!strcmp(a, "--warmup")) { bad = parse_long(v, 0, 100000000, &l); o.warmup = (int)l; }
        else if (!strcmp(a, "--threads")) { bad = parse_long(v, 1, 64, &l); o.n_threads = (int)l; }
        else if (!strcmp(a, "--eval-every")) { bad = parse_long(v, 0, 100000000, &l); o.eval_every = (int)l; }
        else if (!strcmp(a, "--eval-tokens")) { bad = parse_long(v, 1, 100000000, &l); o.eval_tokens = (int)l; }
        else if (!strcmp(a, "--save-every")) { bad = parse_long(v, 0, 100000000, &l); o.save_every = (int)l; }
        else if (!strcmp(a, "--stop-at")) { bad = parse_long(v, 0, 100000000, &l); o.stop_at = (int)l; }
        else if (!strcmp(a, "--sample")) { bad = parse_long(v, 0, 100000, &l); n_sample = (int)l; }
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            bad = errno || end == v || *end || v[0] == '-';
            o.seed = s;
        }
        else if (!strcmp(a, "--lr")) bad = parse_float(v, 1e-9, 10.0, &o.lr);
        else if (!strcmp(a, "--min-lr")) bad = parse_float(v, 0.0, 10.0, &min_lr);
        else if (!strcmp(a, "--weight-decay")) bad = parse_float(v, 0.0, 10.0, &o.weight_decay);
        else if (!strcmp(a, "--clip")) bad = parse_float(v, 0.0, 1e9, &o.clip);
        else if (!strcmp(a, "--beta2")) bad = parse_float(v, 0.0, 0.99999999, &o.beta2);
        else if (!strcmp(a, "--val-frac")) bad = parse_float(v, 0.0, 0.5, &o.val_frac);
        else { fprintf(stderr, "lmserve train: unknown option '%s' (see --help)\n", a); return 2; }
        if (bad) { fprintf(stderr, "lmserve train: bad value '%s' for %s (see --help)\n", v, a); return 2; }
        i += used;
    }
    if (!data || !o.out_path) {
        fprintf(stderr, "lmserve train: --data and --out are required (see --help)\n");
        return 2;
    }
    o.shape.n_kv_heads = kv_heads ? kv_heads : o.shape.n_heads;
    o.shape.hidden_dim = hidden ? hidden : (8 * o.shape.dim / 3 + 7) / 8 * 8;
    o.min_lr = min_lr >= 0 ? min_lr : o.lr / 10.0f;
    if (o.min_lr > o.lr) {
        fprintf(stderr, "lmserve train: --min-lr must not exceed --lr\n");
        return 2;
    }
    char err[512];
    if (!o.resume_path && train_shape_check(&o.shape, err, sizeof err)) {
        fprintf(stderr, "lmserve train: %s\n", err);
        return 2;
    }
    if (!o.ckpt_path) {
        size_t n = strlen(o.out_path);
        ckpt_alloc = malloc(n + 16);
        if (!ckpt_alloc) return 1;
        memcpy(ckpt_alloc, o.out_path, n + 1);
        if (n > 5 && !strcmp(ckpt_alloc + n - 5, ".gguf")) ckpt_alloc[n - 5] = 0;
        strcat(ckpt_alloc, ".ckpt.gguf");
        o.ckpt_path = ckpt_alloc;
    }

    size_t len = 0;
    unsigned char *text = read_file(data, &len);
    if (!text) {
        fprintf(stderr, "lmserve train: %s: cannot read\n", data);
        free(ckpt_alloc);
        return 1;
    }
    train_result res;
    int rc = train_run(&o, text, len, &res, err, sizeof err);
    free(text);
    if (rc) {
        fprintf(stderr, "lmserve train: %s\n", err);
        free(ckpt_alloc);
        return 1;
    }
    if (res.steps_run > 0)
        fprintf(stderr, "lmserve train: step %d (%d this run), %.1f s, %.0f tok/s; train %.4f bpb, "
                "val %.4f bpb; wrote %s and %s\n", res.steps_done, res.steps_run, res.seconds,
                res.tok_per_s, res.train_bpb, res.val_bpb, o.out_path, o.ckpt_path);
    else
        fprintf(stderr, "lmserve train: step %d (nothing left to train); val %.4f bpb; wrote %s\n",
                res.steps_done, res.val_bpb, o.out_path);
    free(ckpt_alloc);

    if (n_sample > 0) {
        train_net *n = NULL;
        if (train_net_load(&n, o.out_path, err, sizeof err)) {
            fprintf(stderr, "lmserve train: %s\n", err);
            return 1;
        }
        size_t cap = (size_t)n_sample + 1;
        char *buf = malloc(cap);
        if (!buf) { train_net_free(n); return 1; }
        train_generate(n, prompt, n_sample, 0.0f, o.seed, buf, cap);
        printf("greedy: %s%s\n", prompt, buf);
        train_generate(n, prompt, n_sample, 0.8f, o.seed, buf, cap);
        printf("sampled (T=0.8, seed %llu): %s%s\n", (unsigned long long)o.seed, prompt, buf);
        free(buf);
        train_net_free(n);
    }
    return 0;
}
