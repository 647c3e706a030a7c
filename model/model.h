/* model.h -- load a transformer language model, tokenize, and run it.
 *
 * Design
 * ------
 * A `model` holds everything that is read-only and shared between requests: the
 * hyper-parameters, the weights (memory-mapped from the file where the on-disk
 * layout can be used as is), the tokenizer and a small thread pool for the
 * kernels.  A `model_seq` holds everything that belongs to one sequence: its
 * KV cache and the token ids that cache was computed from.
 *
 * `model_forward` runs one step for a *batch* of sequences.  Each batch item
 * appends n_tokens >= 1 tokens to its sequence at the sequence's current
 * position (prefill is simply n_tokens > 1).  Every weight matrix is read once
 * per call for all rows of all items.  The numbers computed for one row do
 * not depend on which other rows share the call, nor on the thread count:
 * the same sequence gives bit-identical logits alone or inside any batch.
 *
 * This module knows nothing of HTTP or sampling.  Functions return 0 or a
 * negative MODEL_E* code; loaders also write one human-readable line into a
 * caller-supplied buffer ("FILE: what is wrong").  Every *_free accepts NULL.
 * Out of memory, the rule for this module (server.h states the server's side): every
 * allocation is checked and a failure is returned as MODEL_ENOMEM (a load also writes its
 * message), never a partial result, so a server can fail one request and serve the next;
 * a buffer's capacity grows only after its realloc succeeded, never `p = realloc(p, n)`.
 * All functions may be called from any thread; a model may be used by several
 * threads at once, as long as each model_seq is used by one thread at a time
 * and model_forward calls are serialised by the caller (they share the pool).
 *
 * This is the module's one public header.  Inside, model.c loads (it picks a
 * reader in formats/), tokenizers/ encodes and decodes text, compute/ runs the
 * forward pass; model_internal.h lists the internal headers.  Three of those are
 * self-contained file-format tools that train/ and bench/ use as well:
 * formats/gguf.h (the GGUF parser), formats/gguf_write.h and half.h.
 */
#ifndef LMSERVE_MODEL_H
#define LMSERVE_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* ---- Types ---------------------------------------------------------------- */

enum {
    MODEL_OK = 0,
    MODEL_EINVAL = -22,  /* bad argument (token id out of range, empty batch ...) */
    MODEL_ENOMEM = -12,  /* allocation failed */
    MODEL_EIO = -5,      /* file could not be opened, read or mapped */
    MODEL_EFORMAT = -74, /* file is not a valid model/tokenizer of a known format */
    MODEL_ERANGE = -34,  /* sequence would exceed its context capacity */
};

typedef struct model model;
typedef struct model_seq model_seq;

/* Hyper-parameters and facts about a loaded model (owned by the model). */
typedef struct {
    const char *arch;        /* "llama" or "gpt2" */
    const char *format;      /* "gguf", "llama2c", "torch", "safetensors" */
    const char *weight_type; /* dominant matrix type: "F32", "F16", "BF16", "Q8_0", "Q4_K", ... */
    int dim;                 /* embedding width */
    int hidden_dim;          /* feed-forward width */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int vocab_size;
    int ctx_len;         /* the model's context window (positions) */
    int rope_dim;        /* llama: dimensions rotated per head */
    float rope_theta;    /* llama: RoPE frequency base */
    float norm_eps;      /* RMSNorm / LayerNorm epsilon */
    int32_t bos_id;      /* -1 if none */
    int32_t eos_id;      /* -1 if none */
    int bos_ends_text;   /* a generated BOS ends the text like EOS: llama2.c checkpoints,
                                whose training data separates documents with BOS (and has
                                no EOS); run.c stops there */
    int add_bos;         /* the tokenizer's convention: prepend BOS to prompts */
    size_t n_params;     /* number of weights */
    size_t weight_bytes; /* bytes of weights as held in memory */
    /* Text the file carries about itself (NUL-terminated, owned by the model; NULL if absent): */
    const char *name;          /* GGUF general.name */
    const char *chat_template; /* GGUF tokenizer.chat_template; HF tokenizer_config.json's
                                  chat_template (the "default" one of a list) */
    const char *sample_prompt; /* GGUF lmserve.sample_prompt: a prompt to show first */
    const char *tokenizer;     /* "sentencepiece", "byte-level-bpe" or "course-bpe" */
} model_info;

