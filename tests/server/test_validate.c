/* test_validate.c -- request JSON -> job parameters: defaults, every 400 and the
 * parameter it names, prompt forms, chat template.  Uses a byte tokenizer
 * (BOS = 1, byte b = token 3 + b) so no model is needed. */
#include "server/server_internal.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static int byte_tok(void *cls, const char *text, size_t len, int add_bos, int32_t *out, int cap)
{
    (void)cls;
    int n = 0;
    if (add_bos) {
        if (n < cap) out[n] = 1;
        n++;
    }
    for (size_t i = 0; i < len; i++) {
        if (n < cap) out[n] = 3 + (unsigned char)text[i];
        n++;
    }
    return n;
}

static const validate_ctx VC = { .model_id = "tiny",
                                 .vocab = 300,
                                 .ctx = 64,
                                 .add_bos = 1,
                                 .bos_id = 1,
                                 .max_tokens_limit = 100,
                                 .max_choices = 4,
                                 .tokenize = byte_tok,
                                 .tok_cls = NULL };

static int run(int kind, const char *body, job_params *p, api_error *e)
{
    memset(e, 0, sizeof *e);
    return validate_request(&VC, kind, body, strlen(body), p, e);
}

Test(validate, defaults)
{
    job_params p;
    api_error e;
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": \"hi\"}", &p, &e), 0, "%s", e.message);
    cr_expect_eq(p.max_tokens, 16);
    cr_expect_eq(p.n, 1);
    cr_expect_eq(p.n_prompts, 1);
    cr_expect_eq(p.prompt_lens[0], 3);
    cr_expect_eq(p.prompts[0][0], 1);
    cr_expect_eq(p.prompts[0][1], 3 + 'h');
    cr_expect_eq(p.echo_from[0], 1);
    cr_expect_float_eq(p.sp.temperature, 1.0f, 0);
    cr_expect_float_eq(p.sp.top_p, 1.0f, 0);
    cr_expect_eq(p.sp.top_k, 0);
    cr_expect_eq(p.logprobs, -1);
    cr_expect_eq(p.stream, 0);
    cr_expect_eq(p.n_stops, 0);
    cr_expect_eq(p.has_seed, 0);
    job_params_clear(&p);
}

Test(validate, all_fields)
{
    job_params p;
    api_error e;
    const char *body =
        "{\"model\": \"tiny\", \"prompt\": [5, 6, 7], \"max_tokens\": 0, \"temperature\": 0,"
        " \"top_p\": 0.5, \"top_k\": 7, \"min_p\": 0.1, \"repetition_penalty\": 1.3,"
        " \"presence_penalty\": -2, \"frequency_penalty\": 2, \"logit_bias\": {\"10\": -100, \"11\": 2.5},"
        " \"seed\": -1, \"stop\": [\"a\", \"bc\"], \"n\": 2, \"logprobs\": 5, \"echo\": true,"
        " \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"user\": \"u\"}";
    cr_assert_eq(run(JOB_COMPLETION, body, &p, &e), 0, "%s", e.message);
    cr_expect_eq(p.prompt_lens[0], 3);
    cr_expect_eq(p.echo_from[0], 0);
    cr_expect_eq(p.max_tokens, 0);
    cr_expect_float_eq(p.sp.temperature, 0.0f, 0);
    cr_expect_float_eq(p.sp.top_p, 0.5f, 0);
    cr_expect_eq(p.sp.top_k, 7);
    cr_expect_float_eq(p.sp.min_p, 0.1f, 1e-7);
    cr_expect_float_eq(p.sp.repetition_penalty, 1.3f, 1e-7);
    cr_expect_float_eq(p.sp.presence_penalty, -2.0f, 0);
    cr_expect_float_eq(p.sp.frequency_penalty, 2.0f, 0);
    cr_assert_eq(p.sp.n_bias, 2);
    for (int i = 0; i < 2; i++) {
        if (p.sp.bias_ids[i] == 10)
            cr_expect(isinf(p.sp.bias_values[i]) && p.sp.bias_values[i] < 0);
        else
            cr_expect_float_eq(p.sp.bias_values[i], 2.5f, 0);
    }
    cr_expect_eq(p.sp.seed, UINT64_MAX);
    cr_expect_eq(p.has_seed, 1);
    cr_assert_eq(p.n_stops, 2);
    cr_expect_str_eq(p.stops[1], "bc");
    cr_expect_eq(p.n, 2);
    cr_expect_eq(p.logprobs, 5);
    cr_expect_eq(p.echo, 1);
    cr_expect_eq(p.stream, 1);
    cr_expect_eq(p.include_usage, 1);
    job_params_clear(&p);
}

