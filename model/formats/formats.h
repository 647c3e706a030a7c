/* formats.h -- the GPT-2 architecture and the folder formats (course artifacts,
 * Hugging Face), beside the llama engine.  Internal to model/.
 *
 * Design
 * ------
 * Readers here turn other people's files into the same `struct model` the GGUF
 * and llama2.c readers fill (model_internal.h), so the forward pass, sequences
 * and tokenizer entry points stay shared:
 *   - model_load_course: a course artifact folder (model.pt via torchzip.c,
 *     config.json, manifest.json -> ../../tokenizers/<name>/tokenizer.json,
 *     g2c BPE).  Its W are stored (in, out): copied transposed to (out, in).
 *   - model_load_hf: config.json + safetensors (+ index) + tokenizer.json for
 *     LlamaForCausalLM (rope_neox = 1: HF rotates halves) and GPT2LMHeadModel
 *     (Conv1D weights (in, out): copied transposed).
 *   - gguf_load_gpt2: GGUF general.architecture = "gpt2" (llama.cpp tensor names).
 * forward_gpt2 is the GPT-2 compute step called from model_forward: learned
 * positions, pre-norm LayerNorm with bias, biased MHA, GELU (erf, or tanh when
 * m->gelu_tanh), biased FFN, final LayerNorm; forward_logits adds the bias. */
#ifndef LMSERVE_MODEL_FORMATS_H
#define LMSERVE_MODEL_FORMATS_H

#include "model/compute/forward.h"
#include "model/formats/gguf.h"
#include "model/model_internal.h"

int model_load_course(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen);
int model_load_hf(model *m, const char *dir, const model_load_opts *opts, char *err, size_t errlen);
int gguf_load_gpt2(model *m, const gguf_file *g, const model_load_opts *opts, char *err, size_t errlen);
/* A GGUF gpt2 BPE vocabulary (tokens, token_type, merges); n_vocab > 0 must match. */
int gguf_load_bpe_tokenizer(tokenizer *t, const gguf_file *g, int n_vocab, char *err, size_t errlen);
/* Folder probes for model.c's dispatch. */
int probe_course_dir(const char *dir);
int probe_hf_dir(const char *dir);

/* GPT-2 forward step (see forward.h for the row legend); leaves the final
 * LayerNorm output in sc->xb. */
void forward_gpt2(model *m, fwd_scratch *sc, const fwd_batch *b);

/* LayerNorm of one row: out = (x - mean) / sqrt(var + eps) * w + bias, population variance. */
void forward_layernorm(float *out, const float *x, const float *w, const float *bias, int n, float eps);

/* Check a GPT-2 model's hyper-parameters (no RoPE constraints). */
int gpt2_check_hparams(const model *m, const char *path, char *err, size_t errlen);

/* ---- Helpers shared by these readers (fmt_util.c) ---- */

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
