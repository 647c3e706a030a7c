/* train.h -- train a small llama-architecture language model on a text file.
 *
 * Design
 * ------
 * The model trained here is exactly the one the engine serves (model/): token
 * embedding, n_layers blocks of [RMSNorm -> attention with RoPE (adjacent
 * pairs, as llama2.c and GGUF "llama") and grouped-query heads -> residual,
 * RMSNorm -> SwiGLU feed-forward -> residual], a final RMSNorm and a
 * classifier that is either the embedding matrix (tied) or its own matrix.
 * The vocabulary is bytes, laid out as llama2.c lays it out: 0 "<unk>",
 * 1 "<s>" (BOS), 2 "</s>" (EOS), 3 + b = "<0xBB>" for each byte b, so the
 * engine's SentencePiece tokenizer encodes any UTF-8 text by byte fallback.
 *
 * Everything is float32 and written plainly (llm.c style): all parameters live
 * in one allocation carved by offsets (train_params views it), the gradients
 * and the two AdamW moments have the same layout.  Every layer has a forward
 * and a backward function with outputs first (layers.c, declared in
 * train_internal.h); net.c chains them for one sequence.
 *
 * Parallelism: a step's batch of B sequences is split into n_threads fixed
 * contiguous ranges; each thread runs forward+backward for its sequences one
 * at a time, accumulating into its own gradient buffer; the buffers are then
 * summed in thread order (each thread summing one slice of the parameters).
 * No reduction depends on timing, so a run is bit-identical for a given seed
 * and thread count (different thread counts give different rounding).
 *
 * Data: the text's bytes are cut into 8 KiB chunks; every k-th chunk
 * (k = round(1 / val_frac)) is held out for validation, the rest are joined
 * into the training stream.  Each training window is BOS followed by ctx-1
 * bytes starting at a uniformly random offset (a seeded xorshift RNG), and the
 * targets are the next bytes -- the same situation as a prompt at inference
 * (the tokenizer prepends BOS).  Validation uses fixed evenly spaced windows of
 * the held-out stream; loss is reported in bits per byte (nats / ln 2, one
 * token per byte).
 *
 * Checkpoints are GGUF files the server loads directly (F32 weights); they
 * also hold the AdamW moments ("train.adam_m", "train.adam_v"), the step and
 * the RNG state ("train.*" keys), so --resume continues bit-identically.
 * The final model file can store its matrices as F16.
 *
 * Functions return 0 or a negative TRAIN_E* code (the model module's numbers);
 * every *_free accepts NULL.  Nothing here calls exit() or keeps globals.
 */
#ifndef LMSERVE_TRAIN_H
#define LMSERVE_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- Types ---------------------------------------------------------------- */

enum {
    TRAIN_OK = 0,
    TRAIN_EINVAL = -22,
    TRAIN_ENOMEM = -12,
    TRAIN_EIO = -5,
    TRAIN_EFORMAT = -74,
};

enum { TRAIN_VOCAB = 259, TRAIN_UNK = 0, TRAIN_BOS = 1, TRAIN_EOS = 2, TRAIN_BYTE0 = 3 };

typedef struct {
    int dim; /* embedding width, multiple of 8 */
    int n_layers;
    int n_heads;
    int n_kv_heads;   /* divides n_heads */
    int hidden_dim;   /* SwiGLU width, multiple of 8 */
    int ctx_len;      /* positions per training window (and the model's context) */
    int vocab_size;   /* TRAIN_VOCAB */
    int tied;         /* 1: the classifier is the embedding matrix */
    float rope_theta; /* 10000 */
    float norm_eps;   /* 1e-5 */
} train_shape;

/* Views of one flat parameter-shaped buffer (weights, gradients, moments). */
typedef struct {
    float *attn_norm; /* (dim) */
    float *wq;        /* (n_heads * head_dim, dim) */
    float *wk;        /* (n_kv_heads * head_dim, dim) */
    float *wv;        /* (n_kv_heads * head_dim, dim) */
    float *wo;        /* (dim, n_heads * head_dim) */
    float *ffn_norm;  /* (dim) */
    float *w1;        /* gate (hidden, dim) */
    float *w2;        /* down (dim, hidden) */
    float *w3;        /* up (hidden, dim) */
} train_layer;

