/* chat_template.c -- `lmserve chat-template`: print the prompt a chat template makes of a
 * conversation, without serving.  It answers "what text does my model see for these
 * messages?" with the same renderer the server's /v1/chat/completions uses
 * (model/tokenizers/chat_template.c), so a template can be checked against its model's own
 * rendering (the tests compare it with Jinja2 configured as transformers configures it).
 *
 * The template is --template NAME (a built-in) or FILE (Jinja source), or the one a model
 * carries (--model PATH; its BOS/EOS texts are used too).  The conversation is read from
 * stdin: a JSON array of messages, or an object with "messages" (and optionally
 * "add_generation_prompt").  The rendering goes to stdout as is (no newline added).
 * --source prints the template's Jinja source instead (the built-ins' text, for one).
 * Exit codes: 0 rendered, 1 the template failed (its message on stderr), 2 bad usage or input. */
#include "cli/cli.h"
#include "cli/opt.h"
#include "model/model.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CT_MAX_FILE (1u << 20) /* a template file larger than 1 MiB is refused, as by serve */

static void usage(FILE *f)
{
    fputs("usage: lmserve chat-template (--template NAME|FILE | --model PATH) [options] < messages.json\n"
          "\n"
          "Print the prompt a chat template renders for a conversation (read from stdin: a JSON\n"
          "array of {\"role\", \"content\"} messages, or {\"messages\": [...]}), as the server's\n"
          "/v1/chat/completions renders it.  Exit 0 rendered, 1 the template failed, 2 bad input.\n"
          "\n"
          "  --template NAME|FILE     a built-in template (chatml, llama2, llama3, zephyr, gemma,\n"
          "                           phi3) or a file of Jinja source\n"
          "  --model PATH             the template a model carries, with its BOS/EOS texts\n"
          "  --bos TEXT               bos_token as the template sees it (default: the model's, else \"\")\n"
          "  --eos TEXT               eos_token (default: the model's, else \"\")\n"
          "  --no-generation-prompt   add_generation_prompt false (default: true, as a chat request)\n"
          "  --source                 print the template's Jinja source instead (stdin is not read)\n",
          f);
}

