/* cli.h -- the lmserve command's sub-commands, one file each (cli/<name>.c).
 * Each takes the arguments after its own name and returns the process exit code. */
#ifndef LMSERVE_CLI_H
#define LMSERVE_CLI_H

#include <time.h>

int cli_chat_template(int argc, char **argv); /* cli/chat_template.c */
int cli_generate(int argc, char **argv);      /* cli/generate.c */
int cli_health(int argc, char **argv);        /* cli/health.c */
int cli_grammar(int argc, char **argv);       /* cli/grammar.c */
int cli_serve(int argc, char **argv);         /* cli/serve.c */
int cli_train(int argc, char **argv);         /* cli/train.c */
int cli_quantize(int argc, char **argv);      /* cli/quantize.c */

/* Seconds on clock id: CLOCK_MONOTONIC for elapsed time, CLOCK_THREAD_CPUTIME_ID for
 * the calling thread's CPU time.  The bench/ programs use it too. */
static inline double cli_seconds(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The version this binary was built as (cli/version.c). */
const char *cli_version(void);

#endif
