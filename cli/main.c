/* main.c -- `lmserve COMMAND [options]`: dispatch to a sub-command. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fputs("usage: lmserve COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  serve      serve a model over HTTP (OpenAI-compatible API, SSE streaming)\n"
          "  generate   complete one prompt on the command line\n"
          "  train      train a small llama-architecture model on a text file\n"
          "  health     ask a running server's /health (exit 0 when ready)\n"
          "  chat-template  print the prompt a chat template renders for messages on stdin\n"
          "  quantize   write a GGUF model with its matrices quantized (Q4_0 ... Q8_0, K-quants)\n"
          "  grammar    print the GBNF a request's response_format, grammar or choice compiles to\n"
          "\n"
          "`lmserve COMMAND --help` lists the command's options and their defaults;\n"
          "`lmserve --version` prints the version.\n",
          f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        /* the server's options with their defaults: `lmserve --help` lists them too */
        char *serve_help[] = { "serve", "--help", NULL };
        putchar('\n');
        cli_serve(2, serve_help);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V") || !strcmp(cmd, "version")) {
        printf("lmserve %s\n", cli_version());
        return 0;
    }
    if (!strcmp(cmd, "health")) return cli_health(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat-template")) return cli_chat_template(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cli_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cli_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "train")) return cli_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize")) return cli_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "grammar")) return cli_grammar(argc - 1, argv + 1);
    fprintf(stderr, "lmserve: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
