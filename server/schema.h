/* schema.h -- response formats as grammars: a JSON Schema, "any JSON object", or a
 * list of choices, compiled to GBNF text and then to the sampler's automaton.
 * Server-internal (needs jansson; the sampler does not).  See schema.c for the
 * supported subset of JSON Schema. */
#ifndef LMSERVE_SCHEMA_H
#define LMSERVE_SCHEMA_H

#include "sampler/sampler.h"

#include <jansson.h>
#include <stddef.h>

enum { SCHEMA_OK = 0, SCHEMA_EINVAL = -22, SCHEMA_ENOMEM = -12 };

typedef struct {
    char path[256];    /* where, inside the schema: "properties.age.format", "anyOf[1]",
                           "" for the schema itself */
    char message[256]; /* what is wrong or unsupported */
} schema_error;

/* GBNF text whose strings are exactly the (whitespace-limited, see schema.c) JSON
 * texts of values valid against schema.  SCHEMA_OK and *gbnf (malloc'd,
 * NUL-terminated, length in *len if len is not NULL), SCHEMA_EINVAL with *err
 * (anything outside the subset is an error naming the keyword, never skipped), or
 * SCHEMA_ENOMEM. */
int schema_to_gbnf(json_t *schema, char **gbnf, size_t *len, schema_error *err);

/* schema_to_gbnf, then sampler_grammar_parse.  A grammar the schema implies but
 * that cannot be run (a $ref cycle with no finite instance, a size limit) is an
 * error at the path of the part of the schema that caused it. */
int schema_compile(json_t *schema, sampler_grammar **out, schema_error *err);

/* Any JSON object (response_format "json_object"). */
extern const char schema_json_object_gbnf[];
int schema_compile_json_object(sampler_grammar **out);

/* Exactly one of the strings s[0..n) (raw text, not JSON-quoted); n >= 1.  As GBNF
 * text (malloc'd, length in *glen), or compiled. */
int schema_choice_to_gbnf(const char *const *s, const size_t *len, int n, char **gbnf, size_t *glen);
int schema_compile_choice(const char *const *s, const size_t *len, int n, sampler_grammar **out, schema_error *err);

#endif /* LMSERVE_SCHEMA_H */
