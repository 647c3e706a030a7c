/* test_respond.c -- stop-string hold-back, UTF-8 helpers, error and SSE JSON,
 * the job outbox and the Prometheus text. */
#include "server/server_internal.h"

#include <criterion/criterion.h>
#include <string.h>

static char *stops2[] = {"END", "\nuser:"};

/* Feed pieces; collect released text. */
static int feed(stop_matcher *sm, const char *const *pieces, int n, char *out)
{
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t rel;
        int hit = stop_matcher_push(sm, stops2, 2, pieces[i], strlen(pieces[i]), &rel);
        strncat(out, sm->pending.data, rel);
        stop_matcher_consume(sm, rel);
        if (hit) return 1;
    }
    return 0;
}

Test(stop, holds_back_possible_prefix)
{
    stop_matcher sm = {0};
    size_t rel;
    cr_expect_eq(stop_matcher_push(&sm, stops2, 2, "hello E", 7, &rel), 0);
    cr_expect_eq(rel, 6); /* "E" could start "END" */
    stop_matcher_consume(&sm, rel);
    cr_expect_eq(stop_matcher_push(&sm, stops2, 2, "x", 1, &rel), 0);
    cr_expect_eq(rel, 2); /* "Ex" cannot */
    stop_matcher_free(&sm);
}

Test(stop, match_across_pieces_is_never_emitted)
{
    stop_matcher sm = {0};
    char out[128];
    const char *pieces[] = {"The ", "E", "N", "D of it"};
    cr_expect_eq(feed(&sm, pieces, 4, out), 1);
    cr_expect_str_eq(out, "The ");
    stop_matcher_free(&sm);
    stop_matcher sm2 = {0};
    const char *p2[] = {"a\nus", "er", "x: ok", "\nuser: hi"};
    cr_expect_eq(feed(&sm2, p2, 4, out), 1);
    cr_expect_str_eq(out, "a\nuserx: ok");
    stop_matcher_free(&sm2);
}

Test(stop, earliest_match_wins)
{
    stop_matcher sm = {0};
    size_t rel;
    cr_expect_eq(stop_matcher_push(&sm, stops2, 2, "ab\nuser:cdEND", 13, &rel), 1);
    cr_expect_eq(rel, 2);
    stop_matcher_free(&sm);
}

Test(utf8, helpers)
{
    cr_expect_eq(utf8_valid_prefix("a\xC3\xA9", 3), 3);
    cr_expect_eq(utf8_valid_prefix("a\xC3", 2), 1);
    cr_expect_eq(utf8_valid_prefix("\xED\xA0\x80", 3), 0); /* surrogate */
    cr_expect_eq(utf8_valid_prefix("\xC0\xAF", 2), 0);     /* overlong */
    cr_expect_eq(utf8_count("h\xC3\xA9\xF0\x9F\x98\x80", 7), 3);
    json_t *s = json_bytes("a\xFF" "b", 3);
    cr_expect_str_eq(json_string_value(s), "a\xEF\xBF\xBD" "b");
    json_decref(s);
}

Test(respond, error_json_shape)
{
    api_error e;
    api_error_set(&e, 400, "invalid_request_error", "top_p", "invalid_value", "bad %s", "top_p");
    char *s = api_error_json(&e);
    json_t *o = json_loads(s, 0, NULL);
    json_t *err = json_object_get(o, "error");
    cr_expect_str_eq(json_string_value(json_object_get(err, "message")), "bad top_p");
    cr_expect_str_eq(json_string_value(json_object_get(err, "type")), "invalid_request_error");
    cr_expect_str_eq(json_string_value(json_object_get(err, "param")), "top_p");
    cr_expect_str_eq(json_string_value(json_object_get(err, "code")), "invalid_value");
    json_decref(o);
    free(s);
}

static job *make_job(int kind, int n)
{
    job_params p = {0};
    p.kind = kind;
    p.n = n;
    p.n_prompts = 1;
    p.prompts = calloc(1, sizeof *p.prompts);
    p.prompts[0] = calloc(3, sizeof(int32_t));
    p.prompt_lens = calloc(1, sizeof(int));
    p.prompt_lens[0] = 3;
    p.echo_from = calloc(1, sizeof(int));
    return job_new(NULL, &p, "tiny");
}

