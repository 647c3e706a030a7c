/* test_engine_constraint.c -- constrained requests through the validator and the
 * scheduler (server/validate.c, server/constraint.c, server/engine.c) on a
 * random-weight model, step by step: every finished text is in the language and
 * ends with "stop", a text cut by max_tokens is a prefix (no U+FFFD for a split
 * character), choices are exact, seeded requests give the same tokens alone and
 * beside other requests, logprobs are the raw distribution's, a prompt of BOS
 * alone keeps the first piece's space, the end token waits for a whole text, and the
 * refusals carry their parameter. */
#include "tests/server/engine_fixture.h"
#include "server/constraint.h"
#include "server/schema.h"

static ef_model F;
static sampler_vocab *V;
static constraint_table *T;

static void setup(void)
{
    ef_random_model(&F, 128, 5, 2);
    cr_assert_eq(constraint_vocab_from_model(F.m, &V), SAMPLER_OK);
    T = constraint_table_new(V, 8);
    cr_assert_not_null(T);
}

static void teardown(void)
{
    constraint_table_free(T);
    sampler_vocab_free(V);
    ef_model_free(&F);
}
TestSuite(engine_constraint, .init = setup, .fini = teardown, .timeout = 180);

static job *cjob(int kind, const char *body)
{
    validate_ctx vc = ef_vc(F.m, 128);
    vc.constraints = T;
    job_params p;
    api_error err;
    cr_assert_eq(validate_request(&vc, kind, body, strlen(body), &p, &err), 0, "%s: [%s] %s", body,
                 err.param ? err.param : "", err.message);
    job *j = job_new(NULL, &p, "random");
    cr_assert_not_null(j);
    return j;
}

static int refuse(const char *body, api_error *err)
{
    validate_ctx vc = ef_vc(F.m, 128);
    vc.constraints = T;
    job_params p;
    int rc = validate_request(&vc, JOB_COMPLETION, body, strlen(body), &p, err);
    if (rc == 0) job_params_clear(&p);
    return rc;
}

static ef_result *run_one(engine *e, job *j)
{
    ef_result *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    ef_complete(e, j, r);
    cr_assert_eq(r->end.error, JOB_OK);
    return r;
}

/* A grammar compiled the way the server does, for checking texts. */
static sampler_grammar *grammar_of(const char *gbnf)
{
    sampler_grammar *g = NULL;
    sampler_grammar_error ge;
    cr_assert_eq(sampler_grammar_parse(&g, gbnf, strlen(gbnf), &ge), SAMPLER_OK, "%s", ge.message);
    return g;
}

#define SCHEMA                                                                                             \
    "{\"type\": \"object\", \"properties\": {\"name\": {\"type\": \"string\", \"maxLength\": 6}, "         \
    "\"n\": {\"type\": \"integer\", \"minimum\": -5, \"maximum\": 50}, \"ok\": {\"type\": \"boolean\"}}, " \
    "\"required\": [\"name\", \"n\"], \"additionalProperties\": false}"

Test(engine_constraint, texts_are_in_the_language_and_end_with_stop)
{
    engine *e = ef_engine(F.m, 8, 128, 8, 16, 64);
    const char *body = "{\"prompt\": \"ab\", \"max_tokens\": 120, \"n\": 6, \"seed\": 3, \"temperature\": 1, "
                       "\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"t\", "
                       "\"schema\": " SCHEMA "}}}";
    job *j = cjob(JOB_COMPLETION, body);
    ef_result *r = run_one(e, j);
    sampler_grammar *g = NULL;
    json_t *schema = json_loads(SCHEMA, 0, NULL);
    char *gbnf = NULL;
    cr_assert_eq(schema_to_gbnf(schema, &gbnf, NULL, NULL), 0);
    g = grammar_of(gbnf);
    int stops = 0;
    for (int c = 0; c < 6; c++) {
        const ef_choice *ch = &r->ch[c];
        int m = sampler_grammar_match(g, ch->text, ch->text_len);
        if (!strcmp(ch->finish, "stop")) {
            stops++;
            cr_assert_eq(m, SAMPLER_MATCH_FULL, "choice %d: [%s]", c, ch->text);
            json_error_t je;
            json_t *o = json_loads(ch->text, 0, &je);
            cr_assert_not_null(o, "choice %d is not JSON (%s): %s", c, je.text, ch->text);
            json_t *n = json_object_get(o, "n");
            cr_assert(json_is_integer(n) && json_integer_value(n) >= -5 && json_integer_value(n) <= 50, "%s", ch->text);
            json_decref(o);
        } else {
            cr_assert_str_eq(ch->finish, "length");
            cr_assert_eq(ch->n_tok, 120);
            cr_assert(m == SAMPLER_MATCH_PREFIX || m == SAMPLER_MATCH_FULL, "choice %d: [%s]", c, ch->text);
        }
    }
    cr_assert_geq(stops, 1, "no choice finished its object in 120 tokens");
    free(gbnf);
    json_decref(schema);
    sampler_grammar_free(g);
    free(r);
    job_unref(j);
    engine_stop(e);
}

