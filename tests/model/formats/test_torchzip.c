/* test_torchzip.c -- the torch.save zip reader against real files and hostile ones.
 * Expected values are the ones fixtures/SOURCES.md records for each real file. */
#include <criterion/criterion.h>

#include "model/model.h"
#include "model/formats/torchzip.h"
#include "tests/model/fmt_util.h"

#include <math.h>

static tz_file *open_fx(const char *rel)
{
    char p[512], err[256] = "";
    tz_file *f = NULL;
    int rc = tz_open(&f, fx_path(p, sizeof p, rel), err, sizeof err);
    cr_assert_eq(rc, 0, "%s: %s", rel, err);
    cr_assert_not_null(tz_root(f));
    return f;
}

static const tz_tensor *get_tensor(const tz_value *d, const char *key)
{
    const tz_value *v = tz_dict_get(d, key);
    cr_assert_not_null(v, "no key %s", key);
    cr_assert_eq(v->kind, TZ_TENSOR, "%s is not a tensor", key);
    return &v->t;
}

Test(torchzip, torch1_state_dict_all_ones)
{
    tz_file *f = open_fx("pytorch/torchtext/test_state_dict.pt");
    const tz_tensor *t = get_tensor(tz_root(f), "a");
    cr_assert_eq(t->dtype, TZ_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 2);
    float v[4];
    tz_tensor_to_f32(t, v);
    for (int i = 0; i < 4; i++) cr_assert_eq(v[i], 1.0f);
    tz_close(f);
}

Test(torchzip, bare_tensor_at_top_level)
{
    tz_file *f = open_fx("pytorch/torchtext/t5.small.model.output.pt");
    const tz_value *r = tz_root(f);
    cr_assert_eq(r->kind, TZ_TENSOR);
    cr_assert_eq(r->t.ndim, 3);
    cr_assert_eq(r->t.shape[0], 2);
    cr_assert_eq(r->t.shape[1], 1);
    cr_assert_eq(r->t.shape[2], 512);
    cr_assert_eq(r->t.stride[0], 512);
    cr_assert(tz_tensor_is_contiguous(&r->t));
    float *v = malloc(1024 * sizeof *v);
    tz_tensor_to_f32(&r->t, v);
    int finite = 0, nonzero = 0;
    for (int i = 0; i < 1024; i++) {
        finite += isfinite(v[i]) != 0;
        nonzero += v[i] != 0;
    }
    cr_assert_eq(finite, 1024);
    cr_assert_gt(nonzero, 1000);
    free(v);
    tz_close(f);
}

Test(torchzip, state_dict_with_metadata_build_and_int64_scalars)
{
    tz_file *f = open_fx("pytorch/burn/complex_nested.pt");
    const tz_value *r = tz_root(f);
    cr_assert_eq(r->kind, TZ_DICT);
    cr_assert_eq(r->n, 2 * 23);
    const tz_tensor *nb = get_tensor(r, "conv_blocks.0.norm.num_batches_tracked");
    cr_assert_eq(nb->dtype, TZ_I64);
    cr_assert_eq(nb->ndim, 0);
    cr_assert_eq(nb->numel, 1);
    double d;
    tz_tensor_to_f64(nb, &d);
    cr_assert_eq(d, 2.0); /* two training steps were run before saving */
    const tz_tensor *w = get_tensor(r, "fc1.weight");
    cr_assert_eq(w->ndim, 2);
    cr_assert_eq(w->dtype, TZ_F32);
    tz_close(f);
}