typedef struct {
    const char *tokenizer_path; /* llama2.c tokenizer.bin; NULL = tokenizer.bin beside the model */
    int n_threads;              /* kernel threads (including the caller); <= 0 = number of CPUs */
} model_load_opts;

/* One item of a batched forward call. */
typedef struct {
    model_seq *seq;        /* its KV cache grows by n_tokens */
    const int32_t *tokens; /* tokens to append at the sequence's current position */
    int n_tokens;          /* >= 1 */
    float *logits;         /* out: NULL (no logits wanted), or vocab_size floats for the
                                last token, or n_tokens * vocab_size if all_logits */
    int all_logits;        /* nonzero: logits for every appended position (prompt scoring) */
} model_batch_item;

/* Incremental detokenizer state: emits only whole UTF-8 characters. */
typedef struct {
    int32_t prev;  /* previous token id, -1 at start */
    int emitted;   /* nonzero once a token with text (not a special token) was pushed */
    int n_pending; /* bytes of an incomplete UTF-8 character held back */
    unsigned char pending[8];
} model_detok;

/* ---- Loading ---------------------------------------------------------------- */

/* Load a model from a file (GGUF, llama2.c .bin, ...) or a folder (HF, course
 * artifact).  The format is detected from the content, not the name.
 * On error, returns a negative code, writes one line into err and *out is NULL. */
int model_load(model **out, const char *path, const model_load_opts *opts, char *err, size_t errlen);
/* The model is usable as soon as model_load returns; a thread it started keeps
 * moving the weights onto huge pages (fewer TLB misses per step) for a moment at
 * the lowest priority.  model_settle waits for that (benchmarks call it before
 * they measure). */
void model_settle(model *m);
void model_free(model *m);
const model_info *model_get_info(const model *m);

/* ---- Tokenizer -------------------------------------------------------------- */

/* Encode text[0..len) into out (capacity cap), with BOS first if add_bos and the
 * model has one.  Returns the number of tokens (which may exceed cap: then only
 * cap were written and the caller should retry with a larger buffer), or a
 * negative code. */
int model_tokenize(const model *m, const char *text, size_t len, int add_bos, int32_t *out, int cap);

/* The raw bytes a token stands for (byte tokens decoded, the vocabulary's space
 * marker turned into ' ', special tokens as their text).  NULL if id is out of range. */
const char *model_token_bytes(const model *m, int32_t id, size_t *len);

/* The token's own vocabulary string, as stored (for /tokenize and logprobs "tokens"). */
const char *model_token_str(const model *m, int32_t id);

/* Nonzero if id is a control/special token (BOS, EOS, ...), which detokenizes to "". */
int model_token_is_special(const model *m, int32_t id);

void model_detok_init(model_detok *d);
/* Append the text of token id to out (capacity cap), holding back an incomplete
 * UTF-8 character until a later token completes it.  Applies the vocabulary's
 * conventions: when the tokenizer adds a space prefix and the stream starts with
 * BOS, the leading space of the first piece with text is dropped (a BOS in the
 * middle of a text drops nothing, as in SentencePiece).  Returns bytes written, or a
 * negative code (MODEL_ERANGE if cap is too small: cap >= 64 + longest token is
 * always enough). */
int model_detok_push(const model *m, model_detok *d, int32_t id, char *out, size_t cap);
/* Flush held-back bytes at the end of a stream (as U+FFFD for each broken
 * sequence).  Returns bytes written. */
int model_detok_flush(const model *m, model_detok *d, char *out, size_t cap);
/* Convenience: decode a whole id list into a NUL-terminated malloc'd string. */
char *model_detokenize(const model *m, const int32_t *ids, int n, size_t *len_out);

/* ---- Sequences and the forward pass ----------------------------------------- */