Test(engine_constraint, seeded_tokens_do_not_depend_on_the_batch)
{
    const char *body = "{\"prompt\": \"abc\", \"max_tokens\": 40, \"n\": 2, \"seed\": 11, \"logprobs\": 2, "
                       "\"response_format\": {\"type\": \"json_object\"}}";
    engine *e = ef_engine(F.m, 8, 128, 8, 16, 64);
    job *alone = cjob(JOB_COMPLETION, body);
    ef_result *a = run_one(e, alone);
    /* the same request beside an unconstrained one and one with another grammar, sharing
     * the cache the first run filled */
    job *busy[3] = { cjob(JOB_COMPLETION, "{\"prompt\": \"zz\", \"max_tokens\": 30, \"seed\": 2}"),
                     cjob(JOB_COMPLETION, "{\"prompt\": \"q\", \"max_tokens\": 30, \"seed\": 4, \"grammar\": "
                                          "\"root ::= [a-f]+ (\\\" \\\" [0-9]+)*\"}"),
                     cjob(JOB_COMPLETION, body) };
    for (int k = 0; k < 3; k++) cr_assert_eq(engine_submit(e, busy[k]), 0);
    ef_run(e, 100000);
    ef_result *b = calloc(1, sizeof *b);
    ef_collect(busy[2], b);
    cr_assert(b->ended);
    for (int c = 0; c < 2; c++) {
        cr_assert_eq(a->ch[c].n_tok, b->ch[c].n_tok, "choice %d", c);
        cr_assert_arr_eq(a->ch[c].tok, b->ch[c].tok, sizeof(int32_t) * (size_t)a->ch[c].n_tok);
        cr_assert_str_eq(a->ch[c].text, b->ch[c].text);
        cr_assert_str_eq(a->ch[c].finish, b->ch[c].finish);
        for (int t = 0; t < a->ch[c].n_tok; t++)
            cr_assert_eq(memcmp(&a->ch[c].score[t].logprob, &b->ch[c].score[t].logprob, sizeof(float)), 0);
    }
    ef_result *o = calloc(1, sizeof *o);
    ef_collect(busy[1], o);
    sampler_grammar *g = grammar_of("root ::= [a-f]+ (\" \" [0-9]+)*");
    int m = sampler_grammar_match(g, o->ch[0].text, o->ch[0].text_len);
    cr_assert(m != SAMPLER_MATCH_NONE, "[%s]", o->ch[0].text);
    sampler_grammar_free(g);
    free(a), free(b), free(o);
    job_unref(alone);
    for (int k = 0; k < 3; k++) job_unref(busy[k]);
    engine_stop(e);
}

Test(engine_constraint, logprobs_are_the_raw_distribution)
{
    engine *e = ef_engine(F.m, 4, 128, 4, 16, 64);
    job *c = cjob(JOB_COMPLETION, "{\"prompt\": \"hello\", \"max_tokens\": 1, \"temperature\": 0, \"logprobs\": 5, "
                                  "\"choice\": [\"q\"]}");
    job *u = cjob(JOB_COMPLETION, "{\"prompt\": \"hello\", \"max_tokens\": 1, \"temperature\": 0, \"logprobs\": 5}");
    ef_result *rc = run_one(e, c), *ru = run_one(e, u);
    const sampler_choice *sc = &rc->ch[0].score[0], *su = &ru->ch[0].score[0];
    cr_assert_eq(rc->ch[0].tok[0], 3 + 'q', "the constraint chose 'q' (its byte token)");
    cr_assert_str_eq(rc->ch[0].finish, "stop");
    cr_assert_str_eq(rc->ch[0].text, "q");
    cr_assert_eq(sc->n_top, 5);
    cr_assert_arr_eq(sc->top, su->top, sizeof sc->top[0] * 5, "top entries = the unconstrained ones");
    cr_assert_neq(sc->token, su->token, "the unconstrained argmax is not 'q'");
    free(rc), free(ru);
    job_unref(c), job_unref(u);
    engine_stop(e);
}