Test(torchzip, nested_config_values)
{
    tz_file *f = open_fx("pytorch/burn/weights_with_config.pt");
    const tz_value *r = tz_root(f);
    const tz_value *mm = tz_dict_get(r, "my_model");
    const tz_tensor *w1 = get_tensor(mm, "fc1.weight");
    cr_assert_eq(w1->shape[0], 3);
    cr_assert_eq(w1->shape[1], 2);
    const tz_tensor *w2 = get_tensor(mm, "fc2.weight");
    cr_assert_eq(w2->shape[0], 4);
    cr_assert_eq(w2->shape[1], 3);
    cr_assert_eq(get_tensor(mm, "fc1.bias")->shape[0], 3);
    const tz_value *c = tz_dict_get(r, "my_config");
    cr_assert_eq(tz_dict_get(c, "d_model")->i, 512);
    cr_assert_eq(tz_dict_get(c, "n_layer")->i, 3);
    cr_assert_eq(tz_dict_get(c, "some_float")->f, 0.1);
    cr_assert_eq(tz_dict_get(c, "some_bool")->kind, TZ_BOOL);
    cr_assert_eq(tz_dict_get(c, "some_bool")->i, 1);
    cr_assert_str_eq(tz_dict_get(c, "some_str")->s, "hello");
    const tz_value *ls = tz_dict_get(c, "some_list_str");
    cr_assert_eq(ls->kind, TZ_LIST);
    cr_assert_eq(ls->n, 2);
    cr_assert_str_eq(ls->items[0]->s, "hello"); /* via BINGET of a memoized string */
    cr_assert_str_eq(ls->items[1]->s, "world");
    const tz_value *lf = tz_dict_get(c, "some_list_float");
    cr_assert_eq(lf->n, 3);
    cr_assert_eq(lf->items[2]->f, 0.3);
    cr_assert_str_eq(tz_dict_get(tz_dict_get(c, "some_dict"), "some_key")->s, "some_value");
    tz_close(f);
}

Test(torchzip, checkpoint_plain_values)
{
    tz_file *f = open_fx("pytorch/burn/checkpoint.pt");
    const tz_value *r = tz_root(f);
    cr_assert_eq(tz_dict_get(r, "epoch")->i, 42);
    cr_assert_eq(tz_dict_get(r, "loss")->f, 0.123);
    cr_assert_eq(tz_dict_get(r, "model_state_dict")->n, 2 * 4);
    tz_close(f);
}

Test(torchzip, half_and_bfloat16)
{
    tz_file *f = open_fx("pytorch/burn/float16.pt");
    const tz_tensor *t = get_tensor(tz_root(f), "tensor");
    cr_assert_eq(t->dtype, TZ_F16);
    float v[3];
    tz_tensor_to_f32(t, v);
    cr_assert_eq(v[0], 1.5f);
    cr_assert_eq(v[1], -2.25f);
    cr_assert_eq(v[2], 3.125f);
    tz_close(f);
    f = open_fx("pytorch/burn/bfloat16.pt");
    t = get_tensor(tz_root(f), "tensor");
    cr_assert_eq(t->dtype, TZ_BF16);
    tz_tensor_to_f32(t, v);
    cr_assert_eq(v[0], 1.5f);
    cr_assert_eq(v[1], -2.5f);
    cr_assert_eq(v[2], 3.5f);
    tz_close(f);
}

Test(torchzip, mixed_storage_types)
{
    tz_file *f = open_fx("pytorch/burn/mixed_types.pt");
    const tz_value *r = tz_root(f);
    double d[2];
    tz_tensor_to_f64(get_tensor(r, "float32"), d);
    cr_assert(d[0] == 1 && d[1] == 2);
    cr_assert_eq(get_tensor(r, "int64")->dtype, TZ_I64);
    tz_tensor_to_f64(get_tensor(r, "int64"), d);
    cr_assert(d[0] == 100 && d[1] == 200);
    cr_assert_eq(get_tensor(r, "bool")->dtype, TZ_BOOL_T);
    tz_tensor_to_f64(get_tensor(r, "bool"), d);
    cr_assert(d[0] == 1 && d[1] == 0);
    cr_assert_eq(get_tensor(r, "float64")->dtype, TZ_F64);
    tz_tensor_to_f64(get_tensor(r, "float64"), d);
    cr_assert(d[0] == 1.1 && d[1] == 2.2);
    tz_close(f);
}

Test(torchzip, column_major_strides_are_walked)
{
    tz_file *f = open_fx("pytorch/candle/fortran_tensor_3d.pth");
    const tz_tensor *t = get_tensor(tz_root(f), "tensor_fortran");
    cr_assert_eq(t->stride[0], 1);
    cr_assert_eq(t->stride[1], 2);
    cr_assert_eq(t->stride[2], 6);
    cr_assert_not(tz_tensor_is_contiguous(t));
    double v[24];
    tz_tensor_to_f64(t, v);
    for (int i = 0; i < 24; i++) cr_assert_eq(v[i], i + 1.0, "element %d = %g", i, v[i]); /* arange(1,25) */
    tz_close(f);
}