Test(validate, several_prompts)
{
    job_params p;
    api_error e;
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": [\"ab\", [9, 8]], \"n\": 2}", &p, &e), 0, "%s", e.message);
    cr_expect_eq(p.n_prompts, 2);
    cr_expect_eq(p.prompt_lens[0], 3);
    cr_expect_eq(p.prompt_lens[1], 2);
    job_params_clear(&p);
    /* 3 prompts x n 2 = 6 choices > 4 */
    cr_expect_eq(run(JOB_COMPLETION, "{\"prompt\": [\"a\", \"b\", \"c\"], \"n\": 2}", &p, &e), -1);
    cr_expect_str_eq(e.param, "n");
}

static void expect_400(int kind, const char *body, const char *param)
{
    job_params p;
    api_error e;
    cr_assert_eq(run(kind, body, &p, &e), -1, "accepted: %s", body);
    cr_expect_eq(e.status, 400, "%s -> %d", body, e.status);
    if (param)
        cr_expect(e.param && !strcmp(e.param, param), "%s -> param %s, want %s", body, e.param ? e.param : "(null)",
                  param);
    else
        cr_expect_null(e.param, "%s", body);
    cr_expect_str_eq(e.type, "invalid_request_error");
    cr_expect_gt(strlen(e.message), 0);
    char *json = api_error_json(&e);
    cr_expect(strstr(json, "\"error\""));
    free(json);
}

Test(validate, errors_name_the_parameter)
{
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\"", NULL);
    expect_400(JOB_COMPLETION, "[1]", NULL);
    expect_400(JOB_COMPLETION, "", NULL);
    expect_400(JOB_COMPLETION, "{}", "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"\"}", "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": []}", "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": [1, 300]}", "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": [1, -1]}", "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": [\"a\", 5]}", "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": 5}", "prompt");
    char big[256];
    snprintf(big, sizeof big, "{\"prompt\": \"%070d\", \"context_overflow\": \"shift\"}", 0); /* 71 tokens > ctx 64 */
    expect_400(JOB_COMPLETION, big, "prompt");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"temperature\": -0.1}", "temperature");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"temperature\": \"1\"}", "temperature");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"top_p\": 0}", "top_p");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"top_p\": 1.01}", "top_p");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"top_k\": -1}", "top_k");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"top_k\": 1.5}", "top_k");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"min_p\": 1.5}", "min_p");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"repetition_penalty\": 0}", "repetition_penalty");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"repetition_penalty\": -1}", "repetition_penalty");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"presence_penalty\": 2.5}", "presence_penalty");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"frequency_penalty\": -3}", "frequency_penalty");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"max_tokens\": -5}", "max_tokens");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"max_tokens\": 101}", "max_tokens");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"n\": 0}", "n");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"n\": 5}", "n");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": 6}", "logprobs");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"300\": 1}}", "logit_bias");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"1x\": 1}}", "logit_bias");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"\": 1}}", "logit_bias");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"5\": 101}}", "logit_bias");
    {
        char all[300 * 16 + 64] = "{\"prompt\": \"x\", \"logit_bias\": {";
        for (int i = 0; i < 300; i++)
            snprintf(all + strlen(all), sizeof all - strlen(all), "%s\"%d\": -100", i ? ", " : "", i);
        strcat(all, "}}");
        expect_400(JOB_COMPLETION, all, "logit_bias");
    }
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"stop\": \"\"}", "stop");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"stop\": [1]}", "stop");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", "stream_options");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"stream\": 1}", "stream");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"echo\": \"yes\"}", "echo");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"seed\": 1.5}", "seed");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"model\": 3}", "model");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"best_of\": 3}", "best_of");
    expect_400(JOB_CHAT, "{}", "messages");
    expect_400(JOB_CHAT, "{\"messages\": []}", "messages");
    expect_400(JOB_CHAT, "{\"messages\": [{\"content\": \"x\"}]}", "messages");
    expect_400(JOB_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages");
    expect_400(JOB_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
               "top_logprobs");
    expect_400(JOB_CHAT,
               "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true, \"top_logprobs\": 21}",
               "top_logprobs");
}

Test(validate, unknown_model_is_404)
{
    job_params p;
    api_error e;
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": \"x\", \"model\": \"gpt-4\"}", &p, &e), -1);
    cr_expect_eq(e.status, 404);
    cr_expect_str_eq(e.code, "model_not_found");
}

