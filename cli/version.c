/* version.c -- the version this binary was built as (the build writes version.h from
 * scripts/version.sh: VERSION plus the commit). */
#include "cli/cli.h"
#include "version.h"

const char *cli_version(void) { return LMSERVE_VERSION; }
