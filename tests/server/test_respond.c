/* test_respond.c -- stop-string hold-back, UTF-8 helpers, error JSON, the output
 * stage (events -> SSE chunks and whole answers, errors, the output limit) and the
 * Prometheus text. */
#include "server/server_internal.h"

#include <criterion/criterion.h>
#include <string.h>

static char *stops2[] = { "END", "\nuser:" };

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
    stop_matcher sm = { 0 };
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
    stop_matcher sm = { 0 };
    char out[128];
    const char *pieces[] = { "The ", "E", "N", "D of it" };
    cr_expect_eq(feed(&sm, pieces, 4, out), 1);
    cr_expect_str_eq(out, "The ");
    stop_matcher_free(&sm);
    stop_matcher sm2 = { 0 };
    const char *p2[] = { "a\nus", "er", "x: ok", "\nuser: hi" };
    cr_expect_eq(feed(&sm2, p2, 4, out), 1);
    cr_expect_str_eq(out, "a\nuserx: ok");
    stop_matcher_free(&sm2);
}

Test(stop, earliest_match_wins)
{
    stop_matcher sm = { 0 };
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
    json_t *s = json_bytes("a\xFF"
                           "b",
                           3);
    cr_expect_str_eq(json_string_value(s), "a\xEF\xBF\xBD"
                                           "b");
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

static job *make_job(int kind, int n, int stream)
{
    job_params p = { 0 };
    p.kind = kind;
    p.n = n;
    p.stream = stream;
    p.logprobs = -1;
    p.n_prompts = 1;
    p.prompts = calloc(1, sizeof *p.prompts);
    p.prompts[0] = calloc(3, sizeof(int32_t));
    p.prompt_lens = calloc(1, sizeof(int));
    p.prompt_lens[0] = 3;
    p.echo_from = calloc(1, sizeof(int));
    return job_new(NULL, &p, "tiny");
}

/* What the engine would emit. */
static void emit_text(job *j, int type, int choice, const char *text, const char *finish)
{
    job_event *ev = job_event_new(type, choice, text, strlen(text), 0);
    cr_assert_not_null(ev);
    ev->finish = finish;
    job_emit(j, ev);
}

static void end_job(job *j, int error, int completion_tokens)
{
    job_end e = { .error = error, .prompt_tokens = j->prompt_tokens, .completion_tokens = completion_tokens };
    job_set_end(j, &e);
}

/* The SSE events of a finished stream, as JSON (NULL for [DONE]). */
static int sse_events(job *j, json_t **ev, int max)
{
    output_drain(j);
    cr_assert(j->done);
    int n = 0;
    char *p = j->out.data;
    while (p && (p = strstr(p, "data: "))) {
        p += 6;
        char *end = strstr(p, "\n\n");
        cr_assert_not_null(end);
        cr_assert_null(memchr(p, '\n', (size_t)(end - p)), "one line per event");
        *end = '\0';
        cr_assert_lt(n, max);
        ev[n++] = strcmp(p, "[DONE]") ? json_loads(p, 0, NULL) : NULL;
        p = end + 2;
    }
    return n;
}

Test(output, sse_chunks)
{
    job *j = make_job(JOB_COMPLETION, 1, 1);
    j->p.include_usage = 1;
    cr_expect_eq(j->prompt_tokens, 3);
    emit_text(j, EV_TOKEN, 0, "hi", NULL);
    emit_text(j, EV_TOKEN, 0, "", NULL); /* nothing released, no logprobs: no chunk */
    emit_text(j, EV_FINISH, 0, "!", "length");
    end_job(j, JOB_OK, 5);
    json_t *ev[8];
    int n = sse_events(j, ev, 8);
    cr_assert_eq(n, 4);
    cr_expect_str_eq(json_string_value(json_object_get(ev[0], "object")), "text_completion");
    json_t *c = json_array_get(json_object_get(ev[0], "choices"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(c, "text")), "hi");
    cr_expect(json_is_null(json_object_get(c, "finish_reason")));
    c = json_array_get(json_object_get(ev[1], "choices"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(c, "text")), "!");
    cr_expect_str_eq(json_string_value(json_object_get(c, "finish_reason")), "length");
    cr_expect_eq(json_array_size(json_object_get(ev[2], "choices")), 0);
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(ev[2], "usage"), "total_tokens")), 8);
    cr_expect_null(ev[3]);
    for (int i = 0; i < n; i++) json_decref(ev[i]);
    job_unref(j);

    j = make_job(JOB_CHAT, 1, 1);
    emit_text(j, EV_FINISH, 0, "", "stop");
    end_job(j, JOB_OK, 1);
    n = sse_events(j, ev, 8);
    cr_assert_eq(n, 3);
    cr_expect_str_eq(json_string_value(json_object_get(ev[0], "object")), "chat.completion.chunk");
    json_t *d = json_object_get(json_array_get(json_object_get(ev[0], "choices"), 0), "delta");
    cr_expect_str_eq(json_string_value(json_object_get(d, "role")), "assistant");
    c = json_array_get(json_object_get(ev[1], "choices"), 0);
    cr_expect_eq(json_object_size(json_object_get(c, "delta")), 0);
    cr_expect_str_eq(json_string_value(json_object_get(c, "finish_reason")), "stop");
    for (int i = 0; i < n; i++) json_decref(ev[i]);
    job_unref(j);
}

