/* chat.h -- how /v1/chat/completions renders messages (server/chat.c): the model's chat
 * template or the one --chat-template names.  Internal to server/. */
#ifndef LMSERVE_SERVER_CHAT_H
#define LMSERVE_SERVER_CHAT_H

#include "server/server_internal.h"
#include "model/model.h"

typedef struct chat_cfg {
    model_chat_template *tpl; /* the compiled template; NULL: plain rendering or not understood */
    char *source_text;        /* its Jinja source (GET /tokenizer_info shows it) */
    char *bos, *eos;          /* the model's BOS / EOS text for bos_token / eos_token */
    char name[64];            /* family ("chatml", "llama3", ... "custom") or "none" */
    char source[16];          /* "model", "builtin", "file", "option" (--chat-template none), "none" */
    char error[256];          /* not understood: why (chat requests get 501) */
    int32_t stop_token;       /* the template's end of turn, or -1 */
    int stop_is_text;         /* stop_text is a stop string, not a token's spelling */
    char stop_text[64];
} chat_cfg;

/* Choose and compile the template (option: --chat-template's value or NULL).  0, or -1 with
 * msg set when an explicit --chat-template cannot be used (the server does not start).  A
 * model's own template that is not understood is not an error here: c->error says why. */
int chat_setup(chat_cfg *c, struct model *m, const char *option, char *msg, size_t msglen);
void chat_free(chat_cfg *c);
/* Nonzero when chats go through chat_prompt (a template was found, understood or not). */
int chat_active(const chat_cfg *c);
/* The /v1/models "chat_template" object: name, source, supported, error, stop. */
json_t *chat_card(const chat_cfg *c);
/* Render messages with the template and tokenize them (control tokens parsed).  0 and a
 * malloc'd token list, or -1 with err: 400 for bad messages or the template's own refusal,
 * 501 when the template is not understood, 503 out of memory. */
int chat_prompt(const chat_cfg *c, struct model *m, json_t *messages, int32_t **out, int *n_out, api_error *err);

#endif
