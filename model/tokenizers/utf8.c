/* utf8.c -- the one UTF-8 decoder (model_utf8_decode, model.h), used by the
 * tokenizers, the detokenizer and the server.
 *
 * The rule is the Unicode Standard's definition of well-formed UTF-8 (chapter 3,
 * table 3-7), byte by byte:
 *   00..7F                      one byte
 *   C2..DF 80..BF               two bytes (C0, C1 would only encode ASCII again)
 *   E0 A0..BF 80..BF            three bytes, no overlong form below U+0800
 *   E1..EC, EE..EF 80..BF 80..BF
 *   ED 80..9F 80..BF            no surrogates U+D800..DFFF
 *   F0 90..BF 80..BF 80..BF     four bytes, no overlong form below U+10000
 *   F1..F3 80..BF 80..BF 80..BF
 *   F4 80..8F 80..BF 80..BF     nothing above U+10FFFF
 * Anything else is ill-formed: a stray continuation byte (80..BF), C0, C1,
 * F5..FF, or a lead byte whose sequence breaks off.  An ill-formed part is
 * reported with the length of its "maximal subpart" (the longest start of a
 * well-formed sequence, at least one byte), which a caller replaces by one
 * U+FFFD -- the Standard's recommended practice, and what Python's
 * decode("utf-8", "replace") and browsers do.  A subpart that reaches the end
 * of the input is a well-formed start cut off (MODEL_UTF8_PARTIAL): a streaming
 * caller waits for more bytes before it decides. */
#include "model/model.h"

#include <stddef.h>
#include <stdint.h>

/* Bytes a sequence starting with lead takes (0: lead cannot start one), and the
 * range its second byte must lie in. */
static int utf8_shape(unsigned lead, unsigned *lo, unsigned *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (lead < 0x80) return 1;
    if (lead < 0xC2) return 0;
    if (lead < 0xE0) return 2;
    if (lead < 0xF0) {
        if (lead == 0xE0) *lo = 0xA0;
        if (lead == 0xED) *hi = 0x9F;
        return 3;
    }
    if (lead < 0xF5) {
        if (lead == 0xF0) *lo = 0x90;
        if (lead == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

size_t model_utf8_decode(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) {
        *cp = MODEL_UTF8_INVALID;
        return 0;
    }
    unsigned lo, hi;
    int len = utf8_shape(u[0], &lo, &hi);
    if (len == 0) {
        *cp = MODEL_UTF8_INVALID;
        return 1;
    }
    uint32_t c = len == 1 ? u[0] : u[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((size_t)i == n) { /* a well-formed start, cut off by the end of s */
            *cp = MODEL_UTF8_PARTIAL;
            return n;
        }
        if (u[i] < lo || u[i] > hi) {
            *cp = MODEL_UTF8_INVALID;
            return (size_t)i;
        }
        lo = 0x80; /* only the second byte has a narrower range */
        hi = 0xBF;
        c = c << 6 | (u[i] & 0x3F);
    }
    *cp = c;
    return (size_t)len;
}
