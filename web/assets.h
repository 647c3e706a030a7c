/* assets.h -- the web playground's static files, compiled into the binary.
 * The table is generated at build time from web/static/ (see web/web.mk). */
#ifndef LMSERVE_WEB_ASSETS_H
#define LMSERVE_WEB_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *path;         /* URL path, e.g. "/" or "/app.js" */
    const char *content_type; /* e.g. "text/html; charset=utf-8" */
    const unsigned char *data;
    size_t len;
    const char *etag; /* quoted strong validator derived from the content */
} web_asset;

extern const web_asset web_assets[];
extern const size_t web_assets_count;

#endif