Test(validate, chat_template)
{
    api_error e;
    json_t *m = json_loads("[{\"role\": \"system\", \"content\": \"Be kind.\"},"
                           " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hi\"}, {\"type\": "
                           "\"text\", \"text\": \"!\"}]}]",
                           0, NULL);
    char *s = chat_render(m, &e);
    cr_assert_not_null(s);
    cr_expect_str_eq(s, "system: Be kind.\nuser: Hi!\nassistant:");
    free(s);
    json_decref(m);
    job_params p;
    cr_assert_eq(
        run(JOB_CHAT,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}], \"logprobs\": true, \"top_logprobs\": 3}", &p,
            &e),
        0, "%s", e.message);
    /* BOS + "user: yo\nassistant:" */
    cr_expect_eq(p.prompt_lens[0], 1 + (int)strlen("user: yo\nassistant:"));
    cr_expect_eq(p.logprobs, 3);
    cr_expect_str_eq(p.stops[p.n_stops - 1], "\nuser:");
    /* default max_tokens for chat: the rest of the window */
    cr_expect_eq(p.max_tokens, 64 - p.prompt_lens[0]);
    job_params_clear(&p);
}

Test(validate, penalty_last_n)
{
    job_params p;
    api_error e;
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": \"x\", \"penalty_last_n\": 8, \"repetition_penalty\": 1.2}", &p, &e),
                 0, "%s", e.message);
    cr_expect_eq(p.sp.penalty_last_n, 8);
    job_params_clear(&p);
    cr_assert_eq(
        run(JOB_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"penalty_last_n\": 0}", &p, &e), 0);
    cr_expect_eq(p.sp.penalty_last_n, 0);
    job_params_clear(&p);
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"penalty_last_n\": -1}", "penalty_last_n");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"penalty_last_n\": 0.5}", "penalty_last_n");
}

/* A prompt of n tokens: BOS + n - 1 bytes. */
static char *long_prompt(int n, const char *extra)
{
    static char b[1024];
    int o = snprintf(b, sizeof b, "{\"prompt\": \"");
    for (int i = 0; i < n - 1; i++) b[o++] = 'a' + i % 26;
    snprintf(b + o, sizeof b - (size_t)o, "\"%s}", extra);
    return b;
}

Test(validate, context_overflow)
{
    job_params p;
    api_error e;
    /* slide, the default: a prompt longer than the window is accepted (the engine keeps its last 64) */
    cr_assert_eq(run(JOB_COMPLETION, long_prompt(71, ""), &p, &e), 0, "%s", e.message);
    cr_expect_eq(p.prompt_lens[0], 71);
    cr_expect_eq(p.context_overflow, SAMPLER_CROP_SLIDE);
    job_params_clear(&p);
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": \"x\", \"context_overflow\": \"stop\"}", &p, &e), 0);
    cr_expect_eq(p.context_overflow, SAMPLER_CROP_STOP);
    job_params_clear(&p);
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": \"x\", \"context_overflow\": null}", &p, &e), 0);
    cr_expect_eq(p.context_overflow, SAMPLER_CROP_SLIDE);
    job_params_clear(&p);
    /* shift and stop do not crop prompts */
    expect_400(JOB_COMPLETION, long_prompt(65, ", \"context_overflow\": \"stop\""), "prompt");
    cr_assert_eq(run(JOB_COMPLETION, long_prompt(64, ", \"context_overflow\": \"stop\""), &p, &e), 0);
    job_params_clear(&p);
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"context_overflow\": \"crop\"}", "context_overflow");
    expect_400(JOB_COMPLETION, "{\"prompt\": \"x\", \"context_overflow\": 1}", "context_overflow");
    /* echo + logprobs past the window: one window per position, at most max_tokens_limit (100) of them */
    cr_assert_eq(run(JOB_COMPLETION, long_prompt(64 + 1 + 100, ", \"echo\": true, \"logprobs\": 0"), &p, &e), 0, "%s",
                 e.message);
    job_params_clear(&p);
    expect_400(JOB_COMPLETION, long_prompt(64 + 1 + 101, ", \"echo\": true, \"logprobs\": 0"), "prompt");
    cr_assert_eq(run(JOB_COMPLETION, long_prompt(64 + 1 + 101, ", \"echo\": true"), &p, &e), 0,
                 "echo alone scores nothing");
    job_params_clear(&p);
    /* chat default under slide: the rest of the window, at least half of it */
    char chat[512];
    snprintf(chat, sizeof chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"%060d\"}]}", 0);
    cr_assert_eq(run(JOB_CHAT, chat, &p, &e), 0, "%s", e.message);
    cr_expect_gt(p.prompt_lens[0], 64);
    cr_expect_eq(p.max_tokens, 32);
    job_params_clear(&p);
}