static char *read_stream(FILE *f, size_t max, size_t *len)
{
    char *buf = malloc(max + 1);
    if (!buf) return NULL;
    size_t n = fread(buf, 1, max + 1, f);
    if (ferror(f) || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The model's special token text, or "" (a copy, for the model may be freed first). */
static char *token_text(const model *m, int32_t id)
{
    size_t n = 0;
    const char *s = id >= 0 ? model_token_bytes(m, id, &n) : NULL;
    char *d = malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

int cli_chat_template(int argc, char **argv)
{
    const char *tpl_opt = NULL, *model_path = NULL, *bos_opt = NULL, *eos_opt = NULL;
    int no_gen = 0, show_source = 0;
    const cli_opt opts[] = {
        OPT_STR("--template", &tpl_opt),
        OPT_STR("--model", &model_path),
        OPT_STR("--bos", &bos_opt),
        OPT_STR("--eos", &eos_opt),
        OPT_FLAG("--no-generation-prompt", &no_gen, 1),
        OPT_FLAG("--source", &show_source, 1),
    };
    int rc = cli_parse("lmserve chat-template", opts, sizeof opts / sizeof opts[0], argc, argv);
    if (rc == CLI_HELP) usage(stdout);
    if (rc != CLI_OK) return rc == CLI_HELP ? 0 : 2;
    if (!tpl_opt && !model_path) {
        fputs("lmserve chat-template: give --template NAME|FILE or --model PATH (see --help)\n", stderr);
        return 2;
    }

    int status = 2;
    char *source = NULL, *bos = NULL, *eos = NULL, *conv_text = NULL, *out = NULL;
    json_t *conv = NULL;
    model_chat_template *t = NULL;
    char err[512];

    /* the template's source, and the model's BOS/EOS when a model is given */
    if (model_path) {
        model *m = NULL;
        model_load_opts lo = { NULL, 1 };
        if (model_load(&m, model_path, &lo, err, sizeof err) != 0) {
            fprintf(stderr, "lmserve chat-template: %s\n", err);
            goto done;
        }
        const model_info *mi = model_get_info(m);
        if (!tpl_opt && !mi->chat_template) {
            fprintf(stderr, "lmserve chat-template: %s carries no chat template (give --template)\n", model_path);
            model_free(m);
            goto done;
        }
        if (!tpl_opt) source = strdup(mi->chat_template);
        bos = token_text(m, mi->bos_id);
        eos = token_text(m, mi->eos_id);
        model_free(m);
        if ((!tpl_opt && !source) || !bos || !eos) {
            fputs("lmserve chat-template: out of memory\n", stderr);
            goto done;
        }
    }
    if (tpl_opt) {
        const char *builtin = model_chat_template_builtin(tpl_opt);
        if (builtin) {
            source = strdup(builtin);
        } else {
            FILE *f = fopen(tpl_opt, "rb");
            if (!f) {
                fprintf(stderr, "lmserve chat-template: '%s' is neither a built-in template nor a readable file: %s\n",
                        tpl_opt, strerror(errno));
                goto done;
            }
            size_t n = 0;
            source = read_stream(f, CT_MAX_FILE, &n);
            fclose(f);
            if (!source) {
                fprintf(stderr, "lmserve chat-template: cannot read '%s' (read error, out of memory, or over 1 MiB)\n",
                        tpl_opt);
                goto done;
            }
        }
        if (!source) {
            fputs("lmserve chat-template: out of memory\n", stderr);
            goto done;
        }
    }

    if (show_source) {
        size_t n = strlen(source);
        status = fwrite(source, 1, n, stdout) == n && fflush(stdout) == 0 ? 0 : 1;
        goto done;
    }

    /* the conversation */
    size_t clen = 0;
    conv_text = read_stream(stdin, 16u << 20, &clen);
    if (!conv_text) {
        fputs("lmserve chat-template: cannot read the conversation from stdin (over 16 MiB?)\n", stderr);
        goto done;
    }
    json_error_t je;
    conv = json_loadb(conv_text, clen, 0, &je);
    if (!conv) {
        fprintf(stderr, "lmserve chat-template: stdin is not JSON: %s (line %d)\n", je.text, je.line);
        goto done;
    }
    json_t *msgs = conv;
    int add_gen = !no_gen;
    if (json_is_object(conv)) {
        msgs = json_object_get(conv, "messages");
        json_t *g = json_object_get(conv, "add_generation_prompt");
        if (g && !json_is_boolean(g)) {
            fputs("lmserve chat-template: 'add_generation_prompt' must be true or false\n", stderr);
            goto done;
        }
        if (g) add_gen = json_is_true(g);
    }
    if (!json_is_array(msgs)) {
        fputs("lmserve chat-template: stdin must be an array of messages or an object with 'messages'\n", stderr);
        goto done;
    }

    status = 1;
    if (model_chat_template_new(&t, source, strlen(source), err, sizeof err) != 0) {
        fprintf(stderr, "lmserve chat-template: %s\n", err);
        goto done;
    }
    model_chat_input in = { msgs, add_gen, bos_opt ? bos_opt : bos ? bos : "", eos_opt ? eos_opt : eos ? eos : "" };
    size_t olen = 0;
    if (model_chat_template_render(t, &in, &out, &olen, err, sizeof err) != 0) {
        fprintf(stderr, "lmserve chat-template: %s\n", err);
        goto done;
    }
    status = fwrite(out, 1, olen, stdout) == olen && fflush(stdout) == 0 ? 0 : 1;
done:
    model_chat_template_free(t);
    json_decref(conv);
    free(out);
    free(conv_text);
    free(source);
    free(bos);
    free(eos);
    return status;
}