Test(respond, sse_chunks)
{
    job *j = make_job(JOB_COMPLETION, 1);
    cr_expect_eq(j->prompt_tokens, 3);
    char *ev = respond_chunk(j, 0, "hi", 2, NULL, NULL, 0);
    cr_assert(!strncmp(ev, "data: {", 7));
    size_t n = strlen(ev);
    cr_expect(!strcmp(ev + n - 2, "\n\n"));
    cr_expect_null(memchr(ev, '\n', n - 2)); /* one line per event */
    json_t *o = json_loads(ev + 6, 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(o, "object")), "text_completion");
    json_t *c = json_array_get(json_object_get(o, "choices"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(c, "text")), "hi");
    cr_expect(json_is_null(json_object_get(c, "finish_reason")));
    json_decref(o);
    free(ev);
    j->completion_tokens = 5;
    ev = respond_usage_chunk(j);
    o = json_loads(ev + 6, 0, NULL);
    cr_expect_eq(json_array_size(json_object_get(o, "choices")), 0);
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(o, "usage"), "total_tokens")), 8);
    json_decref(o);
    free(ev);
    job_unref(j);

    j = make_job(JOB_CHAT, 1);
    ev = respond_chunk(j, 0, "", 0, NULL, NULL, 1);
    o = json_loads(ev + 6, 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(o, "object")), "chat.completion.chunk");
    json_t *d = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "delta");
    cr_expect_str_eq(json_string_value(json_object_get(d, "role")), "assistant");
    json_decref(o);
    free(ev);
    ev = respond_chunk(j, 0, "", 0, NULL, "stop", 0);
    o = json_loads(ev + 6, 0, NULL);
    c = json_array_get(json_object_get(o, "choices"), 0);
    cr_expect_eq(json_object_size(json_object_get(c, "delta")), 0);
    cr_expect_str_eq(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(o);
    free(ev);
    job_unref(j);
}

Test(respond, final_body)
{
    job *j = make_job(JOB_COMPLETION, 2);
    sbuf_append(&j->choices[0].text, "one", 3);
    j->choices[0].finish_reason = "stop";
    sbuf_append(&j->choices[1].text, "two", 3);
    j->choices[1].finish_reason = "length";
    j->completion_tokens = 4;
    char *s = respond_final(j);
    json_t *o = json_loads(s, 0, NULL);
    json_t *ch = json_object_get(o, "choices");
    cr_assert_eq(json_array_size(ch), 2);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(ch, 1), "text")), "two");
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(ch, 1), "index")), 1);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(ch, 0), "finish_reason")), "stop");
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens")), 3);
    json_decref(o);
    free(s);
    job_unref(j);
}

Test(job, outbox_limit_and_take)
{
    job *j = make_job(JOB_COMPLETION, 1);
    cr_expect_eq(job_out_append(j, "abcdef", 6, 8), 0);
    cr_expect_eq(job_out_append(j, "ghi", 3, 8), -1); /* 9 > 8 */
    char buf[4];
    int done = 1;
    cr_expect_eq(job_out_take(j, buf, 4, &done), 4);
    cr_expect_eq(done, 0);
    cr_expect(!memcmp(buf, "abcd", 4));
    cr_expect_eq(job_out_append(j, "ghi", 3, 8), 0); /* 2 + 3 <= 8 */
    j->done = 1;
    cr_expect_eq(job_out_take(j, buf, 4, &done), 4);
    cr_expect_eq(done, 0);
    cr_expect_eq(job_out_take(j, buf, 4, &done), 1);
    cr_expect_eq(buf[0], 'i');
    cr_expect_eq(done, 1);
    job_unref(j);
}

Test(metrics, prometheus_text)
{
    metrics m;
    cr_assert_eq(metrics_init(&m), 0);
    metrics_request(&m, 200, 5, 7);
    metrics_request(&m, 200, 1, 1);
    metrics_request(&m, 503, 0, 0);
    metrics_ttft(&m, 0.003);
    metrics_ttft(&m, 0.2);
    metrics_token_latency(&m, 0.0005);
    metrics_step(&m, 17, 0.25);
    metrics_step(&m, 3, 0.5);
    sbuf b = {0};
    metrics_render(&m, &b, 2, 3, 4, 16);
    cr_expect(strstr(b.data, "lmserve_requests_total{status=\"200\"} 2\n"));
    cr_expect(strstr(b.data, "lmserve_requests_total{status=\"503\"} 1\n"));
    cr_expect(strstr(b.data, "lmserve_prompt_tokens_total 6\n"));
    cr_expect(strstr(b.data, "lmserve_completion_tokens_total 8\n"));
    cr_expect(strstr(b.data, "lmserve_queue_length 2\n"));
    cr_expect(strstr(b.data, "lmserve_requests_running 3\n"));
    cr_expect(strstr(b.data, "lmserve_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
    cr_expect(strstr(b.data, "lmserve_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"));
    cr_expect(strstr(b.data, "lmserve_time_to_first_token_seconds_count 2\n"));
    cr_expect(strstr(b.data, "lmserve_time_per_output_token_seconds_bucket{le=\"0.001\"} 1\n"));
    cr_expect(strstr(b.data, "lmserve_engine_steps_total 2\n"));
    cr_expect(strstr(b.data, "lmserve_engine_rows_total 20\n"));
    cr_expect(strstr(b.data, "lmserve_engine_forward_seconds_total 0.750000\n"));
    sbuf_free(&b);
    metrics_destroy(&m);
}