Test(engine_constraint, choices_spaces_and_cut_characters)
{
    engine *e = ef_engine(F.m, 8, 128, 8, 16, 64);
    /* a prompt of BOS alone: the first piece's space is kept, as the constraint read it */
    job *j = cjob(JOB_COMPLETION, "{\"prompt\": [1], \"max_tokens\": 20, \"n\": 8, \"seed\": 5, "
                                  "\"choice\": [\" yes\", \" no\", \"maybe\"]}");
    ef_result *r = run_one(e, j);
    for (int c = 0; c < 8; c++) {
        cr_assert_str_eq(r->ch[c].finish, "stop");
        cr_assert(!strcmp(r->ch[c].text, " yes") || !strcmp(r->ch[c].text, " no") || !strcmp(r->ch[c].text, "maybe"),
                  "choice %d: [%s]", c, r->ch[c].text);
    }
    free(r);
    job_unref(j);
    /* max_tokens in the middle of a two-byte character: dropped, not U+FFFD */
    j = cjob(JOB_COMPLETION, "{\"prompt\": \"a\", \"max_tokens\": 3, \"seed\": 1, "
                             "\"grammar\": \"root ::= \\\"\xC3\xA9\xC3\xA9\xC3\xA9\\\"\"}");
    r = run_one(e, j);
    cr_assert_str_eq(r->ch[0].finish, "length");
    cr_assert_str_eq(r->ch[0].text, "\xC3\xA9", "[%s]", r->ch[0].text);
    free(r);
    job_unref(j);
    /* logit_bias bans both tokens that write "q" (its byte token and the piece "q"): the
     * text cannot go on, and the choice ends as a prefix, not as a server failure */
    j = cjob(JOB_COMPLETION, "{\"prompt\": \"a\", \"max_tokens\": 5, \"choice\": [\"xq\"], "
                             "\"logit_bias\": {\"116\": -100, \"291\": -100}}");
    r = run_one(e, j);
    cr_assert_str_eq(r->ch[0].finish, "length");
    cr_assert_str_eq(r->ch[0].text, "x");
    free(r);
    job_unref(j);
    /* chat: the template's implicit stop string is not added; the grammar ends the text */
    j = cjob(JOB_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 30, "
                       "\"grammar\": \"root ::= \\\"\\\\nuser: done\\\"\"}");
    cr_assert_eq(j->p.n_stops, 0);
    r = run_one(e, j);
    cr_assert_str_eq(r->ch[0].finish, "stop");
    cr_assert_str_eq(r->ch[0].text, "\nuser: done");
    free(r);
    job_unref(j);
    engine_stop(e);
}

/* A model that wants nothing but its end token (logit_bias +100 on EOS, id 2): inside an
 * unfinished text the constraint masks EOS, so the text goes on until it is whole and
 * only then ends with EOS ("stop"); cut by max_tokens first, it is a prefix ("length"). */
