/* test_utf8.c -- model_utf8_decode (model/tokenizers/utf8.c), the one UTF-8 decoder.
 *
 * Valid sequences are checked exhaustively (every 1-, 2- and 3-byte sequence, and
 * every 4-byte one over a set of final bytes) against a second formulation of the
 * rule, by code-point value instead of byte ranges.  Ill-formed input is checked
 * case by case: the length of each ill-formed part, and the replaced text against
 * what Python's bytes.decode("utf-8", "replace") gives for the same bytes (the
 * expected strings below were produced with CPython 3.11). */
#include <criterion/criterion.h>

#include "model/model.h"

#include <stdint.h>
#include <string.h>

/* Reference: lead-length by the top bits, value from the payload bits, then
 * well-formed iff the continuation bytes are 10xxxxxx and the value is the
 * shortest form, not a surrogate and at most U+10FFFF. */
static int ref_valid(const unsigned char *s, size_t n, uint32_t *cp)
{
    int len = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (!len || (size_t)len != n) return 0;
    uint32_t v = len == 1 ? s[0] : s[0] & (0xFF >> (len + 1));
    for (int i = 1; i < len; i++) {
        if ((s[i] >> 6) != 2) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (v < min[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return 1;
}

static void check_seq(const unsigned char *s, size_t n)
{
    uint32_t want = 0, got;
    int valid = ref_valid(s, n, &want);
    size_t len = model_utf8_decode((const char *)s, n, &got);
    if (valid) {
        cr_assert_eq(len, n, "%02x %02x %02x %02x: length", s[0], s[1], s[2], s[3]);
        cr_assert_eq(got, want, "%02x %02x %02x %02x: code point", s[0], s[1], s[2], s[3]);
    } else {
        /* not one whole character: then never a code point for all n bytes */
        cr_assert(got > 0x10FFFF || len < n, "%02x %02x %02x %02x (n %zu) accepted as U+%04X", s[0], s[1], s[2], s[3],
                  n, got);
        cr_assert(len >= 1 && len <= n);
    }
}

Test(utf8, every_short_sequence_agrees_with_the_value_rule)
{
    unsigned char s[4] = { 0 };
    for (uint32_t a = 0; a < 256; a++) {
        s[0] = (unsigned char)a;
        check_seq(s, 1);
        for (uint32_t b = 0; b < 256; b++) {
            s[1] = (unsigned char)b;
            check_seq(s, 2);
            for (uint32_t c = 0; c < 256; c++) {
                s[2] = (unsigned char)c;
                check_seq(s, 3);
            }
        }
    }
}

Test(utf8, four_byte_sequences_agree_with_the_value_rule)
{
    static const unsigned char last[] = { 0x00, 0x41, 0x7F, 0x80, 0x9F, 0xBF, 0xC0, 0xFF };
    unsigned char s[4];
    for (uint32_t a = 0xF0; a < 0x100; a++)
        for (uint32_t b = 0; b < 256; b++)
            for (uint32_t c = 0; c < 256; c++)
                for (size_t d = 0; d < sizeof last; d++) {
                    s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = (unsigned char)c, s[3] = last[d];
                    check_seq(s, 4);
                }
}

Test(utf8, boundaries)
{
    static const struct {
        const char *s;
        uint32_t cp;
    } ok[] = {
        { "\x7F", 0x7F },
        { "\xC2\x80", 0x80 },
        { "\xDF\xBF", 0x7FF },
        { "\xE0\xA0\x80", 0x800 },
        { "\xED\x9F\xBF", 0xD7FF },
        { "\xEE\x80\x80", 0xE000 },
        { "\xEF\xBF\xBF", 0xFFFF },
        { "\xF0\x90\x80\x80", 0x10000 },
        { "\xF4\x8F\xBF\xBF", 0x10FFFF },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint32_t cp;
        size_t n = strlen(ok[i].s);
        cr_assert_eq(model_utf8_decode(ok[i].s, n, &cp), n, "case %zu", i);
        cr_assert_eq(cp, ok[i].cp, "case %zu", i);
    }
    uint32_t cp = 1;
    cr_assert_eq(model_utf8_decode("", 0, &cp), 0, "nothing to decode");
    cr_assert_eq(model_utf8_decode("\0", 1, &cp), 1);
    cr_assert_eq(cp, 0, "NUL is a character");
}

/* The length and kind of the first part of s. */
static void expect_part(const char *s, size_t n, size_t len, uint32_t kind)
{
    uint32_t cp;
    size_t got = model_utf8_decode(s, n, &cp);
    cr_assert_eq(got, len, "length of the first part of %zu bytes", n);
    cr_assert_eq(cp, kind, "kind: got %08x", cp);
}

Test(utf8, ill_formed_parts_take_their_maximal_subpart)
{
    const uint32_t BAD = MODEL_UTF8_INVALID, CUT = MODEL_UTF8_PARTIAL;
    expect_part("\x80", 1, 1, BAD); /* stray continuation byte */
    expect_part("\xBF\x80", 2, 1, BAD);
    expect_part("\xC0\xAF", 2, 1, BAD); /* overlong '/' (C0, C1 never lead) */
    expect_part("\xC1\xBF", 2, 1, BAD);
    expect_part("\xE0\x80\xAF", 3, 1, BAD); /* overlong three-byte form */
    expect_part("\xE0\x9F\xBF", 3, 1, BAD);
    expect_part("\xF0\x8F\xBF\xBF", 4, 1, BAD); /* overlong four-byte form */
    expect_part("\xED\xA0\x80", 3, 1, BAD);     /* surrogate U+D800 */
    expect_part("\xED\xBF\xBF", 3, 1, BAD);     /* surrogate U+DFFF */
    expect_part("\xF4\x90\x80\x80", 4, 1, BAD); /* U+110000 */
    expect_part("\xF5\x80\x80\x80", 4, 1, BAD); /* F5..FF never lead */
    expect_part("\xFF", 1, 1, BAD);
    expect_part("\xE2\x82\x41", 3, 2, BAD); /* broken off by 'A': both bytes, one part */
    expect_part("\xF0\x9F\x98\x41", 4, 3, BAD);
    expect_part("\xC3\xC3\xA9", 3, 1, BAD); /* a lead where a continuation belongs */
    /* a well-formed start that reaches the end is cut off, not wrong */
    expect_part("\xC3", 1, 1, CUT);
    expect_part("\xE2\x82", 2, 2, CUT);
    expect_part("\xF0\x9F\x98", 3, 3, CUT);
    expect_part("\xED", 1, 1, CUT);
    expect_part("\xED\xA0", 2, 1, BAD); /* ...unless the second byte already rules it out */
    expect_part("\xF4\x90", 2, 1, BAD);
}

/* s with every ill-formed part replaced by U+FFFD, as json_bytes and the detokenizer do. */
static size_t replace_all(const char *s, size_t n, char *out)
{
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = model_utf8_decode(s + i, n - i, &cp);
        if (cp > 0x10FFFF) {
            memcpy(out + w, "\xEF\xBF\xBD", 3);
            w += 3;
        } else {
            memcpy(out + w, s + i, len);
            w += len;
        }
        i += len;
    }
    return w;
}

Test(utf8, replacement_equals_python_decode_replace)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        { "\xE2\x82\x41", "\xEF\xBF\xBD"
                          "A" },
        { "\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
        { "\xF0\x9F\x98", "\xEF\xBF\xBD" },
        { "\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD" },
        { "\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
        { "\xE0\x80\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
        { "a\x80"
          "b",
          "a\xEF\xBF\xBD"
          "b" },
        { "\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80" },
        { "\xEF\xBF\xBF", "\xEF\xBF\xBF" },
        { "\xF5\x80", "\xEF\xBF\xBD\xEF\xBF\xBD" },
        { "\xF0\x90\x80"
          "A\xC3",
          "\xEF\xBF\xBD"
          "A\xEF\xBF\xBD" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[64];
        size_t n = replace_all(cases[i].in, strlen(cases[i].in), out);
        cr_assert_eq(n, strlen(cases[i].want), "case %zu: %zu bytes", i, n);
        cr_assert_arr_eq(out, cases[i].want, n, "case %zu", i);
    }
}
