/* formats.h -- the model readers' entry points and the helpers they share.
 * Internal to model/.
 *
 * Design
 * ------
 * Each reader turns one kind of file or folder into the same `struct model`
 * (model_internal.h), so the tokenizers, sequences and forward pass are shared;
 * model.c's model_load picks the reader by probing the content:
 *   - model_load_gguf (load_gguf.c): GGUF with general.architecture "llama",
 *     or "gpt2" through gguf_load_gpt2 (gguf_gpt2.c, llama.cpp tensor names);
 *   - model_load_llama2c (llama2c.c): llama2.c checkpoints + tokenizer.bin;
 *   - model_load_course (load_course.c): a course artifact folder, the layout
 *     README's "Bring your own model" names (a GPT-2-style model.pt read by
 *     torchzip.c, config.json, manifest.json -> ../../tokenizers/<name>/
 *     tokenizer.json in the "g2c.bpe" format).  Its W are stored (in, out):
 *     copied transposed;
 *   - model_load_hf (load_hf.c): config.json + safetensors (+ index) +
 *     tokenizer.json for LlamaForCausalLM (rope_neox = 1: HF rotates halves)
 *     and GPT2LMHeadModel (Conv1D weights (in, out): copied transposed).
 * Every reader checks the hyper-parameters (hparams.c) before it sizes
 * anything from them, and fills the weight statistics last. */
#ifndef LMSERVE_MODEL_FORMATS_H
#define LMSERVE_MODEL_FORMATS_H

#include "model/formats/gguf.h"
#include "model/model_internal.h"

/* Readers, one per format; each fills *m (already zeroed, path set) or writes err. */
int model_load_gguf(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen);
int model_load_llama2c(model *m, const char *path, const model_load_opts *opts, char *err, size_t errlen);
int model_load_course(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen);
int model_load_hf(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen);
int gguf_load_gpt2(model *m, const gguf_file *g, const model_load_opts *opts, char *err, size_t errlen);
/* A GGUF gpt2 BPE vocabulary (tokens, token_type, merges); n_vocab > 0 must match. */
int gguf_load_bpe_tokenizer(tokenizer *t, const gguf_file *g, int n_vocab, char *err, size_t errlen);
/* llama2.c's tokenizer.bin with vocab_size tokens (llama2c.c). */
int tokenizer_load_llama2c(tokenizer *t, const char *path, int vocab_size, char *err, size_t errlen);
/* Folder probes for model.c's dispatch. */
int probe_course_dir(const char *dir);
int probe_hf_dir(const char *dir);

/* ---- Hyper-parameters and statistics (hparams.c) ---- */

/* Check the hyper-parameters in m->info for consistency (all positive, divisible,
 * within sane limits).  Writes err on failure. */
int model_check_hparams(const model *m, const char *path, char *err, size_t errlen);
/* The same for a GPT-2 model (no RoPE constraints; as many kv heads as heads). */
int gpt2_check_hparams(const model *m, const char *path, char *err, size_t errlen);
/* Pick the dominant matrix type of m's layers/embeddings and fill info.weight_type,
 * n_params and weight_bytes from the tensors in m (counting a tied output once). */
void model_fill_weight_stats(model *m);

/* ---- Helpers shared by the folder readers (fmt_util.c) ---- */

/* A heap F32 copy of src (n elements of MT_F32/F16/BF16, any alignment), owned by m. */
float *fmt_f32_copy(model *m, const void *src, int type, size_t n);
/* A heap F32 (rows_out, cols_out) matrix from src stored (cols_out, rows_out), i.e. the
 * transpose of an (in, out) matrix; owned by m. */
float *fmt_f32_transpose(model *m, const float *src, int in, int out);
/* An F32 view of n floats: src itself when F32 and 4-byte aligned, else a heap copy. */
const float *fmt_f32_view(model *m, const void *src, int type, size_t n);
/* Read "dir/name" as a JSON object (caller json_decref's); NULL + err if missing/bad. */
struct json_t;
struct json_t *fmt_json_load(const char *dir, const char *name, int required, char *err, size_t errlen);
/* Integer member (or first element of an integer list); dflt if absent or null; -2^62 if
 * present but not an integer. */
long long fmt_json_int(const struct json_t *o, const char *key, long long dflt);
double fmt_json_num(const struct json_t *o, const char *key, double dflt);
/* Make t hold exactly n tokens: cut added tokens past n, or add unused placeholders. */
int fmt_tok_fit(tokenizer *t, int n, const char *path, char *err, size_t errlen);

#endif /* LMSERVE_MODEL_FORMATS_H */
