/* test_bpe.c -- byte-level BPE (GPT-2, SmolLM) and the course g2c BPE.
 *
 * GPT-2: the 46 strings of fixtures/gguf/ggml-vocab-gpt-2.gguf.inp must give exactly
 * the ids Hugging Face's tokenizer wrote into the .out file, from both spellings of
 * the vocabulary (OpenAI encoder.json + vocab.bpe; HF tokenizer.json).
 * g2c: the fast encoder must agree with a deliberately slow reference written here. */
#include <criterion/criterion.h>

#include "model/formats/formats.h"
#include "model/tokenizers/tok_bpe.h"
#include "tests/model/fmt_util.h"

/* ---- The .inp / .out cases ---- */

typedef struct {
    char *text[64];
    size_t len[64];
    int32_t ids[64][512];
    int n_ids[64];
    int n;
} cases;

static void load_cases(cases *c)
{
    char p[512];
    size_t len = 0, olen = 0;
    char *in = (char *)fx_read(fx_path(p, sizeof p, "gguf/ggml-vocab-gpt-2.gguf.inp"), &len);
    char *out = (char *)fx_read(fx_path(p, sizeof p, "gguf/ggml-vocab-gpt-2.gguf.out"), &olen);
    cr_assert(in && out);
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t sl = strlen(sep), at = 0;
    c->n = 0;
    while (at < len) {
        char *e = memmem(in + at, len - at, sep, sl);
        cr_assert_not_null(e);
        c->len[c->n] = (size_t)(e - (in + at));
        c->text[c->n] = malloc(c->len[c->n] + 1);
        memcpy(c->text[c->n], in + at, c->len[c->n]);
        c->text[c->n][c->len[c->n]] = 0;
        c->n++;
        at = (size_t)(e - in) + sl;
    }
    /* .out: one line per case, ids separated by spaces. */
    char *line = out;
    for (int i = 0; i < c->n; i++) {
        char *nl = memchr(line, '\n', olen - (size_t)(line - out));
        cr_assert_not_null(nl, "out has fewer lines than cases");
        *nl = 0;
        c->n_ids[i] = 0;
        for (char *q = line; *q;) {
            char *end;
            long v = strtol(q, &end, 10);
            if (end == q || c->n_ids[i] == 512) break;
            c->ids[i][c->n_ids[i]++] = (int32_t)v;
            q = end;
        }
        line = nl + 1;
    }
    free(in);
    free(out);
}

static void free_cases(cases *c)
{
    for (int i = 0; i < c->n; i++) free(c->text[i]);
}

static void check_cases(const tokenizer *t)
{
    cases c;
    load_cases(&c);
    cr_assert_eq(c.n, 46);
    for (int i = 0; i < c.n; i++) {
        int32_t got[256];
        int n = tok_bpe_encode(t, c.text[i], c.len[i], 0, got, 256);
        cr_assert_eq(n, c.n_ids[i], "case %d ('%s'): %d ids, expected %d", i, c.text[i], n, c.n_ids[i]);
        for (int k = 0; k < n; k++)
            cr_assert_eq(got[k], c.ids[i][k], "case %d ('%s') id %d: %d, expected %d", i, c.text[i], k, got[k],
                         c.ids[i][k]);
        /* Byte round trip. */
        char buf[4096];
        size_t bl = 0;
        for (int k = 0; k < n; k++) {
            memcpy(buf + bl, t->bytes[got[k]], (size_t)t->bytes_len[got[k]]);
            bl += (size_t)t->bytes_len[got[k]];
        }
        cr_assert_eq(bl, c.len[i]);
        cr_assert(memcmp(buf, c.text[i], bl) == 0, "case %d does not round-trip", i);
    }
    free_cases(&c);
}

