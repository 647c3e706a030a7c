/* train.c -- placeholder until the `train` sub-command lands (see its issue). */
#include "cli/cli.h"

#include <stdio.h>

int cli_train(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "lmserve: 'train' is not built yet\n");
    return 2;
}
