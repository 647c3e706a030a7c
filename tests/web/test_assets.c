/* test_assets.c -- the generated web_assets[] table (web/tools/embed.c via web/web.mk)
 * holds exactly the files of web/static, byte for byte, with the right types and ETags.
 * Run from the repository root (scripts/run-tests.sh does). */
#include "web/assets.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const web_asset *find_asset(const char *path)
{
    for (size_t i = 0; i < web_assets_count; i++)
        if (!strcmp(web_assets[i].path, path)) return &web_assets[i];
    return NULL;
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)n) {
        free(buf);
        return NULL;
    }
    *len = got;
    return buf;
}

Test(web_assets, root_is_index_html)
{
    const web_asset *root = find_asset("/");
    const web_asset *index = find_asset("/index.html");
    cr_assert_not_null(root);
    cr_assert_not_null(index);
    cr_assert_str_eq(root->content_type, "text/html; charset=utf-8");
    cr_assert_eq(root->data, index->data);
    cr_assert_eq(root->len, index->len);
    cr_assert_str_eq(root->etag, index->etag);
    cr_assert(root->len > 100);
    cr_assert(!memcmp(root->data, "<!doctype html>", 15));
}

Test(web_assets, content_types_by_extension)
{
    const web_asset *js = find_asset("/app.js");
    const web_asset *css = find_asset("/style.css");
    cr_assert_not_null(js);
    cr_assert_not_null(css);
    cr_assert_str_eq(js->content_type, "text/javascript; charset=utf-8");
    cr_assert_str_eq(css->content_type, "text/css; charset=utf-8");
}

Test(web_assets, every_static_file_embedded_byte_for_byte)
{
    DIR *d = opendir("web/static");
    cr_assert_not_null(d, "run from the repository root");
    size_t n_files = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char fs_path[512], url[512];
        snprintf(fs_path, sizeof fs_path, "web/static/%s", e->d_name);
        snprintf(url, sizeof url, "/%s", e->d_name);
        size_t len = 0;
        unsigned char *want = read_all(fs_path, &len);
        cr_assert_not_null(want, "%s", fs_path);
        const web_asset *a = find_asset(url);
        cr_assert_not_null(a, "%s is not embedded (rebuild?)", url);
        cr_assert_eq(a->len, len, "%s: %zu bytes embedded, %zu on disk", url, a->len, len);
        cr_assert(!memcmp(a->data, want, len), "%s differs from the file", url);
        cr_assert_eq(a->data[len], 0, "%s: NUL after the data", url);
        free(want);
        n_files++;
    }
    closedir(d);
    /* Every file once, plus "/" for index.html. */
    cr_assert_eq(web_assets_count, n_files + 1);
}

Test(web_assets, etags_are_quoted_and_distinct)
{
    for (size_t i = 0; i < web_assets_count; i++) {
        const char *t = web_assets[i].etag;
        size_t n = strlen(t);
        cr_assert(n >= 3 && t[0] == '"' && t[n - 1] == '"', "strong ETag, quoted: %s", t);
        cr_assert_eq(strchr(t + 1, '"'), t + n - 1, "one pair of quotes: %s", t);
        for (size_t j = 0; j < web_assets_count; j++)
            if (web_assets[j].data != web_assets[i].data)
                cr_assert_str_neq(t, web_assets[j].etag, "%s and %s share an ETag", web_assets[i].path,
                                  web_assets[j].path);
    }
}