Test(bpe, gpt2_encoder_json_reproduces_hf_ids)
{
    char e[512], v[512], err[256] = "";
    tokenizer t;
    cr_assert_eq(tok_bpe_load_gpt2_files(&t, fx_path(e, sizeof e, "tokenizers/gpt2/encoder.json"),
                                         fx_path(v, sizeof v, "tokenizers/gpt2/vocab.bpe"), err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(t.n_vocab, 50257);
    cr_assert_eq(t.kind, TOK_BPE_BYTES);
    cr_assert_eq(t.eos_id, 50256);
    cr_assert_eq(t.byte_id[' '], 220); /* "Ġ" */
    cr_assert_str_eq(t.str[220], "\xc4\xa0");
    cr_assert_eq(t.bytes_len[220], 1);
    check_cases(&t);
    /* The special token is split out of text. */
    int32_t ids[8];
    int n = tok_bpe_encode(&t, "a<|endoftext|>b", 15, 0, ids, 8);
    cr_assert_eq(n, 3);
    cr_assert_eq(ids[1], 50256);
    /* Merges whose first symbol starts with '#' are merges, not comments. */
    n = tok_bpe_encode(&t, "@#$", 3, 0, ids, 8);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[1], 29953); /* "#$" (vocab.bpe line 29699 ranks before "@ #") */
    /* Capacity overflow reports the full count. */
    n = tok_bpe_encode(&t, "Hello world, again and again", 28, 0, ids, 2);
    cr_assert_eq(n, 6);
    tok_bpe_clear(&t);
}

Test(bpe, gguf_gpt2_vocabulary_reproduces_hf_ids)
{
    char p[512], err[256] = "";
    gguf_file g;
    cr_assert_eq(gguf_open(&g, NULL, fx_path(p, sizeof p, "gguf/ggml-vocab-gpt-2.gguf"), err, sizeof err), 0, "%s",
                 err);
    tokenizer t;
    cr_assert_eq(gguf_load_bpe_tokenizer(&t, &g, 0, err, sizeof err), 0, "%s", err);
    gguf_close(&g);
    cr_assert_eq(t.n_vocab, 50257);
    cr_assert_eq(t.bos_id, 50256);
    cr_assert_eq(t.eos_id, 50256);
    cr_assert_eq(t.types[50256], TT_CONTROL);
    cr_assert_eq(t.add_bos, 0);
    check_cases(&t);
    tok_bpe_clear(&t);
}

Test(bpe, gpt2_tokenizer_json_pair_merges)
{
    char p[512], err[256] = "";
    tokenizer t;
    cr_assert_eq(tok_bpe_load_hf(&t, fx_path(p, sizeof p, "hf/tiny-gpt2/tokenizer.json"), err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(t.n_vocab, 50257);
    cr_assert_eq(t.add_bos, 0); /* ByteLevel post-processor adds nothing */
    cr_assert_eq(t.types[50256], TT_CONTROL);
    check_cases(&t);
    tok_bpe_clear(&t);
}

Test(bpe, smollm_splits_digits_and_adds_no_bos)
{
    char p[512], err[256] = "";
    tokenizer t;
    cr_assert_eq(
        tok_bpe_load_hf(&t, fx_path(p, sizeof p, "tokenizers/smollm-135m-derived/tokenizer.json"), err, sizeof err), 0,
        "%s", err);
    cr_assert_eq(t.n_vocab, 49153); /* 49152 + the saver's [PAD] */
    cr_assert_eq(t.add_bos, 0);
    cr_assert_eq(t.bos_id, -1);
    cr_assert_eq(t.eos_id, 0);
    int32_t ids[64];
    int n = tok_bpe_encode(&t, "12345", 5, 1, ids, 64);
    cr_assert_eq(n, 5);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(t.bytes_len[ids[i]], 1);
        cr_assert_eq(t.bytes[ids[i]][0], '1' + i);
    }
    /* " 2024" -> " " then one token per digit. */
    n = tok_bpe_encode(&t, "year 2024", 9, 0, ids, 64);
    cr_assert_eq(n, 6, "got %d", n);
    cr_assert_eq(t.bytes_len[ids[1]], 1);
    cr_assert_eq(t.bytes[ids[1]][0], ' ');
    cr_assert_eq(t.bytes[ids[5]][0], '4');
    /* Specials from added_tokens are split out; [PAD] goes once trimmed to the model vocab. */
    n = tok_bpe_encode(&t, "<|im_start|>hi[PAD]", 19, 0, ids, 64);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[n - 1], 49152);
    cr_assert_eq(tok_bpe_trim(&t, 49152), 0);
    cr_assert_eq(t.n_vocab, 49152);
    n = tok_bpe_encode(&t, "<|im_start|>hi[PAD]", 19, 0, ids, 64);
    cr_assert_eq(ids[0], 1);
    for (int i = 0; i < n; i++) cr_assert_lt(ids[i], 49152);
    tok_bpe_clear(&t);
}

Test(bpe, utf8_split_across_tokens_round_trips)
{
    char e[512], v[512], err[256] = "";
    tokenizer t;
    cr_assert_eq(tok_bpe_load_gpt2_files(&t, fx_path(e, sizeof e, "tokenizers/gpt2/encoder.json"),
                                         fx_path(v, sizeof v, "tokenizers/gpt2/vocab.bpe"), err, sizeof err),
                 0);
    const char *s = "\xf0\x9f\xa6\x99 emoji \xe7\x95\xb0\xe4\xbd\x93\xe5\xad\x97 \xff\xfe invalid";
    int32_t ids[64];
    int n = tok_bpe_encode(&t, s, strlen(s), 0, ids, 64);
    cr_assert_gt(n, 0);
    int split = 0; /* some token holds part of a character */
    char buf[256];
    size_t bl = 0;
    for (int i = 0; i < n; i++) {
        const unsigned char *b = (const unsigned char *)t.bytes[ids[i]];
        if ((b[0] & 0xC0) == 0x80) split = 1;
        memcpy(buf + bl, b, (size_t)t.bytes_len[ids[i]]);
        bl += (size_t)t.bytes_len[ids[i]];
    }
    cr_assert(split);
    cr_assert_eq(bl, strlen(s));
    cr_assert(memcmp(buf, s, bl) == 0);
    tok_bpe_clear(&t);
}

Test(bpe, hostile_tokenizer_json_rejected)
{
    char dir[128], p[256], err[256];
    cr_assert_not_null(fx_tmpdir(dir, sizeof dir));
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    struct {
        const char *json, *needle;
    } bad[] = {
        { "{\"model\":{\"type\":\"Unigram\"}}", "not a BPE model" },
        { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"],\"byte_fallback\":true},"
          "\"pre_tokenizer\":null}",
          "merges[0] makes a string that is not in the vocab" },
        { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"byte_fallback\":true},"
          "\"normalizer\":{\"type\":\"NFKC\"}}",
          "normalizer 'NFKC'" },
        { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":"
          "{\"type\":\"Whitespace\"}}",
          "pre_tokenizer 'Whitespace'" },
        { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4},\"merges\":[]},\"pre_tokenizer\":"
          "{\"type\":\"ByteLevel\"}}",
          "bad id" },
        { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]},\"pre_tokenizer\":"
          "{\"type\":\"ByteLevel\"}}",
          "merges[0]" },
        { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]},\"pre_tokenizer\":"
          "{\"type\":\"ByteLevel\"}}",
          "appears twice" },
        { "{\"model\":", "line" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(fx_write(p, bad[i].json, strlen(bad[i].json)), 0);
        tokenizer t;
        err[0] = 0;
        int rc = tok_bpe_load_hf(&t, p, err, sizeof err);
        cr_assert_eq(rc, MODEL_EFORMAT, "case %zu accepted", i);
        cr_assert_not_null(strstr(err, bad[i].needle), "case %zu: '%s' lacks '%s'", i, err, bad[i].needle);
        cr_assert_null(t.impl);
    }
    fx_rmtree(dir);
}

