/* fuzz_chat_template.c -- libFuzzer target: the chat-template evaluator
 * (model/tokenizers/chat_template.c) on hostile templates and conversations.
 *
 * Input layout: the template's Jinja source, then a NUL byte, then the messages as JSON
 * (an array; anything else renders the fixed conversation below).  Templates come from model
 * files and --chat-template, messages from any client, so both sides are fuzzed.  Checked:
 *   - compiling returns 0 or a documented error with a non-empty message;
 *   - rendering returns 0 or a documented error with a non-empty message, never crashes or
 *     runs away (the evaluator's own limits: output, memory, loop steps, nesting);
 *   - a successful render is NUL-terminated at the length it reports, within 8 MiB;
 *   - rendering the same input twice gives the same verdict and the same text;
 *   - family recognition accepts any text. */
#include "model/model.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_CHECK(cond, what)                                   \
    do {                                                       \
        if (!(cond)) {                                         \
            fprintf(stderr, "fuzz_chat_template: %s\n", what); \
            abort();                                           \
        }                                                      \
    } while (0)

static const char fixed_conv[] =
    "[{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \"hi\"},"
    " {\"role\": \"assistant\", \"content\": \" ok \"}, {\"role\": \"user\", \"content\": \"more\"}]";

static int known_compile(int rc)
{
    return rc == 0 || rc == MODEL_EFORMAT || rc == MODEL_ECHAT_UNSUPPORTED || rc == MODEL_ECHAT_EVAL ||
           rc == MODEL_ENOMEM;
}

static int known_render(int rc)
{
    return rc == 0 || rc == MODEL_ECHAT_RAISE || rc == MODEL_ECHAT_UNSUPPORTED || rc == MODEL_ECHAT_EVAL ||
           rc == MODEL_ENOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    char *src = malloc(tlen + 1);
    if (!src) return 0;
    memcpy(src, data, tlen);
    src[tlen] = '\0';
    (void)model_chat_template_family(src);

    char err[512] = "";
    model_chat_template *t = NULL;
    int rc = model_chat_template_new(&t, src, tlen, err, sizeof err);
    FZ_CHECK(known_compile(rc), "unknown compile error code");
    FZ_CHECK(rc == 0 ? t != NULL : (t == NULL && (rc == MODEL_ENOMEM || err[0])), "compile result and message");
    free(src);
    if (rc) return 0;

    json_t *msgs = NULL;
    if (nul) msgs = json_loadb((const char *)nul + 1, size - tlen - 1, 0, NULL);
    if (!json_is_array(msgs)) {
        json_decref(msgs);
        msgs = json_loads(fixed_conv, 0, NULL);
    }
    FZ_CHECK(msgs != NULL, "fixed conversation");
    model_chat_input in = { msgs, 1, "<s>", "</s>" };
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    int ra = model_chat_template_render(t, &in, &a, &na, err, sizeof err);
    FZ_CHECK(known_render(ra), "unknown render error code");
    FZ_CHECK(ra == 0 ? a != NULL : (a == NULL && (ra == MODEL_ENOMEM || err[0])), "render result and message");
    if (ra == 0) FZ_CHECK(na <= (8u << 20) && a[na] == '\0', "rendered text length");
    int rb = model_chat_template_render(t, &in, &b, &nb, err, sizeof err);
    FZ_CHECK(ra == rb, "the same input renders twice alike (verdict)");
    if (ra == 0) FZ_CHECK(na == nb && memcmp(a, b, na) == 0, "the same input renders twice alike (text)");
    free(a);
    free(b);
    json_decref(msgs);
    model_chat_template_free(t);
    return 0;
}
