/* test_safetensors.c -- the safetensors reader: real HF files, shards, hostile headers. */
#include <criterion/criterion.h>

#include "model/model_internal.h"
#include "model/formats/safetensors.h"
#include "tests/model/fmt_util.h"

#include <math.h>

Test(safetensors, tiny_gpt2_real_file)
{
    char p[512], err[256] = "";
    st_file *f = NULL;
    cr_assert_eq(st_open(&f, fx_path(p, sizeof p, "hf/tiny-gpt2/model.safetensors"), err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_count(f), 28);
    const st_tensor *t = st_find(f, "transformer.h.0.attn.c_attn.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->mt_type, MT_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 2); /* Conv1D: (in, out) = (n_embd, 3 n_embd) */
    cr_assert_eq(t->shape[1], 6);
    t = st_find(f, "transformer.wte.weight");
    cr_assert_eq(t->shape[0], 50257);
    cr_assert_eq(t->shape[1], 2);
    cr_assert_null(st_find(f, "lm_head.weight"));
    const float *ln = st_find(f, "transformer.ln_f.weight")->data;
    cr_assert(isfinite(ln[0]) && isfinite(ln[1]));
    st_close(f);
}

Test(safetensors, tiny_llama_folder)
{
    char p[512], err[256] = "";
    st_file *f = NULL;
    cr_assert_eq(st_open(&f, fx_path(p, sizeof p, "hf/tiny-random-llama"), err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_count(f), 21);
    const st_tensor *t = st_find(f, "model.layers.1.mlp.gate_proj.weight");
    cr_assert_eq(t->shape[0], 64);
    cr_assert_eq(t->shape[1], 16);
    cr_assert_eq(st_find(f, "lm_head.weight")->shape[0], 32000);
    st_close(f);
}

/* Build a safetensors image from a header string and n data bytes. */
static unsigned char *mk(const char *hdr, size_t ndata, size_t *len)
{
    size_t h = strlen(hdr);
    *len = 8 + h + ndata;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, hdr, h);
    return b;
}

static void expect(const char *hdr, size_t ndata, const char *needle)
{
    size_t len;
    unsigned char *b = mk(hdr, ndata, &len);
    char err[512] = "";
    st_file *f = NULL;
    int rc = st_open_mem(&f, b, len, "x.safetensors", err, sizeof err);
    if (!needle) {
        cr_assert_eq(rc, 0, "%s", err);
        st_close(f);
    } else {
        cr_assert_eq(rc, MODEL_EFORMAT, "accepted: %s", hdr);
        cr_assert_null(f);
        cr_assert_not_null(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
    }
    free(b);
}

Test(safetensors, hostile_headers)
{
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, NULL);
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
           12, "overlaps");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "span 8");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "hole");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "tensors use 8");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]}}", 8, "absurd");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8, "not a sane size");
    expect("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets");
    expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "header JSON");
    expect("{\"a\":1,\"a\":2}", 0, "header JSON"); /* duplicate keys */
    /* A header length that runs past the file. */
    unsigned char b[16] = { 200, 0, 0, 0, 0, 0, 0, 0, '{', '}' };
    char err[256] = "";
    st_file *f = NULL;
    cr_assert_eq(st_open_mem(&f, b, 16, "short", err, sizeof err), MODEL_EFORMAT);
    cr_assert_not_null(strstr(err, "past the end"), "%s", err);
    b[0] = 0xff;
    b[5] = 0xff;
    cr_assert_eq(st_open_mem(&f, b, 16, "huge", err, sizeof err), MODEL_EFORMAT);
    cr_assert_not_null(strstr(err, "absurd"), "%s", err);
}

Test(safetensors, every_truncation_of_real_file_rejected)
{
    char p[512];
    size_t len;
    unsigned char *buf = fx_read(fx_path(p, sizeof p, "hf/tiny-gpt2/model.safetensors"), &len);
    cr_assert_not_null(buf);
    size_t cuts[] = { 0, 7, 8, 100, 3000, len - 4, len - 1 };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char err[256] = "";
        st_file *f = NULL;
        cr_assert_eq(st_open_mem(&f, buf, cuts[i], "cut", err, sizeof err), MODEL_EFORMAT, "cut at %zu accepted",
                     cuts[i]);
        cr_assert_gt(strlen(err), 5);
    }
    free(buf);
}

Test(safetensors, shards_via_index)
{
    char dir[128], p[256], err[256] = "";
    cr_assert_not_null(fx_tmpdir(dir, sizeof dir));
    size_t len;
    unsigned char *a = mk("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &len);
    float one = 1.5f;
    memcpy(a + len - 4, &one, 4);
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    cr_assert_eq(fx_write(p, a, len), 0);
    free(a);
    a = mk("{\"y\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]}, \"__metadata__\":{}}  ", 2, &len);
    a[len - 1] = 0x40; /* bf16 2.0 = 0x4000 */
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    cr_assert_eq(fx_write(p, a, len), 0);
    free(a);
    const char *ix = "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
                     "\"y\":\"model-00002-of-00002.safetensors\"}}";
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    cr_assert_eq(fx_write(p, ix, strlen(ix)), 0);
    st_file *f = NULL;
    cr_assert_eq(st_open(&f, dir, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st_count(f), 2);
    float x;
    memcpy(&x, st_find(f, "x")->data, 4); /* this header is not padded: data unaligned */
    cr_assert_eq(x, 1.5f);
    cr_assert_eq(st_find(f, "y")->mt_type, MT_BF16);
    cr_assert_eq(((const unsigned char *)st_find(f, "y")->data)[1], 0x40);
    st_close(f);
    /* An index naming a missing tensor, or a path outside the folder, is refused. */
    ix = "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\",\"z\":\"model-00001-of-00002.safetensors\"}}";
    cr_assert_eq(fx_write(p, ix, strlen(ix)), 0);
    cr_assert_eq(st_open(&f, dir, err, sizeof err), MODEL_EFORMAT);
    cr_assert_not_null(strstr(err, "'z' is listed"), "%s", err);
    ix = "{\"weight_map\":{\"x\":\"../etc/passwd\"}}";
    cr_assert_eq(fx_write(p, ix, strlen(ix)), 0);
    cr_assert_eq(st_open(&f, dir, err, sizeof err), MODEL_EFORMAT);
    cr_assert_not_null(strstr(err, "plain file name"), "%s", err);
    fx_rmtree(dir);
}
