/* chat.c -- how /v1/chat/completions turns messages into a prompt: the model's chat template
 * (or the one --chat-template names), rendered by model/tokenizers/chat_template.c, or -- for a
 * base model without one -- the plain "role: content" lines of validate.c's chat_render.
 *
 * At start-up chat_setup picks the template: --chat-template NAME (a built-in), FILE (Jinja
 * source) or "none" (plain rendering even if the model has a template); else the model's own
 * (GGUF tokenizer.chat_template, HF tokenizer_config.json).  It compiles the template and
 * renders a probe conversation to learn the template's end of turn: the text the template
 * writes right after an assistant message.  The first control token in it (<|im_end|>,
 * <|eot_id|>, <end_of_turn>, <|end|>, </s>) ends a chat's generation like EOS; a template
 * whose turns end in plain text ("\n### ") gets that text as a stop string instead.  A
 * template that does not compile, or fails on the probe with something this evaluator lacks,
 * is "not understood": start-up prints a warning, /v1/models shows chat_template.error, and
 * chat requests are answered 501 naming the problem -- never rendered some other way.
 *
 * The rendered prompt is tokenized with the model's control tokens parsed
 * (model_tokenize_special), as transformers' apply_chat_template(tokenize=True) and llama.cpp
 * do: "<|im_start|>" written by the template becomes its token.  The template decides about
 * BOS (bos_token in its text); none is added on top.
 */
#include "server/chat.h"