/* logit_bias keys are token ids: the same id however written is named once. */
Test(validate, logit_bias_keys_are_ids)
{
    job_params p;
    api_error e;
    const char *dups[] = { "{\"1\": 1, \"01\": 2}", "{\"7\": -100, \"007\": -100}", "{\"0\": 1, \"00\": 1}",
                           "{\"299\": 1, \"5\": 1, \"0299\": 1}" };
    for (size_t i = 0; i < sizeof dups / sizeof dups[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"prompt\": \"x\", \"logit_bias\": %s}", dups[i]);
        cr_expect_eq(run(JOB_COMPLETION, body, &p, &e), -1, "%s", body);
        cr_expect_eq(e.status, 400);
        cr_expect_str_eq(e.param ? e.param : "", "logit_bias");
        cr_expect(strstr(e.message, "more than once"), "%s", e.message);
    }
    const char *bad[] = { "+1", " 1", "1 ", "-0", "0x1", "1e1", "1.0" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"prompt\": \"x\", \"logit_bias\": {\"%s\": 1}}", bad[i]);
        expect_400(JOB_COMPLETION, body, "logit_bias");
    }
    /* leading zeros name the plain id */
    cr_assert_eq(run(JOB_COMPLETION, "{\"prompt\": \"x\", \"logit_bias\": {\"0042\": 3, \"7\": -1}}", &p, &e), 0, "%s",
                 e.message);
    cr_assert_eq(p.sp.n_bias, 2);
    int found = 0;
    for (int i = 0; i < 2; i++)
        if (p.sp.bias_ids[i] == 42) {
            cr_expect_float_eq(p.sp.bias_values[i], 3.0f, 0);
            found = 1;
        }
    cr_expect(found);
    job_params_clear(&p);
}

/* A non-streamed answer that could not fit in response_limit is refused up front:
 * n x max_tokens tokens x the smallest logprobs entry; streams are not. */
Test(validate, response_limit_estimate)
{
    validate_ctx vc = VC;
    vc.vocab = 300;
    vc.max_tokens_limit = 4096;
    vc.max_choices = 64;
    vc.response_limit = 16u << 20;
    job_params p;
    api_error e;
    const char *issue = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 32, \"max_tokens\": 1024,"
                        " \"logprobs\": true, \"top_logprobs\": 20%s}";
    char body[256];
    snprintf(body, sizeof body, issue, "");
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &e), -1);
    cr_expect_eq(e.status, 400);
    cr_expect_str_eq(e.param ? e.param : "", "max_tokens");
    cr_expect_str_eq(e.code ? e.code : "", "response_too_large");
    cr_expect(strstr(e.message, "16777216"), "%s", e.message);
    /* streamed: only the unsent bytes are held (--outbox-limit) */
    snprintf(body, sizeof body, issue, ", \"stream\": true");
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &e), 0, "%s", e.message);
    job_params_clear(&p);
    /* no limit */
    vc.response_limit = 0;
    snprintf(body, sizeof body, issue, "");
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &e), 0, "%s", e.message);
    job_params_clear(&p);
    /* at the edge: per token exactly output_min_token_bytes */
    size_t per = output_min_token_bytes(JOB_CHAT, 20, vc.vocab);
    cr_assert_gt(per, 20 * 30);
    vc.response_limit = per * 32 * 1024;
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &e), 0, "%s", e.message);
    job_params_clear(&p);
    vc.response_limit--;
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &e), -1);
    /* without logprobs a token may add no bytes: nothing to refuse up front */
    vc.response_limit = 1;
    const char *plain = "{\"prompt\": \"x\", \"n\": 64, \"max_tokens\": 4096}";
    cr_assert_eq(validate_request(&vc, JOB_COMPLETION, plain, strlen(plain), &p, &e), 0, "%s", e.message);
    job_params_clear(&p);
    /* echo counts the prompt's entries too */
    vc.response_limit = output_min_token_bytes(JOB_COMPLETION, 5, vc.vocab) * 10;
    const char *echo =
        "{\"prompt\": \"abcdefghi\", \"max_tokens\": 0, \"logprobs\": 5, \"echo\": true}"; /* 10 tokens */
    cr_assert_eq(validate_request(&vc, JOB_COMPLETION, echo, strlen(echo), &p, &e), 0, "%s", e.message);
    job_params_clear(&p);
    vc.response_limit--;
    cr_assert_eq(validate_request(&vc, JOB_COMPLETION, echo, strlen(echo), &p, &e), -1);
    cr_expect_str_eq(e.code ? e.code : "", "response_too_large");
}
