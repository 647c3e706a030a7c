/* tensor_types.h -- the element types a weight matrix may have, numbered as GGML
 * numbers them (the type field of a GGUF tensor info, so the numbers are part of
 * the file format).  Self-contained: model_internal.h, the GGUF reader and writer
 * (and through them train/) share this one list. */
#ifndef LMSERVE_MODEL_TENSOR_TYPES_H
#define LMSERVE_MODEL_TENSOR_TYPES_H

enum {
    MT_F32 = 0,
    MT_F16 = 1,
    MT_Q8_0 = 8,
    MT_BF16 = 30,
};

#define Q8_0_BLOCK 32 /* Q8_0: blocks of 32 int8 with one f16 scale: 34 bytes */

#endif /* LMSERVE_MODEL_TENSOR_TYPES_H */
