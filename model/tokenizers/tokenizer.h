/* tokenizer.h -- building a `tokenizer` (model_internal.h), and the
 * SentencePiece-style encoder.  Internal to model/.
 *
 * A reader calls tokenizer_alloc, then tokenizer_set_token for every id, fills
 * scores/types/bos/eos/unk/add_bos/add_space_prefix, and finally
 * tokenizer_finish, which checks the ids and builds the SentencePiece-style
 * lookup tables (spm.c).  Byte-level BPE vocabularies are built by tok_bpe.h's
 * loaders instead.  All memory belongs to the tokenizer and is released by
 * tokenizer_free. */
#ifndef LMSERVE_MODEL_TOKENIZER_H
#define LMSERVE_MODEL_TOKENIZER_H

#include "model/model_internal.h"

#include <stddef.h>
#include <stdint.h>

#define TOKENIZER_MAX_TOKEN_LEN 4096

/* ---- The vocabulary (vocab.c) ---- */

int tokenizer_alloc(tokenizer *t, int n_vocab); /* zeroed arrays for n_vocab tokens; types TT_NORMAL */
int tokenizer_set_token(tokenizer *t, int id, const char *s, int len); /* copies s[0..len) */
void tokenizer_guess_types(tokenizer *t); /* <unk>, <s>, </s> (also llama2.c's "\n<s>\n"), <0xNN> */
/* "<0xNN>" (len 6) -> NN, else -1. */
int tokenizer_byte_token(const char *s, int len);
/* Release everything in t (arrays and impl) and zero the counts; t may be empty. */
void tokenizer_free(tokenizer *t);

/* Control, unknown and unused tokens: never produced from text, decoded as "". */
static inline int tokenizer_type_is_special(int type)
{
    return type == TT_CONTROL || type == TT_UNKNOWN || type == TT_UNUSED;
}

/* ---- SentencePiece-style BPE (spm.c) ---- */

/* Check the ids, decode every token's bytes, build the lookup table (TOK_SPM).
 * Writes a reason into err (without a path) on failure. */
int tokenizer_finish(tokenizer *t, char *err, size_t errlen);
int spm_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap);

/* ---- Any kind (tokenizer.c) ---- */

/* Encode text[0..len) with t, BOS first if add_bos and t has one: model_tokenize's
 * contract (the count may exceed cap; a negative code on error). */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos, int32_t *out, int cap);

#endif /* LMSERVE_MODEL_TOKENIZER_H */