Test(engine_constraint, eos_waits_for_a_whole_text)
{
    engine *e = ef_engine(F.m, 8, 128, 8, 16, 64);
    /* unconstrained, the bias ends every choice at once */
    job *j = cjob(JOB_COMPLETION, "{\"prompt\": \"ab\", \"max_tokens\": 40, \"n\": 4, \"seed\": 9, "
                                  "\"temperature\": 1, \"logit_bias\": {\"2\": 100}}");
    ef_result *r = run_one(e, j);
    for (int c = 0; c < 4; c++) {
        cr_assert_str_eq(r->ch[c].finish, "stop");
        cr_assert_eq(r->ch[c].n_tok, 0, "choice %d wrote %d tokens", c, r->ch[c].n_tok); /* EOS is no text */
        cr_assert_str_eq(r->ch[c].text, "");
    }
    free(r);
    job_unref(j);
    /* a schema: every choice is whole JSON, ended by EOS as soon as EOS was allowed */
    j = cjob(JOB_COMPLETION,
             "{\"prompt\": \"ab\", \"max_tokens\": 100, \"n\": 6, \"seed\": 9, "
             "\"temperature\": 1, \"logit_bias\": {\"2\": 100}, \"response_format\": "
             "{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"t\", \"schema\": " SCHEMA "}}}");
    r = run_one(e, j);
    json_t *schema = json_loads(SCHEMA, 0, NULL);
    char *gbnf = NULL;
    cr_assert_eq(schema_to_gbnf(schema, &gbnf, NULL, NULL), 0);
    sampler_grammar *g = grammar_of(gbnf);
    for (int c = 0; c < 6; c++) {
        const ef_choice *ch = &r->ch[c];
        cr_assert_str_eq(ch->finish, "stop", "choice %d: [%s]", c, ch->text);
        cr_assert_eq(sampler_grammar_match(g, ch->text, ch->text_len), SAMPLER_MATCH_FULL, "choice %d: [%s]", c,
                     ch->text);
        json_t *o = json_loads(ch->text, 0, NULL);
        cr_assert_not_null(o, "choice %d: [%s]", c, ch->text);
        json_decref(o);
    }
    free(r);
    job_unref(j);
    /* too few tokens for a whole object: EOS is never taken, the text is a prefix */
    j = cjob(JOB_COMPLETION,
             "{\"prompt\": \"ab\", \"max_tokens\": 3, \"n\": 4, \"seed\": 9, "
             "\"temperature\": 1, \"logit_bias\": {\"2\": 100}, \"response_format\": "
             "{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"t\", \"schema\": " SCHEMA "}}}");
    r = run_one(e, j);
    for (int c = 0; c < 4; c++) {
        const ef_choice *ch = &r->ch[c];
        cr_assert_str_eq(ch->finish, "length", "choice %d: [%s]", c, ch->text);
        cr_assert_eq(ch->n_tok, 3);
        cr_assert_eq(sampler_grammar_match(g, ch->text, ch->text_len), SAMPLER_MATCH_PREFIX, "choice %d: [%s]", c,
                     ch->text);
    }
    free(r);
    job_unref(j);
    free(gbnf);
    json_decref(schema);
    sampler_grammar_free(g);
    engine_stop(e);
}

/* A chat template's end-of-turn token (job_params.stop_token; here a token with text,
 * 300, pushed +100) ends a constrained text like EOS: never before the text is whole,
 * and at once when it is -- [a-z]+ is whole after its first token, so every choice has
 * exactly one (without the end of turn, the text would go on to max_tokens or a rare EOS). */
Test(engine_constraint, end_of_turn_waits_for_a_whole_text)
{
    engine *e = ef_engine(F.m, 8, 128, 8, 16, 64);
    const char *plain = "{\"prompt\": \"ab\", \"max_tokens\": 40, \"n\": 3, \"seed\": 2, \"temperature\": 1, "
                        "\"logit_bias\": {\"300\": 100}}";
    const char *constrained = "{\"prompt\": \"ab\", \"max_tokens\": 40, \"n\": 5, \"seed\": 2, \"temperature\": 1, "
                              "\"logit_bias\": {\"300\": 100}, \"grammar\": \"root ::= [a-z]+\"}";
    sampler_grammar *g = grammar_of("root ::= [a-z]+");
    for (int k = 0; k < 2; k++) {
        job *j = cjob(JOB_COMPLETION, k ? constrained : plain);
        j->p.has_stop_token = 1;
        j->p.stop_token = 300;
        ef_result *r = run_one(e, j);
        for (int c = 0; c < j->p.n; c++) {
            const ef_choice *ch = &r->ch[c];
            cr_assert_str_eq(ch->finish, "stop", "choice %d: [%s]", c, ch->text);
            cr_assert_eq(ch->n_tok, k, "choice %d: [%s] in %d tokens", c, ch->text, ch->n_tok);
            if (k)
                cr_assert_eq(sampler_grammar_match(g, ch->text, ch->text_len), SAMPLER_MATCH_FULL, "choice %d: [%s]", c,
                             ch->text);
        }
        free(r);
        job_unref(j);
    }
    sampler_grammar_free(g);
    engine_stop(e);
}

