/* constraint.h -- the request fields that constrain what a completion may say
 * (response_format, grammar, choice), read into a shared constraint cache; and the
 * server's table of caches by grammar, so requests repeating a schema share its
 * automaton and masks.  Server-internal; see constraint.c. */
#ifndef LMSERVE_CONSTRAINT_H
#define LMSERVE_CONSTRAINT_H

#include "sampler/sampler.h"

#include <jansson.h>
#include <stddef.h>

/* ---- The model's vocabulary ---------------------------------------------------------- */

struct model;
/* The tokens of m as a constraint sees them: each token's bytes as the detokenizer
 * writes them (control tokens never appear), and the tokens that end a text (EOS, and
 * BOS for the models whose texts end there).  SAMPLER_OK or SAMPLER_ENOMEM. */
int constraint_vocab_from_model(const struct model *m, sampler_vocab **out);

/* ---- The table of compiled grammars ---------------------------------------------- */

typedef struct constraint_table constraint_table;

/* A table holding up to `capacity` grammars (least recently used first out) for
 * the vocabulary v (borrowed; it must outlive the table and every cache handed
 * out).  NULL if out of memory. */
constraint_table *constraint_table_new(const sampler_vocab *v, int capacity);
void constraint_table_free(constraint_table *t);
const sampler_vocab *constraint_table_vocab(const constraint_table *t);

/* The cache for GBNF text gbnf[0..len): a new reference (free it with
 * sampler_constraint_cache_free), compiled on first use.  SAMPLER_OK,
 * SAMPLER_EINVAL with *err (a grammar error), or SAMPLER_ENOMEM. */
int constraint_table_get(constraint_table *t, const char *gbnf, size_t len, sampler_constraint_cache **out,
                         sampler_grammar_error *err);

/* ---- The request fields --------------------------------------------------------- */

typedef struct {
    int status;       /* 400, or 503 when out of memory */
    const char *code; /* "invalid_value", "invalid_type" or "out_of_memory" */
    char param[320];  /* e.g. "response_format.json_schema.schema.properties.age.format" */
    char message[256];
} constraint_error;

/* Read response_format, grammar and choice from a request body.  0 with *out a
 * cache reference (or NULL when the request has no constraint), or -1 with *err.
 * At most one of the three may constrain a request; response_format "text" is none.
 * The vocabulary must have a one-byte token for every byte the grammar can need
 * (true of every byte-fallback and byte-level vocabulary), so a constrained text
 * can never get stuck. */
int constraint_from_request(constraint_table *t, json_t *root, sampler_constraint_cache **out, constraint_error *err);

/* The GBNF text the constraint fields of a request stand for: 0 with *gbnf (malloc'd,
 * NUL-terminated; NULL when the request has none) and *field ("response_format",
 * "grammar" or "choice"), or -1 with *err.  Nothing is compiled. */
int constraint_gbnf(json_t *root, char **gbnf, size_t *len, const char **field, constraint_error *err);
/* constraint_gbnf, then compiled, with the errors constraint_from_request gives
 * (no vocabulary check): 0 with *g and *gbnf (both NULL without a constraint), or -1. */
int constraint_compile(json_t *root, sampler_grammar **g, char **gbnf, size_t *len, constraint_error *err);

#endif /* LMSERVE_CONSTRAINT_H */
