/* model_internal.h -- what the readers fill in and the forward pass reads.
 *
 * Included only by the files of model/ and its tests, never by another module.
 * The readers (model/formats/) produce a `struct model` with its `tokenizer`;
 * model/tokenizers/ and model/compute/ consume it.  The parts talk through this
 * header and the internal header of each folder:
 *   model/loader.h                helpers everyone shares (errors, owned memory,
 *                                 private file copies, element-type sizes)
 *   model/formats/formats.h       the readers' entry points and helpers
 *   model/formats/gguf.h          the GGUF reader (gguf_write.h: the writer)
 *   model/formats/safetensors.h, torchzip.h   the safetensors and torch.save readers
 *   model/tokenizers/tokenizer.h  building a vocabulary; SentencePiece-style BPE
 *   model/tokenizers/tok_bpe.h    byte-level BPE
 *   model/compute/forward.h       the forward pass's steps and scratch memory
 *   model/compute/seq.h           a sequence's KV cache
 *   model/compute/kernels.h       matrix products and attention
 *   model/compute/pool.h          the worker threads
 *   model/compute/quant.h         the block-quantized types
 *   model/half.h, model/tensor_types.h   number formats (self-contained)
 *
 * Matrix convention: a `mtensor` is a row-major (rows, cols) matrix used as
 * y = W x with x of length cols and y of length rows ("out, in"), which is
 * GGUF's and llama2.c's on-disk layout for every projection.  Data stays in
 * the file's type (F32, F16, BF16 or a block-quantized type, model/compute/quant.h)
 * and usually points into the file's private copy (loader.h).
 */
#ifndef LMSERVE_MODEL_INTERNAL_H
#define LMSERVE_MODEL_INTERNAL_H

#include "model/model.h"
#include "model/tensor_types.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mtensor {
    const void *data; /* rows * row_bytes */
    int type;         /* MT_* */
    int rows, cols;   /* cols a multiple of the type's block (32 or 256 weights) */
    int panel;        /* 0: row-major.  KERNEL_PANEL (F32 only): the first rows / 16 * 16
                       * rows are stored as 16-row panels, each k-major (16 floats of
                       * column k, then column k + 1, ...); the remaining rows follow
                       * row-major (kernel_pack_f32; kernels.c) */
} mtensor;

enum { ARCH_LLAMA = 0, ARCH_GPT2 = 1 };

typedef struct {
    const float *attn_norm;         /* (dim) RMSNorm / LayerNorm weight */
    const float *attn_norm_b;       /* (dim) LayerNorm bias (gpt2) */
    mtensor wq;                     /* (n_heads * head_dim, dim) */
    mtensor wk;                     /* (n_kv_heads * head_dim, dim) */
    mtensor wv;                     /* (n_kv_heads * head_dim, dim) */
    mtensor wo;                     /* (dim, n_heads * head_dim) */
    const float *bq, *bk, *bv, *bo; /* biases (gpt2), NULL for llama */
    const float *ffn_norm;          /* (dim) */
    const float *ffn_norm_b;        /* (dim) (gpt2) */
    mtensor w1;                     /* llama: gate (hidden, dim); gpt2: fc1 (hidden, dim) */
    mtensor w2;                     /* down / fc2 (dim, hidden) */
    mtensor w3;                     /* llama: up (hidden, dim); gpt2: unused */
    const float *b1, *b2;           /* gpt2 fc biases */
} layer_weights;

/* Tokenizer kinds. */
enum {
    TOK_SPM = 0,       /* SentencePiece-style: merges by score, byte fallback, U+2581 or ' ' spaces */
    TOK_BPE_BYTES = 1, /* GPT-2 byte-level BPE (merges by rank, regex pre-split) */
    TOK_G2C = 2,       /* "g2c.bpe" (course artifacts): bytes + specials + merges by new id */
};

enum { /* token types, as GGUF numbers them */
       TT_NORMAL = 1,
       TT_UNKNOWN = 2,
       TT_CONTROL = 3,
       TT_USER = 4,
       TT_UNUSED = 5,
       TT_BYTE = 6,
};

typedef struct tokenizer tokenizer;
struct tokenizer {
    int kind; /* TOK_* */
    int n_vocab;
    char **str; /* token strings as stored in the vocabulary (NUL-terminated) */
    int *str_len;
    char **bytes; /* decoded bytes of each token (space marker -> ' ', <0xNN> -> byte) */
    int *bytes_len;
    float *scores;        /* SPM merge scores (NULL otherwise) */
    uint8_t *types;       /* TT_* per token */
    int32_t byte_id[256]; /* id of the token for each raw byte, -1 if none */
    int32_t bos_id, eos_id, unk_id;
    int add_bos;
    int add_space_prefix; /* SPM: prepend ' ' to the text before encoding */
    int max_str_len;
    void *impl; /* kind-specific data (sorted vocab, merge tables, ...) */
    void (*impl_free)(void *);
};

/* A per-model pool of worker threads for the kernels (model/compute/pool.h). */
typedef struct model_pool model_pool;

struct model {
    model_info info;
    int arch;   /* ARCH_* */
    char *path; /* the file or folder it came from */
    char arch_name[16], format_name[16], type_name[8];

    mtensor tok_embd;         /* (vocab, dim) */
    mtensor pos_embd;         /* gpt2: (ctx_len, dim) */
    layer_weights *layers;    /* n_layers */
    const float *out_norm;    /* (dim) */
    const float *out_norm_b;  /* (dim) gpt2 */
    mtensor output;           /* (vocab, dim); equals tok_embd when tied */
    const float *output_bias; /* (vocab) or NULL */
    int rope_neox;            /* llama: 1 = rotate halves (HF layout), 0 = adjacent pairs (GGUF/llama2.c) */
    int gelu_tanh;            /* gpt2: 1 = tanh approximation (HF GPT-2), 0 = exact erf */

    tokenizer tok;

    /* Memory the model owns: mmaps and heap blocks, released by model_free. */
    struct {
        void *addr;
        size_t len;
    } maps[8];
    int n_maps;
    void *packed; /* the F32 matrices in panel layout (model_alloc_weights) */
    size_t packed_len;
    void **heap; /* malloc'd blocks (converted weights, tables) */
    int n_heap, cap_heap;

    model_pool *pool;
    int n_threads; /* the pool's threads, also used to read files (loader.c) */
    /* After loading, a background thread moves the weights onto huge pages
     * (model.c, model_weights_huge); model_free stops and joins it. */
    pthread_t huge_thread;
    int huge_started;
    atomic_int huge_stop;
    void *scratch; /* forward-pass activations, grown on demand (forward.c) */
    int kv_f16;    /* new sequences store K and V as F16 (model_set_kv_f16) */
};

#endif /* LMSERVE_MODEL_INTERNAL_H */