typedef struct {
    float *tok_embd;     /* (vocab, dim) */
    train_layer *layers; /* n_layers */
    float *out_norm;     /* (dim) */
    float *output;       /* (vocab, dim); == tok_embd when tied */
} train_params;

/* One named tensor of the layout (for files and tests). */
typedef struct {
    char name[48];  /* GGUF name, e.g. "blk.0.attn_q.weight" */
    size_t offset;  /* in floats, into the flat buffer */
    int rows, cols; /* vectors: rows = 1 */
    int decay;      /* 1 if AdamW weight decay applies (matrices) */
} train_tensor;

typedef struct {
    train_shape shape;
    int steps;          /* total optimizer steps */
    int batch;          /* sequences per step */
    float lr, min_lr;   /* peak and final learning rate (cosine) */
    int warmup;         /* linear warmup steps */
    float weight_decay; /* decoupled, matrices only */
    float clip;         /* global gradient-norm clip (<= 0: off) */
    float beta1, beta2, adam_eps;
    uint64_t seed;
    int n_threads;
    float val_frac;          /* fraction of the text held out */
    int eval_every;          /* steps between validations (0: only at the end) */
    int eval_tokens;         /* held-out tokens per validation */
    int save_every;          /* steps between checkpoints (0: only at the end) */
    int stop_at;             /* stop after this step (schedule still spans `steps`); 0: no */
    const char *out_path;    /* final model (GGUF) */
    const char *ckpt_path;   /* checkpoint (GGUF with train state); NULL: none */
    const char *resume_path; /* checkpoint to continue from, or NULL */
    int f16;                 /* final model's matrices as F16 */
    int progress;            /* 0: silent; 1: progress on `log` */
    FILE *log;               /* progress and messages (stderr in the CLI); may be NULL */
} train_opts;

/* Fill opts with the defaults listed by `lmserve train --help`. */
void train_opts_default(train_opts *o);

/* The model's state: weights, gradients and AdamW moments, all in the layout
 * of train_params. */
typedef struct train_net train_net;
struct train_net {
    train_shape shape;
    size_t n_params;
    float *w, *g, *m, *v; /* each n_params */
    train_params pw, pg;  /* views of w and g */
    int n_tensors;
    train_tensor *tensors;
    long step;    /* optimizer steps taken */
    uint64_t rng; /* data-sampling RNG state */
};

/* Statistics of a finished run. */
typedef struct {
    int steps_done;   /* the model's step count at the end */
    int steps_run;    /* steps taken by this call */
    double train_bpb; /* mean training loss of the last eval interval, bits/byte */
    double val_bpb;   /* final validation loss, bits/byte */
    double seconds;
    double tok_per_s;
} train_result;

/* ---- Prototypes ------------------------------------------------------------ */

/* Check a shape; returns 0 or TRAIN_EINVAL with a reason in err. */
int train_shape_check(const train_shape *s, char *err, size_t errlen);

/* Allocate a model of this shape with weights initialised from seed. */
int train_net_new(train_net **out, const train_shape *s, uint64_t seed);
void train_net_free(train_net *n);
const train_tensor *train_net_find(const train_net *n, const char *name);

/* Save a GGUF file: the model (as F16 matrices if f16), plus the training
 * state if with_state.  Load a checkpoint written with with_state for resume. */
int train_net_save(const train_net *n, const char *path, int f16, int with_state, char *err, size_t errlen);
int train_net_load(train_net **out, const char *path, char *err, size_t errlen);

/* Train on text[0..len) according to opts.  On success fills *res (may be NULL). */
int train_run(const train_opts *o, const unsigned char *text, size_t len, train_result *res, char *err, size_t errlen);

/* Generate up to n bytes after prompt with the trainer's own forward pass
 * (temperature 0 = greedy), for samples and tests.  Writes a NUL-terminated
 * string into out (capacity cap).  Returns the bytes written or a negative code. */
int train_generate(const train_net *n, const char *prompt, int n_new, float temperature, uint64_t seed, char *out,
                   size_t cap);

const char *train_strerror(int code);

#endif /* LMSERVE_TRAIN_H */