static int stub_chat_prompt(void *cls, json_t *messages, int32_t **out, int *n_out, api_error *err)
{
    (void)cls, (void)messages, (void)err;
    *out = malloc(3 * sizeof **out);
    cr_assert_not_null(*out);
    (*out)[0] = 1, (*out)[1] = 40, (*out)[2] = 41;
    *n_out = 3;
    return 0;
}

/* Chat through a template: its end-of-turn token still ends a constrained choice (the
 * constraint allows it once the text is whole), but a plain-text end of turn, a stop
 * string, is not added beside a constraint (it could cut a JSON string short). */
Test(engine_constraint, chat_template_ends_beside_a_constraint)
{
    validate_ctx vc = ef_vc(F.m, 128);
    vc.constraints = T;
    vc.chat_prompt = stub_chat_prompt;
    vc.chat_stop_token = 300;
    vc.chat_stop_text = "<|end|>";
    const char *msgs = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 8";
    char body[512];
    job_params p;
    api_error err;
    snprintf(body, sizeof body, "%s}", msgs);
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &err), 0, "%s", err.message);
    cr_assert_eq(p.n_stops, 1);
    cr_assert_str_eq(p.stops[0], "<|end|>");
    cr_assert_eq(p.has_stop_token, 1);
    job_params_clear(&p);
    snprintf(body, sizeof body, "%s, \"response_format\": {\"type\": \"json_object\"}}", msgs);
    cr_assert_eq(validate_request(&vc, JOB_CHAT, body, strlen(body), &p, &err), 0, "%s", err.message);
    cr_assert_eq(p.n_stops, 0);
    cr_assert_eq(p.has_stop_token, 1);
    cr_assert_eq(p.stop_token, 300);
    cr_assert_not_null(p.constraint);
    job_params_clear(&p);
}

Test(engine_constraint, refusals_name_their_parameter)
{
    api_error err;
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": "
                        "{\"schema\": {\"type\": \"object\", \"properties\": {\"age\": {\"type\": \"integer\", "
                        "\"format\": \"int32\"}}}}}}",
                        &err),
                 -1);
    cr_assert_eq(err.status, 400);
    cr_assert_str_eq(err.param, "response_format.json_schema.schema.properties.age.format");
    cr_assert_str_eq(err.code, "invalid_value");
    char *json = api_error_json(&err);
    cr_assert(strstr(json, "\"param\": \"response_format.json_schema.schema.properties.age.format\"") ||
                  strstr(json, "\"param\":\"response_format.json_schema.schema.properties.age.format\""),
              "%s", json);
    free(json);
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"grammar\": \"root ::= (\"}", &err), -1);
    cr_assert_str_eq(err.param, "grammar");
    cr_assert(strstr(err.message, "line 1, column") != NULL, "%s", err.message);
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"choice\": [\"x\"], \"stop\": [\"y\"]}", &err), -1);
    cr_assert_str_eq(err.param, "stop");
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"choice\": []}", &err), -1);
    cr_assert_str_eq(err.param, "choice");
    /* echo would put the prompt in front of the constrained text */
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"choice\": [\"x\"], \"echo\": true}", &err), -1);
    cr_assert_str_eq(err.param, "echo");
    cr_assert_eq(err.status, 400);
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"choice\": [\"x\"], \"echo\": false}", &err), 0);
    /* a server without the table refuses, never ignores */
    validate_ctx vc = ef_vc(F.m, 128);
    job_params p;
    const char *body = "{\"prompt\": \"a\", \"choice\": [\"x\"]}";
    cr_assert_eq(validate_request(&vc, JOB_COMPLETION, body, strlen(body), &p, &err), -1);
    cr_assert_str_eq(err.param, "choice");
    /* accepted: the fields are read into the job */
    cr_assert_eq(refuse("{\"prompt\": \"a\", \"response_format\": {\"type\": \"text\"}, \"stop\": \"x\"}", &err), 0);
}
