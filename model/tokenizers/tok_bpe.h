/* tok_bpe.h -- byte-level BPE tokenizers: GPT-2 style (TOK_BPE_BYTES) and the
 * "g2c.bpe" tokenizer.json of course artifact folders (TOK_G2C: raw bytes, special
 * tokens, merges numbered by the id they create).
 *
 * Design
 * ------
 * Both kinds work on raw bytes: the vocabulary is indexed by the bytes a token
 * stands for, the text is first cut at special/added tokens (longest match),
 * each remaining segment is pre-split (GPT-2: the GPT-2 regex, hand-written
 * over Unicode letter/number tables, optionally preceded by HF's
 * Digits(individual_digits) split; g2c: no pre-split), and each piece is
 * merged pair by pair, lowest rank first (GPT-2: merge-list order; g2c: the
 * merge's new id), leftmost first among equal ranks -- the order HF's
 * `tokenizers` BPE uses, and the one g2c merge ids encode.  Merging uses a
 * heap, so a piece of n bytes costs O(n log n).
 *
 * Loaders fill a `tokenizer` (model_internal.h): str (the vocabulary string as
 * stored; g2c and raw bytes use GPT-2's byte-to-unicode spelling), bytes (raw
 * bytes), types, byte_id, bos/eos, and impl (the tables used here).
 */
#ifndef LMSERVE_TOK_BPE_H
#define LMSERVE_TOK_BPE_H

#include "model/model_internal.h"

#include <stddef.h>
#include <stdint.h>

/* HF tokenizer.json with a BPE model and a ByteLevel pre-tokenizer (optionally in
 * a Sequence after Digits(individual_digits=true)).  A SentencePiece-converted one
 * (byte_fallback: Llama, TinyLlama) becomes a TOK_SPM tokenizer (model/tokenizers/spm.c)
 * with scores from the merge ranks. */
int tok_bpe_load_hf(tokenizer *t, const char *path, char *err, size_t errlen);
/* OpenAI's encoder.json + vocab.bpe. */
int tok_bpe_load_gpt2_files(tokenizer *t, const char *encoder_json, const char *vocab_bpe, char *err, size_t errlen);
/* A GGUF vocabulary (tokenizer.ggml.model = "gpt2"): tokens as stored, token types
 * (NULL = all normal) and merges "a b".  Control/user-defined tokens are special. */
int tok_bpe_load_lists(tokenizer *t, int n_vocab, const char *const *tokens, const int32_t *types, int n_merges,
                       const char *const *merges, char *err, size_t errlen);
/* A course artifact's tokenizer.json (format "g2c.bpe", version 1 or 2). */
int tok_g2c_load(tokenizer *t, const char *path, char *err, size_t errlen);

/* Encode (TOK_BPE_BYTES or TOK_G2C), same contract as tokenizer_encode. */
int tok_bpe_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap);

/* Keep only ids < n (a model whose embedding is smaller than the tokenizer's
 * added tokens, e.g. a saver-added [PAD]); returns 0 or MODEL_EFORMAT if a
 * normal (non-added) token would be cut. */
int tok_bpe_trim(tokenizer *t, int n);

/* Release everything the loaders above put into t (arrays and impl), then zero it. */
void tok_bpe_clear(tokenizer *t);

#endif /* LMSERVE_TOK_BPE_H */
