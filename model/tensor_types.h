/* tensor_types.h -- the element types a weight matrix may have, numbered as GGML
 * numbers them (the type field of a GGUF tensor info, so the numbers are part of
 * the file format).  Self-contained: model_internal.h, the GGUF reader and writer
 * (and through them train/) share this one list. */
#ifndef LMSERVE_MODEL_TENSOR_TYPES_H
#define LMSERVE_MODEL_TENSOR_TYPES_H

enum {
    MT_F32 = 0,
    MT_F16 = 1,
    MT_Q4_0 = 2, /* the block-quantized types: layouts and kernels in model/compute/quant.h */
    MT_Q4_1 = 3,
    MT_Q5_0 = 6,
    MT_Q5_1 = 7,
    MT_Q8_0 = 8,
    MT_Q2_K = 10,
    MT_Q3_K = 11,
    MT_Q4_K = 12,
    MT_Q5_K = 13,
    MT_Q6_K = 14,
    MT_BF16 = 30,
};

#define Q8_0_BLOCK 32 /* Q8_0: blocks of 32 int8 with one f16 scale: 34 bytes */

#endif /* LMSERVE_MODEL_TENSOR_TYPES_H */
