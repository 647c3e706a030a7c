/* model_internal.h -- what the loaders fill in and the forward pass reads.
 *
 * Included only by the .c files in model/ and tests/model/.  Loaders (gguf.c,
 * llama2c.c, and later torch/safetensors readers) produce a `struct model`;
 * forward.c and kernels.c consume it.  Keep the two sides talking only
 * through this header.
 *
 * Matrix convention: a `mtensor` is a row-major (rows, cols) matrix used as
 * y = W x with x of length cols and y of length rows ("out, in"), which is
 * GGUF's and llama2.c's on-disk layout for every projection.  Data stays in
 * the file's type (F32, F16, BF16 or Q8_0) and usually points into the mmap.
 */
#ifndef LMSERVE_MODEL_INTERNAL_H
#define LMSERVE_MODEL_INTERNAL_H

#include "model/model.h"

#include <stddef.h>
#include <stdint.h>

/* Element types, numbered as GGML numbers them (GGUF tensor_info type). */
enum {
    MT_F32 = 0,
    MT_F16 = 1,
    MT_Q8_0 = 8,
    MT_BF16 = 30,
};

#define Q8_0_BLOCK 32 /* Q8_0: blocks of 32 int8 with one f16 scale: 34 bytes */

typedef struct {
    const void *data; /* rows * row_bytes */
    int type;         /* MT_* */
    int rows, cols;   /* cols % 32 == 0 for Q8_0 */
    int panel;        /* 0: row-major.  KERNEL_PANEL (F32 only): the first rows / 16 * 16
                       * rows are stored as 16-row panels, each k-major (16 floats of
                       * column k, then column k + 1, ...); the remaining rows follow
                       * row-major (kernel_pack_f32; kernels.c) */
} mtensor;

enum { ARCH_LLAMA = 0, ARCH_GPT2 = 1 };

typedef struct {
    const float *attn_norm;      /* (dim) RMSNorm / LayerNorm weight */
    const float *attn_norm_b;    /* (dim) LayerNorm bias (gpt2) */
    mtensor wq;                  /* (n_heads * head_dim, dim) */
    mtensor wk;                  /* (n_kv_heads * head_dim, dim) */
    mtensor wv;                  /* (n_kv_heads * head_dim, dim) */
    mtensor wo;                  /* (dim, n_heads * head_dim) */
    const float *bq, *bk, *bv, *bo; /* biases (gpt2), NULL for llama */
    const float *ffn_norm;       /* (dim) */
    const float *ffn_norm_b;     /* (dim) (gpt2) */
    mtensor w1;                  /* llama: gate (hidden, dim); gpt2: fc1 (hidden, dim) */
    mtensor w2;                  /* down / fc2 (dim, hidden) */
    mtensor w3;                  /* llama: up (hidden, dim); gpt2: unused */
    const float *b1, *b2;        /* gpt2 fc biases */
} layer_weights;

/* Tokenizer kinds. */
enum {
    TOK_SPM = 0,        /* SentencePiece-style: merges by score, byte fallback, U+2581 or ' ' spaces */
    TOK_BPE_BYTES = 1,  /* GPT-2 byte-level BPE (merges by rank, regex pre-split) */
    TOK_G2C = 2,        /* course "g2c.bpe": bytes + specials + merges by new id */
};

enum { /* token types, as GGUF numbers them */
    TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6,
};

typedef struct tokenizer tokenizer;
struct tokenizer {
    int kind;               /* TOK_* */
    int n_vocab;
    char **str;             /* token strings as stored in the vocabulary (NUL-terminated) */
    int *str_len;
    char **bytes;           /* decoded bytes of each token (space marker -> ' ', <0xNN> -> byte) */
    int *bytes_len;
    float *scores;          /* SPM merge scores (NULL otherwise) */
    uint8_t *types;         /* TT_* per token */
    int32_t byte_id[256];   /* id of the token for each raw byte, -1 if none */
    int32_t bos_id, eos_id, unk_id;
    int add_bos;
    int add_space_prefix;   /* SPM: prepend ' ' to the text before encoding */
    int max_str_len;
    void *impl;             /* kind-specific data (sorted vocab, merge tables, ...) */
    void (*impl_free)(void *);
};

/* A per-model pool of worker threads for the kernels (see pool.c). */
typedef struct model_pool model_pool;
typedef void (*model_pool_fn)(void *arg, int task, int n_tasks);
model_pool *model_pool_new(int n_threads);
void model_pool_free(model_pool *p);
int model_pool_size(const model_pool *p);
/* Run fn(arg, t, n_tasks) for t in [0, n_tasks), spread over the pool and the
 * calling thread; returns when all are done. */
void model_pool_run(model_pool *p, model_pool_fn fn, void *arg, int n_tasks);

struct model {
    model_info info;
    int arch;                  /* ARCH_* */
    char *path;                /* the file or folder it came from */
    char arch_name[16], format_name[16], type_name[8];

    mtensor tok_embd;          /* (vocab, dim) */
    mtensor pos_embd;          /* gpt2: (ctx_len, dim) */
    layer_weights *layers;     /* n_layers */
    const float *out_norm;     /* (dim) */
    const float *out_norm_b;   /* (dim) gpt2 */
    mtensor output;            /* (vocab, dim); equals tok_embd when tied */
    const float *output_bias;  /* (vocab) or NULL */
    int rope_neox;             /* llama: 1 = rotate halves (HF layout), 0 = adjacent pairs (GGUF/llama2.c) */
    int gelu_tanh;             /* gpt2: 1 = tanh approximation (HF GPT-2), 0 = exact erf */

    tokenizer tok;

    /* Memory the model owns: mmaps and heap blocks, released by model_free. */
    struct { void *addr; size_t len; } maps[8];
    int n_maps;
    void *packed;              /* the F32 matrices in panel layout (model_alloc_weights) */
    size_t packed_len;
    void **heap;               /* malloc'd blocks (converted weights, tables) */
    int n_heap, cap_heap;

    model_pool *pool;
    void *scratch;             /* forward-pass activations, grown on demand (forward.c) */
    int kv_f16;                /* new sequences store K and V as F16 (model_set_kv_f16) */
};

/* Loaders, one per format; each fills *m (already zeroed, path set) or writes err. */
int model_load_gguf(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen);
int model_load_llama2c(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen);

/* Helpers shared by loaders. */
int model_own(model *m, void *block);      /* take ownership of a malloc'd block; 0 or MODEL_ENOMEM */
size_t mtensor_row_bytes(int type, int cols);
float model_f16_to_f32(uint16_t h);
uint16_t model_f32_to_f16(float f);
float model_bf16_to_f32(uint16_t h);

/* Tokenizer internals. */
void tokenizer_free(tokenizer *t);
int tokenizer_load_llama2c(tokenizer *t, const char *path, int vocab_size, char *err, size_t errlen);
int tokenizer_finish(tokenizer *t, char *err, size_t errlen); /* build lookup tables after vocab is set */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap);

/* Forward-pass internals (forward.c / kernels.c). */
void forward_scratch_free(void *scratch);
/* out[r, :] = W x[r, :] for r in [0, n_rows): x is (n_rows, W.cols), out (n_rows, W.rows). */
void kernel_matmul(model_pool *pool, float *out, const float *x, int n_rows, const mtensor *w);
/* Row `row` of W as floats (embedding lookup). */
void mtensor_get_row(const mtensor *w, int row, float *out);

#endif /* LMSERVE_MODEL_INTERNAL_H */
