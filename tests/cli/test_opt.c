/* test_opt.c -- cli/opt.c, the option parser of every sub-command: both spellings,
 * flags, every kind of value with its range, and the one-line errors. */
#include <criterion/criterion.h>

#include "cli/opt.h"

#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *path;
    int port, quiet;
    size_t bytes;
    uint64_t seed;
    float lr;
    int kind;
} vals;

static int parse_kind(const char *v, void *out)
{
    if (strcmp(v, "f32") && strcmp(v, "f16")) return -1;
    *(int *)out = v[1] == '1' ? 1 : 2;
    return 0;
}

/* Parse the NULL-terminated arguments after the command name into *v. */
static int run(vals *v, const char *const *args)
{
    const cli_opt opts[] = {
        OPT_STR("--path", &v->path),
        OPT_INT("--port", &v->port, 0, 65535),
        OPT_FLAG("--quiet", &v->quiet, 1),
        OPT_SIZE("--bytes", &v->bytes, 64, 1L << 30),
        OPT_U64("--seed", &v->seed),
        OPT_FLOAT("--lr", &v->lr, 1e-9, 10),
        OPT_FN("--kind", &v->kind, parse_kind, "f32 or f16"),
    };
    char *argv[32] = { "test" };
    int argc = 1;
    while (args[argc - 1]) {
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    memset(v, 0, sizeof *v);
    return cli_parse("lmserve test", opts, sizeof opts / sizeof opts[0], argc, argv);
}

Test(opt, both_spellings_give_the_same_values)
{
    vals a, b;
    const char *sep[] = { "--path", "m.gguf", "--port", "8081", "--bytes", "4096", "--seed", "18446744073709551615",
                          "--lr",   "2e-3",   "--kind", "f16",  "--quiet", NULL };
    const char *eq[] = { "--path=m.gguf", "--port=8081", "--bytes=4096", "--seed=18446744073709551615",
                         "--lr=2e-3",     "--kind=f16",  "--quiet",      NULL };
    cr_assert_eq(run(&a, sep), CLI_OK);
    cr_assert_eq(run(&b, eq), CLI_OK);
    cr_assert_str_eq(a.path, "m.gguf");
    cr_assert_str_eq(b.path, "m.gguf");
    cr_assert(a.port == 8081 && b.port == 8081);
    cr_assert(a.bytes == 4096 && b.bytes == 4096);
    cr_assert(a.seed == UINT64_MAX && b.seed == UINT64_MAX);
    cr_assert(a.lr == 2e-3f && b.lr == 2e-3f);
    cr_assert(a.kind == 1 && b.kind == 1);
    cr_assert(a.quiet == 1 && b.quiet == 1);
}

Test(opt, values_may_contain_equals_signs_and_be_empty)
{
    vals v;
    const char *a[] = { "--path=a=b", NULL };
    cr_assert_eq(run(&v, a), CLI_OK);
    cr_assert_str_eq(v.path, "a=b");
    const char *b[] = { "--path=", NULL };
    cr_assert_eq(run(&v, b), CLI_OK);
    cr_assert_str_eq(v.path, "");
    const char *c[] = { "--path", "--port", NULL }; /* a value may look like an option */
    cr_assert_eq(run(&v, c), CLI_OK);
    cr_assert_str_eq(v.path, "--port");
}

Test(opt, later_repeats_win_and_ranges_are_inclusive)
{
    vals v;
    const char *a[] = { "--port", "1", "--port=65535", "--port", "0", NULL };
    cr_assert_eq(run(&v, a), CLI_OK);
    cr_assert_eq(v.port, 0);
    const char *b[] = { "--bytes=64", "--lr=10", NULL };
    cr_assert_eq(run(&v, b), CLI_OK);
    cr_assert_eq(v.bytes, 64);
    cr_assert_eq(v.lr, 10.0f);
}

Test(opt, help_stops_parsing)
{
    vals v;
    const char *a[] = { "--port", "1", "-h", "--frobnicate", NULL };
    cr_assert_eq(run(&v, a), CLI_HELP);
    const char *b[] = { "--help", NULL };
    cr_assert_eq(run(&v, b), CLI_HELP);
}

/* Each bad command line is refused with one line naming the problem. */
static void refused(const char *const *args, const char *want)
{
    vals v;
    fflush(stderr);
    FILE *saved = stderr;
    char buf[512] = "";
    FILE *mem = fmemopen(buf, sizeof buf - 1, "w");
    cr_assert_not_null(mem);
    stderr = mem;
    int rc = run(&v, args);
    fclose(mem);
    stderr = saved;
    cr_assert_eq(rc, CLI_BAD, "accepted; wanted '%s'", want);
    cr_assert(strstr(buf, want), "message '%s' does not say '%s'", buf, want);
    cr_assert(!strncmp(buf, "lmserve test: ", 14), "message '%s'", buf);
    cr_assert_eq(strchr(buf, '\n'), buf + strlen(buf) - 1, "one line: '%s'", buf);
}

Test(opt, errors_name_the_option_and_the_value)
{
    refused((const char *[]){ "--port", "http", NULL }, "--port expects an integer in [0, 65535], got 'http'");
    refused((const char *[]){ "--port=65536", NULL }, "--port expects an integer in [0, 65535], got '65536'");
    refused((const char *[]){ "--port=-1", NULL }, "got '-1'");
    refused((const char *[]){ "--port=", NULL }, "got ''");
    refused((const char *[]){ "--port=12x", NULL }, "got '12x'");
    refused((const char *[]){ "--port=99999999999999999999", NULL }, "--port expects an integer");
    refused((const char *[]){ "--bytes=63", NULL }, "--bytes expects an integer in [64, 1073741824]");
    refused((const char *[]){ "--seed=-1", NULL }, "--seed expects a non-negative integer, got '-1'");
    refused((const char *[]){ "--seed=18446744073709551616", NULL }, "--seed expects a non-negative integer");
    refused((const char *[]){ "--lr=0", NULL }, "--lr expects a number in [1e-09, 10], got '0'");
    refused((const char *[]){ "--lr=nan", NULL }, "--lr expects a number");
    refused((const char *[]){ "--lr=inf", NULL }, "--lr expects a number");
    refused((const char *[]){ "--kind", "f8", NULL }, "--kind expects f32 or f16, got 'f8'");
    refused((const char *[]){ "--port", NULL }, "--port needs a value");
    refused((const char *[]){ "--quiet=1", NULL }, "--quiet takes no value");
    refused((const char *[]){ "--frobnicate", "1", NULL }, "unknown option '--frobnicate'");
    refused((const char *[]){ "--frobnicate=1", NULL }, "unknown option '--frobnicate'");
    refused((const char *[]){ "--portx=1", NULL }, "unknown option '--portx'");
    refused((const char *[]){ "model.gguf", NULL }, "unexpected argument 'model.gguf'");
    refused((const char *[]){ "-p", "1", NULL }, "unexpected argument '-p'");
}