/* ---- g2c ---- */

/* Slow reference: bytes, then repeatedly merge the adjacent pair whose new id is
 * lowest (scanning the merge list), leftmost first. */
static int ref_g2c_piece(const int (*merges)[3], int nm, const unsigned char *s, size_t n, int *out)
{
    int k = 0;
    for (size_t i = 0; i < n; i++) out[k++] = s[i];
    for (;;) {
        int best = -1, at = -1;
        for (int i = 0; i + 1 < k; i++)
            for (int m = 0; m < nm; m++)
                if (merges[m][0] == out[i] && merges[m][1] == out[i + 1] && (best < 0 || merges[m][2] < best)) {
                    best = merges[m][2];
                    at = i;
                }
        if (best < 0) return k;
        for (int i = 0; i + 1 < k; i++)
            if (merges[best - merges[0][2]][0] == out[i] && merges[best - merges[0][2]][1] == out[i + 1]) {
                at = i;
                break;
            }
        out[at] = best;
        memmove(out + at + 1, out + at + 2, (size_t)(k - at - 2) * sizeof *out);
        k--;
    }
}

static int ref_g2c(const int (*merges)[3], int nm, const char *const *specials, int ns, const char *s, size_t n,
                   int *out)
{
    int k = 0;
    size_t seg = 0, i = 0;
    while (i < n) {
        int hit = -1;
        size_t hl = 0;
        for (int j = 0; j < ns; j++) {
            size_t l = strlen(specials[j]);
            if (l <= n - i && l > hl && memcmp(s + i, specials[j], l) == 0) {
                hit = j;
                hl = l;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        k += ref_g2c_piece(merges, nm, (const unsigned char *)s + seg, i - seg, out + k);
        out[k++] = 256 + hit;
        i += hl;
        seg = i;
    }
    k += ref_g2c_piece(merges, nm, (const unsigned char *)s + seg, n - seg, out + k);
    return k;
}

Test(bpe, g2c_matches_slow_reference)
{
    char dir[128], args[256], p[256], err[256] = "";
    cr_assert_not_null(fx_tmpdir(dir, sizeof dir));
    snprintf(args, sizeof args, "course %s/art tiny --seed 3", dir);
    cr_assert_eq(fx_pywrite(args), 0);
    snprintf(p, sizeof p, "%s/art/tokenizers/tiny-bpe/tokenizer.json", dir);
    tokenizer t;
    cr_assert_eq(tok_g2c_load(&t, p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(t.kind, TOK_G2C);
    cr_assert_eq(t.types[256], TT_CONTROL);
    cr_assert_eq(t.eos_id, 256);
    int nm = t.n_vocab - 258;
    cr_assert_gt(nm, 20);
    /* The reference reads the file's merge list itself. */
    size_t jl;
    char *js = (char *)fx_read(p, &jl);
    char *m = strstr(js, "\"merges\": [");
    cr_assert_not_null(m);
    m += strlen("\"merges\": [");
    int(*merges)[3] = malloc((size_t)nm * sizeof *merges);
    for (int i = 0; i < nm; i++) {
        cr_assert_eq(sscanf(m, " [%d, %d, %d]", &merges[i][0], &merges[i][1], &merges[i][2]), 3);
        m = strchr(m, ']') + 2;
    }
    free(js);
    const char *specials[] = { "<|endoftext|>", "<|pad|>" };
    const char *texts[] = {
        "To be, or not to be, that is the question.",
        "the the the thethethe   the",
        "Once upon a time<|endoftext|>The dog<|pad|><|endoftext|>",
        "\xc3\x9cn\xc3\xaf"
        "c\xc3\xb6"
        "d\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e and arrows of outrageous fortune",
        "",
        "<|endoftext",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "\n\n\t  \x01\xff",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int want[512];
        int32_t got[512];
        size_t n = strlen(texts[i]);
        int nw = ref_g2c((const int(*)[3])merges, nm, specials, 2, texts[i], n, want);
        int ng = tok_bpe_encode(&t, texts[i], n, 0, got, 512);
        cr_assert_eq(ng, nw, "'%s': %d tokens, reference %d", texts[i], ng, nw);
        for (int k = 0; k < nw; k++) cr_assert_eq(got[k], want[k], "'%s' token %d", texts[i], k);
    }
    /* Seeded random byte strings over a small alphabet exercise the merge order. */
    unsigned rng = 12345;
    const char alpha[] = "the o,s.a\xc3\xbc";
    for (int r = 0; r < 200; r++) {
        char s[64];
        int n = 0;
        rng = rng * 1103515245u + 12345u;
        int L = (int)(rng >> 16) % 60;
        for (int i = 0; i < L; i++) {
            rng = rng * 1103515245u + 12345u;
            s[n++] = alpha[(rng >> 16) % (sizeof alpha - 1)];
        }
        int want[128];
        int32_t got[128];
        int nw = ref_g2c((const int(*)[3])merges, nm, specials, 2, s, (size_t)n, want);
        int ng = tok_bpe_encode(&t, s, (size_t)n, 0, got, 128);
        cr_assert_eq(ng, nw);
        for (int k = 0; k < nw; k++) cr_assert_eq(got[k], want[k], "random case %d token %d", r, k);
    }
    free(merges);
    tok_bpe_clear(&t);
    fx_rmtree(dir);
}

Test(bpe, g2c_hostile_files_rejected)
{
    char dir[128], p[256], err[256];
    cr_assert_not_null(fx_tmpdir(dir, sizeof dir));
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    struct {
        const char *json, *needle;
    } bad[] = {
        { "{\"format\":\"g2c.bpe\",\"version\":3,\"merges\":[]}", "version 1 or 2" },
        { "{\"format\":\"g2c.bpe\",\"version\":2,\"special_tokens\":[],\"merges\":[[97,98,300]]}", "merges[0]" },
        { "{\"format\":\"g2c.bpe\",\"version\":2,\"special_tokens\":[\"<s>\"],\"merges\":[[256,98,257]]}",
          "merges[0]" },
        { "{\"format\":\"g2c.bpe\",\"version\":2,\"special_tokens\":[],\"merges\":[[97,98,256],[97,98,257]]}",
          "repeats" },
        { "{\"format\":\"g2c.bpe\",\"version\":2,\"special_tokens\":[5],\"merges\":[]}", "special_tokens[0]" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(fx_write(p, bad[i].json, strlen(bad[i].json)), 0);
        tokenizer t;
        err[0] = 0;
        cr_assert_eq(tok_g2c_load(&t, p, err, sizeof err), MODEL_EFORMAT, "case %zu accepted", i);
        cr_assert_not_null(strstr(err, bad[i].needle), "case %zu: '%s' lacks '%s'", i, err, bad[i].needle);
    }
    fx_rmtree(dir);
}

/* ---- SentencePiece-converted tokenizer.json (byte_fallback) -> TOK_SPM ---- */

#include "model/tokenizers/tokenizer.h"
#include <jansson.h>

static const tokenizer *g_sp;
static int by_score_desc(const void *a, const void *b)
{
    float x = g_sp->scores[*(const int *)a], y = g_sp->scores[*(const int *)b];
    return x > y ? -1 : x < y ? 1 : *(const int *)a - *(const int *)b;
}

/* Write llama2.c's tok512.bin the way HF's SentencePiece converter writes a
 * tokenizer.json: vocab, merges ordered by the merged token's score, byte_fallback,
 * Prepend/Replace normalizer, <s> template. */
static void write_spm_json(const tokenizer *sp, const char *path)
{
    json_t *vocab = json_object(), *merges = json_array();
    for (int i = 0; i < sp->n_vocab; i++)
        if (!json_object_get(vocab, sp->str[i])) json_object_set_new(vocab, sp->str[i], json_integer(i));
    int *order = malloc((size_t)sp->n_vocab * sizeof *order);
    for (int i = 0; i < sp->n_vocab; i++) order[i] = i;
    g_sp = sp;
    qsort(order, (size_t)sp->n_vocab, sizeof *order, by_score_desc);
    for (int k = 0; k < sp->n_vocab; k++) {
        int id = order[k];
        if (sp->types[id] != TT_NORMAL) continue;
        const char *s = sp->str[id];
        int len = sp->str_len[id];
        for (int cut = 1; cut < len; cut++) {
            if (((unsigned char)s[cut] & 0xC0) == 0x80) continue; /* inside a character */
            char a[256], b[256];
            snprintf(a, sizeof a, "%.*s", cut, s);
            snprintf(b, sizeof b, "%s", s + cut);
            json_t *ia = json_object_get(vocab, a), *ib = json_object_get(vocab, b);
            if (!ia || !ib || sp->types[json_integer_value(ia)] != TT_NORMAL ||
                sp->types[json_integer_value(ib)] != TT_NORMAL)
                continue;
            json_array_append_new(merges, json_pack("[ss]", a, b));
        }
    }
    free(order);
    json_t *root = json_pack(
        "{s:s, s:[{s:i,s:s,s:b},{s:i,s:s,s:b},{s:i,s:s,s:b}], s:{s:s,s:[{s:s,s:s},{s:s,s:{s:s},s:s}]},"
        " s:n, s:{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:{s:{s:s,s:[i],s:[s]}}},"
        " s:{s:s,s:b,s:s,s:o,s:o}}",
        "version", "1.0", "added_tokens", "id", 0, "content", "<unk>", "special", 1, "id", 1, "content", "<s>",
        "special", 1, "id", 2, "content", "</s>", "special", 1, "normalizer", "type", "Sequence", "normalizers", "type",
        "Prepend", "prepend", "\xe2\x96\x81", "type", "Replace", "pattern", "String", " ", "content", "\xe2\x96\x81",
        "pre_tokenizer", "post_processor", "type", "TemplateProcessing", "single", "SpecialToken", "id", "<s>",
        "type_id", 0, "Sequence", "id", "A", "type_id", 0, "special_tokens", "<s>", "id", "<s>", "ids", 1, "tokens",
        "<s>", "model", "type", "BPE", "byte_fallback", 1, "unk_token", "<unk>", "vocab", vocab, "merges", merges);
    cr_assert_not_null(root);
    cr_assert_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
}

Test(bpe, sentencepiece_tokenizer_json_matches_llama2c_vocab)
{
    char tb[512], dir[128], p[256], err[256] = "";
    td_model(tb, sizeof tb, "tok512.bin");
    tokenizer sp;
    memset(&sp, 0, sizeof sp);
    cr_assert_eq(tokenizer_load_llama2c(&sp, tb, 512, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(fx_tmpdir(dir, sizeof dir));
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    write_spm_json(&sp, p);
    tokenizer hf;
    cr_assert_eq(tok_bpe_load_hf(&hf, p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(hf.kind, TOK_SPM);
    cr_assert_eq(hf.add_bos, 1);
    cr_assert_eq(hf.bos_id, 1);
    cr_assert_eq(hf.add_space_prefix, 1);
    const char *texts[] = {
        "Once upon a time, there was a little girl named Lily.",
        "She liked to play outside in the sun.  Two  spaces,\ttabs\nand lines.",
        "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 (byte fallback)",
        "",
        " ",
        "123 4567",
        "The quick brown fox jumps over the lazy dog!?",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t a[256], b[256];
        size_t n = strlen(texts[i]);
        int na = tokenizer_encode(&sp, texts[i], n, 1, a, 256);
        int nb = tokenizer_encode(&hf, texts[i], n, 1, b, 256);
        cr_assert_eq(nb, na, "'%s': %d vs llama2c %d tokens", texts[i], nb, na);
        for (int k = 0; k < na; k++) cr_assert_eq(b[k], a[k], "'%s' token %d", texts[i], k);
    }
    tokenizer_free(&sp);
    tokenizer_free(&hf);
    fx_rmtree(dir);
}