/* KV cache format of the sequences created from now on (existing ones keep theirs):
 * 0 = F32 (the default; the arithmetic of run.c and the reference forward passes),
 * 1 = F16 (IEEE half, round to nearest even: half the KV memory and the memory
 * traffic of attention; keys and values keep ~3 significant digits, so logits move
 * slightly; still bit-identical across batches and thread counts).  MODEL_EINVAL on
 * another value. */
int model_set_kv_f16(model *m, int on);
/* The --kv-type names: "f32" -> 0, "f16" -> 1 (model_set_kv_f16's argument); -1 otherwise. */
int model_parse_kv_type(const char *name);

/* A sequence with room for n_ctx positions (<= 0 or > ctx_len means ctx_len). */
model_seq *model_seq_new(const model *m, int n_ctx);
void model_seq_free(model_seq *s);
int model_seq_capacity(const model_seq *s);
/* Number of positions in the cache, and the tokens they were computed from. */
int model_seq_len(const model_seq *s);
const int32_t *model_seq_tokens(const model_seq *s);
/* Forget positions >= n (0 clears the sequence). */
void model_seq_truncate(model_seq *s, int n);
/* Make dst hold exactly the first n positions of src: their tokens and K/V entries,
 * bit for bit.  A sequence's entries are always what a forward pass over its tokens
 * from position 0 gives (model_forward appends, model_seq_truncate forgets, nothing
 * else writes them), and an entry depends only on the tokens at and before its
 * position, so dst then goes on exactly as if it had computed them itself.  Leading
 * positions dst already holds with the same tokens are kept, not copied.  Both must
 * come from the same model with the same KV type.  0; MODEL_EINVAL (another model or
 * KV type, dst == src, n outside [0, len(src)]); MODEL_ERANGE (n over dst's capacity);
 * MODEL_ENOMEM (dst unchanged). */
int model_seq_copy(model_seq *dst, const model_seq *src, int n);
/* Bytes s has allocated for its cache (K, V and token ids): what keeping it costs. */
size_t model_seq_bytes(const model_seq *s);
/* Bytes one position of K, V and token id takes in sequences created now. */
size_t model_seq_position_bytes(const model *m);

/* Run items[0..n_items) through the model together.  Not reentrant per model:
 * the caller serialises calls on one model.  On error nothing is appended to
 * any sequence. */
int model_forward(model *m, model_batch_item *items, int n_items);

/* Run fn(arg, task, n_tasks) for every task in [0, n_tasks) on the model's
 * threads (the caller's thread included), returning when all are done: for
 * work between forward passes, such as sampling every sequence of a step.
 * Not concurrently with model_forward (they share the threads). */
void model_parallel(model *m, void (*fn)(void *arg, int task, int n_tasks), void *arg, int n_tasks);

/* Convenience for single-sequence use: make s hold exactly ctx[0..n_ctx) (reusing
 * the longest cached common prefix, recomputing the rest) and write the logits
 * of the last position into logits (vocab_size floats). */
int model_seq_eval(model *m, model_seq *s, const int32_t *ctx, int n_ctx, float *logits);

/* ---- Quantizing a GGUF file (model/quantize.c) -------------------------------- */

typedef struct {
    const char *type;                         /* a file type: "Q4_0", "Q8_0", "Q4_K_M", ... (model_quantize_types) */
    int n_threads;                            /* <= 0: number of CPUs */
    int allow_requantize;                     /* quantize tensors that are already quantized (else an error) */
    void (*log)(void *ctx, const char *line); /* one line per tensor and a summary, or NULL */
    void *log_ctx;
} model_quantize_opts;

/* Write the GGUF model at `in` to `out` with its matrices in opts->type, the way
 * llama.cpp's llama-quantize does (same recipes, fall-backs, tensor order and
 * bytes; no importance matrix).  On error returns a negative code and writes one
 * line into err; `out` may then be missing or partial. */
int model_quantize(const char *in, const char *out, const model_quantize_opts *opts, char *err, size_t errlen);
/* The accepted opts->type names, for help texts. */
const char *model_quantize_types(void);

/* Short description of a return code. */
const char *model_strerror(int code);

/* ---- UTF-8 ------------------------------------------------------------------ */