#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_MAX_TEMPLATE (1u << 20) /* a template file larger than 1 MiB is refused */

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* The text of a special token (BOS/EOS) for the template's bos_token / eos_token: "" if none. */
static char *token_text(const struct model *m, int32_t id)
{
    size_t n = 0;
    const char *s = id >= 0 ? model_token_bytes(m, id, &n) : NULL;
    char *d = malloc(n + 1);
    if (!d) return NULL;
    if (s && n) memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *read_file(const char *path, char *msg, size_t msglen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, msglen, "cannot read chat template '%s': %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(CHAT_MAX_TEMPLATE + 1);
    size_t n = buf ? fread(buf, 1, CHAT_MAX_TEMPLATE + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad || n > CHAT_MAX_TEMPLATE) {
        snprintf(msg, msglen, "cannot read chat template '%s': %s", path,
                 !buf  ? "out of memory"
                 : bad ? "read error"
                       : "larger than 1 MiB");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* Render [user, assistant] without a generation prompt and find what follows the assistant's
 * text: the end of a turn. */
static void learn_stop(chat_cfg *c, struct model *m)
{
    static const char probe[] = "[{\"role\": \"user\", \"content\": \"\\u0001user\\u0001\"},"
                                " {\"role\": \"assistant\", \"content\": \"\\u0001answer\\u0001\"}]";
    json_t *msgs = json_loads(probe, 0, NULL);
    if (!msgs) return;
    model_chat_input in = { msgs, 0, c->bos, c->eos };
    char *text = NULL;
    size_t len = 0;
    char err[256];
    int rc = model_chat_template_render(c->tpl, &in, &text, &len, err, sizeof err);
    json_decref(msgs);
    if (rc == MODEL_ECHAT_UNSUPPORTED || rc == MODEL_ECHAT_EVAL) {
        snprintf(c->error, sizeof c->error, "%s", err);
        return;
    }
    if (rc != 0) return; /* the template refused the probe (a raise): no end of turn known */
    const char *a = strstr(text, "\001answer\001");
    if (!a) {
        free(text);
        return;
    }
    const char *tail = a + strlen("\001answer\001");
    size_t tn = strlen(tail);
    int32_t toks[64];
    int n = model_tokenize_special(m, tail, tn, 0, toks, 64);
    for (int i = 0; i < n && i < 64; i++)
        if (model_token_is_special(m, toks[i])) {
            c->stop_token = toks[i];
            size_t bl = 0;
            const char *b = model_token_bytes(m, toks[i], &bl);
            snprintf(c->stop_text, sizeof c->stop_text, "%.*s", (int)bl, b ? b : "");
            free(text);
            return;
        }
    /* no control token: the turn's closing text, up to its first line break, as a stop string */
    while (tn && (*tail == ' ' || *tail == '\n' || *tail == '\t' || *tail == '\r')) tail++, tn--;
    size_t k = 0;
    while (k < tn && tail[k] != '\n' && k + 1 < sizeof c->stop_text) k++;
    if (k) {
        memcpy(c->stop_text, tail, k);
        c->stop_text[k] = '\0';
        c->stop_is_text = 1;
    }
    free(text);
}

int chat_setup(chat_cfg *c, struct model *m, const char *option, char *msg, size_t msglen)
{
    memset(c, 0, sizeof *c);
    c->stop_token = -1;
    msg[0] = '\0';
    const model_info *mi = model_get_info(m);
    char *owned = NULL;
    const char *src = NULL;
    if (option && !strcmp(option, "none")) {
        snprintf(c->source, sizeof c->source, "option");
        snprintf(c->name, sizeof c->name, "none");
        return 0;
    }
    if (option) {
        src = model_chat_template_builtin(option);
        if (src) {
            snprintf(c->source, sizeof c->source, "builtin");
            snprintf(c->name, sizeof c->name, "%s", option);
        } else {
            owned = read_file(option, msg, msglen);
            if (!owned) return -1;
            src = owned;
            snprintf(c->source, sizeof c->source, "file");
            snprintf(c->name, sizeof c->name, "%s", model_chat_template_family(src));
        }
    } else if (mi->chat_template && mi->chat_template[0]) {
        src = mi->chat_template;
        snprintf(c->source, sizeof c->source, "model");
        snprintf(c->name, sizeof c->name, "%s", model_chat_template_family(src));
    } else {
        snprintf(c->source, sizeof c->source, "none");
        snprintf(c->name, sizeof c->name, "none");
        return 0;
    }
    c->bos = token_text(m, mi->bos_id);
    c->eos = token_text(m, mi->eos_id);
    c->source_text = dup_str(src);
    free(owned);
    if (!c->bos || !c->eos || !c->source_text) {
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    char err[256];
    int rc = model_chat_template_new(&c->tpl, c->source_text, strlen(c->source_text), err, sizeof err);
    if (rc == MODEL_ENOMEM) {
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    if (rc)
        snprintf(c->error, sizeof c->error, "%s", err);
    else
        learn_stop(c, m);
    if (c->error[0]) {
        model_chat_template_free(c->tpl);
        c->tpl = NULL;
        /* an explicit --chat-template that cannot be used is a start-up error */
        if (option) {
            snprintf(msg, msglen, "--chat-template %s: %s", option, c->error);
            return -1;
        }
    }
    return 0;
}

void chat_free(chat_cfg *c)
{
    if (!c) return;
    model_chat_template_free(c->tpl);
    free(c->bos);
    free(c->eos);
    free(c->source_text);
    memset(c, 0, sizeof *c);
}

int chat_active(const chat_cfg *c) { return c && (c->tpl || c->error[0]); }

json_t *chat_card(const chat_cfg *c)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "name", json_string(c->name));
    json_object_set_new(o, "source", json_string(c->source));
    json_object_set_new(o, "supported", json_boolean(c->tpl != NULL || !c->error[0]));
    if (c->error[0]) json_object_set_new(o, "error", json_string(c->error));
    if (c->stop_token >= 0 || c->stop_is_text) json_object_set_new(o, "stop", json_string(c->stop_text));
    return o;
}

int chat_prompt(const chat_cfg *c, struct model *m, json_t *messages, int32_t **out, int *n_out, api_error *err)
{
    *out = NULL;
    *n_out = 0;
    if (chat_check_messages(messages, err) < 0) return -1;
    if (!c->tpl) {
        api_error_set(err, 501, "server_error", "messages", "chat_template_unsupported",
                      "this model's chat template cannot be rendered (%s); start the server with "
                      "--chat-template NAME|FILE to choose one",
                      c->error);
        return -1;
    }
    model_chat_input in = { messages, 1, c->bos, c->eos };
    char *text = NULL;
    size_t len = 0;
    char why[256];
    int rc = model_chat_template_render(c->tpl, &in, &text, &len, why, sizeof why);
    if (rc) {
        if (rc == MODEL_ENOMEM)
            api_error_set(err, 503, "server_error", NULL, "out_of_memory", "out of memory");
        else if (rc == MODEL_ECHAT_UNSUPPORTED)
            api_error_set(err, 501, "server_error", "messages", "chat_template_unsupported",
                          "the chat template cannot render this conversation: %s", why);
        else
            api_error_set(err, 400, "invalid_request_error", "messages", "invalid_value",
                          "the model's chat template refused the conversation: %s", why);
        return -1;
    }
    int cap = (int)(len < 1024 ? len + 8 : 1024);
    for (;;) {
        int32_t *buf = malloc(sizeof *buf * (size_t)cap);
        if (!buf) {
            free(text);
            api_error_set(err, 503, "server_error", NULL, "out_of_memory", "out of memory");
            return -1;
        }
        int n = model_tokenize_special(m, text, len, 0, buf, cap);
        if (n < 0 || n <= cap) {
            free(text);
            if (n <= 0) {
                free(buf);
                api_error_set(err, 400, "invalid_request_error", "messages", "invalid_value",
                              n < 0 ? "'messages' could not be tokenized" : "'messages' rendered to no tokens");
                return -1;
            }
            *out = buf;
            *n_out = n;
            return 0;
        }
        free(buf);
        cap = n;
    }
}
