/* tokenizer.h -- building a `tokenizer` (model_internal.h) from a loader.
 * Internal to model/.
 *
 * A loader calls tokenizer_alloc, then tokenizer_set_token for every id, fills
 * scores/types/bos/eos/unk/add_bos/add_space_prefix, and finally
 * tokenizer_finish, which checks the ids and builds the lookup tables.  All
 * memory belongs to the tokenizer and is released by tokenizer_free. */
#ifndef LMSERVE_MODEL_TOKENIZER_H
#define LMSERVE_MODEL_TOKENIZER_H

#include "model/model_internal.h"

int tokenizer_alloc(tokenizer *t, int n_vocab);  /* zeroed arrays for n_vocab tokens; types TT_NORMAL */
int tokenizer_set_token(tokenizer *t, int id, const char *s, int len); /* copies s[0..len) */
void tokenizer_guess_types(tokenizer *t);        /* <unk>, <s>, </s> (also llama2.c's "\n<s>\n"), <0xNN> */

#define TOKENIZER_MAX_TOKEN_LEN 4096

#endif