Test(torchzip, legacy_format_is_rejected)
{
    char p[512], err[256] = "";
    tz_file *f = NULL;
    int rc = tz_open(&f, fx_path(p, sizeof p, "pytorch/burn/simple_legacy.pt"), err, sizeof err);
    cr_assert_eq(rc, MODEL_EFORMAT);
    cr_assert_null(f);
    cr_assert_not_null(strstr(err, "legacy"), "%s", err);
}

/* ---- Files from the Python writer, hostile ones included ---- */

static char hdir[128];
static void mk_hostile(void)
{
    cr_assert_not_null(fx_tmpdir(hdir, sizeof hdir));
    char args[256];
    snprintf(args, sizeof args, "hostile %s", hdir);
    cr_assert_eq(fx_pywrite(args), 0);
}
static void rm_hostile(void) { fx_rmtree(hdir); }

static void expect_reject(const char *name, const char *needle)
{
    char p[256], err[512] = "";
    snprintf(p, sizeof p, "%s/%s", hdir, name);
    tz_file *f = NULL;
    int rc = tz_open(&f, p, err, sizeof err);
    cr_assert_eq(rc, MODEL_EFORMAT, "%s: rc %d (%s)", name, rc, err);
    cr_assert_null(f);
    cr_assert_not_null(strstr(err, needle), "%s: message '%s' lacks '%s'", name, err, needle);
}

TestSuite(torchzip_writer, .init = mk_hostile, .fini = rm_hostile);

Test(torchzip_writer, list_of_tensors_reads_back)
{
    char p[256], err[256] = "";
    snprintf(p, sizeof p, "%s/list_of_tensors.pt", hdir);
    tz_file *f = NULL;
    cr_assert_eq(tz_open(&f, p, err, sizeof err), 0, "%s", err);
    const tz_value *ps = tz_dict_get(tz_root(f), "params");
    cr_assert_eq(ps->kind, TZ_LIST);
    cr_assert_eq(ps->n, 2);
    float v[6];
    tz_tensor_to_f32(&ps->items[0]->t, v);
    cr_assert_eq(v[5], 6.0f);
    tz_tensor_to_f32(&ps->items[1]->t, v);
    cr_assert_eq(v[1], -1.0f);
    cr_assert_eq(tz_dict_get(tz_root(f), "vocab_size")->i, 7);
    tz_close(f);
}

Test(torchzip_writer, forbidden_globals_named)
{
    expect_reject("forbidden_global.pt", "forbidden global 'os.system'");
    expect_reject("forbidden_builtin.pt", "forbidden global 'builtins.eval'");
}

Test(torchzip_writer, out_of_bounds_and_absurd)
{
    expect_reject("tensor_past_storage.pt", "tensor reaches element 15 of a storage holding 6");
    expect_reject("storage_past_record.pt", "but its entry holds 16 bytes");
    expect_reject("absurd_shape.pt", "absurd");
    expect_reject("compressed.pt", "is compressed");
    expect_reject("huge_memo.pt", "memo index 16777215 is absurd");
}

Test(torchzip_writer, every_truncation_rejected)
{
    char p[256];
    snprintf(p, sizeof p, "%s/list_of_tensors.pt", hdir);
    size_t len = 0;
    unsigned char *buf = fx_read(p, &len);
    cr_assert_not_null(buf);
    for (size_t n = 0; n < len; n++) {
        unsigned char *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        char err[256] = "";
        tz_file *f = NULL;
        int rc = tz_open_mem(&f, cut, n, "cut", err, sizeof err);
        cr_assert_lt(rc, 0, "truncated to %zu bytes but accepted", n);
        cr_assert_null(f);
        cr_assert_gt(strlen(err), 5);
        free(cut);
    }
    free(buf);
}

Test(torchzip_writer, corrupted_bytes_never_crash)
{
    /* Flip each byte of the central directory and pickle: every outcome is either a
     * clean error or a tree; ASan checks the reads. */
    char p[256];
    snprintf(p, sizeof p, "%s/list_of_tensors.pt", hdir);
    size_t len = 0;
    unsigned char *buf = fx_read(p, &len);
    int rejected = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char *b = malloc(len);
        memcpy(b, buf, len);
        b[i] ^= 0xA5;
        char err[256] = "";
        tz_file *f = NULL;
        int rc = tz_open_mem(&f, b, len, "flip", err, sizeof err);
        if (rc) {
            rejected++;
            cr_assert_null(f);
        }
        tz_close(f);
        free(b);
    }
    cr_assert_gt(rejected, 100);
    free(buf);
}