Test(output, final_body)
{
    job *j = make_job(JOB_COMPLETION, 2, 0);
    emit_text(j, EV_TOKEN, 1, "tw", NULL);
    emit_text(j, EV_TOKEN, 0, "one", NULL);
    emit_text(j, EV_FINISH, 0, "", "stop");
    output_drain(j); /* the answer is built as events come */
    cr_expect_not(j->done);
    emit_text(j, EV_FINISH, 1, "o", "length");
    end_job(j, JOB_OK, 4);
    output_drain(j);
    cr_assert(j->done);
    cr_expect_eq(j->status, 200);
    json_t *o = json_loads(j->out.data, 0, NULL);
    cr_assert_not_null(o, "%s", j->out.data);
    json_t *ch = json_object_get(o, "choices");
    cr_assert_eq(json_array_size(ch), 2);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(ch, 1), "text")), "two");
    cr_expect_eq(json_integer_value(json_object_get(json_array_get(ch, 1), "index")), 1);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(ch, 0), "finish_reason")), "stop");
    cr_expect(json_is_null(json_object_get(json_array_get(ch, 0), "logprobs")));
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(o, "usage"), "prompt_tokens")), 3);
    cr_expect_str_eq(json_string_value(json_object_get(o, "object")), "text_completion");
    json_decref(o);
    job_unref(j);
}

Test(output, errors_become_openai_errors)
{
    job *j = make_job(JOB_COMPLETION, 1, 0);
    emit_text(j, EV_TOKEN, 0, "partial", NULL);
    end_job(j, JOB_ERR_SHUTDOWN, 1);
    output_drain(j);
    cr_expect_eq(j->status, 503);
    json_t *o = json_loads(j->out.data, 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "code")), "shutting_down");
    json_decref(o);
    job_unref(j);

    j = make_job(JOB_COMPLETION, 1, 1);
    emit_text(j, EV_TOKEN, 0, "partial", NULL);
    end_job(j, JOB_ERR_MODEL, 1);
    json_t *ev[8];
    int n = sse_events(j, ev, 8);
    cr_assert_eq(n, 3, "the text so far, the error, [DONE]");
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(ev[1], "error"), "code")), "model_error");
    cr_expect_null(ev[2]);
    for (int i = 0; i < n; i++) json_decref(ev[i]);
    job_unref(j);

    /* a client that left gets nothing, whatever came */
    j = make_job(JOB_COMPLETION, 1, 1);
    emit_text(j, EV_TOKEN, 0, "x", NULL);
    job_cancel(j, CANCEL_CLIENT);
    end_job(j, JOB_OK, 1);
    output_drain(j);
    cr_expect(j->done);
    cr_expect_eq(j->out.len, 0);
    job_unref(j);
}

Test(output, limit_and_take)
{
    job *j = make_job(JOB_COMPLETION, 1, 1);
    j->out_limit = 300;
    emit_text(j, EV_TOKEN, 0, "abcdef", NULL);
    output_drain(j);
    size_t first = j->out_held;
    cr_assert_gt(first, 6);
    cr_assert_leq(first, 300);
    char buf[16];
    int done = 1;
    cr_expect_eq(job_out_take(j, buf, 10, &done), 10);
    cr_expect_eq(done, 0);
    cr_expect(!memcmp(buf, "data: {", 7));
    cr_expect_eq(j->out_held, first - 10, "what the client took no longer counts");
    /* chunks pile up while nobody reads: the limit cancels the job */
    for (int i = 0; i < 10; i++) emit_text(j, EV_TOKEN, 0, "abcdef", NULL);
    output_drain(j);
    cr_expect_eq(atomic_load(&j->cancel), CANCEL_OVERFLOW);
    cr_expect_leq(j->out_held, 300);
    end_job(j, JOB_OK, 11);
    output_drain(j);
    cr_expect(j->done);
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
    metrics_context(&m, 31);
    metrics_context(&m, 0);
    sbuf b = { 0 };
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
    cr_expect(strstr(b.data, "lmserve_context_window_moves_total 2\n"));
    cr_expect(strstr(b.data, "lmserve_context_recomputed_tokens_total 31\n"));
    sbuf_free(&b);
    metrics_destroy(&m);
}