#define MODEL_UTF8_INVALID 0xFFFFFFFFu /* an ill-formed part: stands for one U+FFFD */
#define MODEL_UTF8_PARTIAL 0xFFFFFFFEu /* a well-formed start cut off by the end of the input */

/* The one UTF-8 decoder of lmserve (the rule, Unicode's well-formed UTF-8, is
 * spelled out in model/tokenizers/utf8.c).  Decodes the character at s[0..n):
 * returns the bytes it takes and sets *cp to its code point.  Bytes that are not
 * well-formed UTF-8 -- overlong forms (C0, C1, E0 80..9F, F0 80..8F), surrogates
 * (ED A0..BF), code points above U+10FFFF (F4 90.., F5..FF), stray continuation
 * bytes, sequences that break off -- give the length of the ill-formed part
 * (>= 1: the longest start of a well-formed sequence, or the one bad byte) with
 * *cp = MODEL_UTF8_INVALID; a caller replaces each such part by one U+FFFD.  When
 * the part is a well-formed start that runs to the end of s, *cp is
 * MODEL_UTF8_PARTIAL instead (more bytes may complete it).  0 only when n == 0. */
size_t model_utf8_decode(const char *s, size_t n, uint32_t *cp);

/* ---- Chat templates (model/tokenizers/chat_template.c) ------------------------ *
 * A model's chat template is Jinja source (GGUF tokenizer.chat_template, HF
 * tokenizer_config.json).  model_chat_template_new compiles it with a small Jinja
 * evaluator (the subset chat templates use, rendered as Hugging Face does: trim_blocks
 * and lstrip_blocks on); see the file's header for what is supported and why.
 * Rendering errors come back as:
 *   MODEL_ECHAT_RAISE        the template itself refused the conversation
 *                            (raise_exception("..."): err holds its message)
 *   MODEL_ECHAT_UNSUPPORTED  the template needs a construct this evaluator lacks
 *   MODEL_ECHAT_EVAL         a type error or a limit (output size, loop count) */
enum { MODEL_ECHAT_RAISE = -1001, MODEL_ECHAT_UNSUPPORTED = -1002, MODEL_ECHAT_EVAL = -1003 };

typedef struct model_chat_template model_chat_template;
struct json_t;

typedef struct {
    const struct json_t *messages; /* array of objects: "role", "content" (a string, null, or
                                      an array of parts whose "text" strings are joined), and
                                      any other fields, passed through as they are */
    int add_generation_prompt;
    const char *bos_token; /* "" when the model has none */
    const char *eos_token;
} model_chat_input;

/* Compile source[0..len).  0, or a negative code with one line in err (a syntax error
 * with its line number, or MODEL_ECHAT_UNSUPPORTED naming the construct). */
int model_chat_template_new(model_chat_template **out, const char *source, size_t len, char *err, size_t errlen);
void model_chat_template_free(model_chat_template *t);
/* Render a conversation into *out (malloc'd, NUL-terminated, *len bytes).  Reentrant:
 * one compiled template may render on several threads at once. */
int model_chat_template_render(const model_chat_template *t, const model_chat_input *in, char **out, size_t *len,
                               char *err, size_t errlen);
/* The built-in templates `--chat-template NAME` selects: "chatml", "llama2", "llama3",
 * "zephyr", "gemma", "phi3" -> their Jinja source; NULL for another name. */
const char *model_chat_template_builtin(const char *name);
/* The names of the built-in templates, NULL-terminated. */
extern const char *const model_chat_template_names[];
/* The family a template's source belongs to, recognised by its markers (one of the
 * built-in names), or "custom". */
const char *model_chat_template_family(const char *source);

/* Tokenize text in which the model's control and user-defined tokens may be spelled out
 * (a rendered chat template: "<|im_start|>", "</s>", ...): each such spelling becomes its
 * token, the text between them is tokenized as model_tokenize does (each piece with the
 * vocabulary's space prefix, as llama.cpp and SentencePiece's legacy mode do).  No BOS is
 * added unless add_bos.  Same return convention as model_tokenize. */
int model_tokenize_special(const model *m, const char *text, size_t len, int add_bos, int32_t *out, int cap);

#endif /* LMSERVE_MODEL_H */
