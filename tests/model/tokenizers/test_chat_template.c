/* test_chat_template.c -- model/tokenizers/chat_template.c: the chat templates real small
 * instruct models publish (tests/data/chat_templates/NAME.jinja, as their tokenizer_config.json
 * carries them; sources in tests/data/SOURCES.md) rendered for the same conversations, and
 * compared with expected text written by hand from each template's Jinja (transformers'
 * apply_chat_template semantics: trim_blocks and lstrip_blocks on).  Then the built-in
 * templates, the evaluator's Jinja semantics piece by piece, its errors and limits, and
 * model_tokenize_special.  Run from the repository root. */
#include "model/model.h"
#include "tests/model/helpers.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* X: three messages, no system turn, a generation prompt asked for (every family takes it).
 * The answer has spaces around it, which shows which templates trim. */
static const char *CONV_X = "[{\"role\": \"user\", \"content\": \"Hi there\"},"
                            " {\"role\": \"assistant\", \"content\": \"  Hello! How can I help?  \"},"
                            " {\"role\": \"user\", \"content\": \"What is 2+2?\"}]";
/* Y: three messages with a system turn, no generation prompt. */
static const char *CONV_Y = "[{\"role\": \"system\", \"content\": \"Be brief.\"},"
                            " {\"role\": \"user\", \"content\": \"Hi there\"},"
                            " {\"role\": \"assistant\", \"content\": \"Hello!\"}]";

typedef struct {
    int rc;
    char *text;
    char err[512];
} rendered;

static rendered render_src(const char *src, size_t len, const char *conv, int gen, const char *bos, const char *eos)
{
    rendered r = { 0 };
    model_chat_template *t = NULL;
    r.rc = model_chat_template_new(&t, src, len, r.err, sizeof r.err);
    if (r.rc) return r;
    json_error_t je;
    json_t *msgs = json_loads(conv, 0, &je);
    cr_assert_not_null(msgs, "bad test JSON: %s", je.text);
    model_chat_input in = { msgs, gen, bos, eos };
    size_t n = 0;
    r.rc = model_chat_template_render(t, &in, &r.text, &n, r.err, sizeof r.err);
    if (r.rc == 0) cr_assert_eq(n, strlen(r.text));
    json_decref(msgs);
    model_chat_template_free(t);
    return r;
}

static rendered render_file(const char *name, const char *conv, int gen, const char *bos, const char *eos)
{
    char path[256];
    snprintf(path, sizeof path, "tests/data/chat_templates/%s.jinja", name);
    size_t len = 0;
    unsigned char *src = th_read_file(path, &len);
    cr_assert_not_null(src, "missing fixture %s (run from the repository root)", path);
    rendered r = render_src((const char *)src, len, conv, gen, bos, eos);
    free(src);
    return r;
}

static void expect_text(rendered r, const char *want)
{
    cr_assert_eq(r.rc, 0, "render failed (%d): %s", r.rc, r.err);
    cr_assert_str_eq(r.text, want);
    free(r.text);
}

/* ---- Published templates -------------------------------------------------------------- */

Test(published, smollm_instruct_chatml)
{
    expect_text(render_file("smollm-instruct", CONV_X, 1, "<|im_start|>", "<|im_end|>"),
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\n  Hello! How can I help?  <|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n");
    expect_text(render_file("smollm-instruct", CONV_Y, 0, "<|im_start|>", "<|im_end|>"),
                "<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n");
}

Test(published, smollm2_instruct_adds_its_default_system_turn)
{
    expect_text(render_file("smollm2-instruct", CONV_X, 1, "<|im_start|>", "<|im_end|>"),
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\n  Hello! How can I help?  <|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n");
    expect_text(render_file("smollm2-instruct", CONV_Y, 0, "<|im_start|>", "<|im_end|>"),
                "<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n");
}

Test(published, qwen25_instruct)
{
    expect_text(render_file("qwen2.5-instruct", CONV_X, 1, "", "<|im_end|>"),
                "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\n  Hello! How can I help?  <|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n");
    expect_text(render_file("qwen2.5-instruct", CONV_Y, 0, "", "<|im_end|>"),
                "<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n");
}

Test(published, qwen25_instruct_tool_call)
{
    /* the assistant turn with a tool call and the tool's answer take the other branches */
    const char *conv = "[{\"role\": \"user\", \"content\": \"Weather in Oslo?\"},"
                       " {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"type\": \"function\","
                       "   \"function\": {\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}}]},"
                       " {\"role\": \"tool\", \"content\": \"rain\"}]";
    expect_text(render_file("qwen2.5-instruct", conv, 1, "", "<|im_end|>"),
                "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
                "<|im_start|>assistant\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\", "
                "\"days\": 2}}\n</tool_call><|im_end|>\n"
                "<|im_start|>user\n<tool_response>\nrain\n</tool_response><|im_end|>\n"
                "<|im_start|>assistant\n");
}

Test(published, llama2_chat)
{
    expect_text(render_file("llama-2-chat", CONV_X, 1, "<s>", "</s>"),
                "<s>[INST] Hi there [/INST] Hello! How can I help? </s><s>[INST] What is 2+2? [/INST]");
    expect_text(render_file("llama-2-chat", CONV_Y, 0, "<s>", "</s>"),
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s>");
}

Test(published, llama2_chat_refuses_two_user_turns_in_a_row)
{
    rendered r = render_file("llama-2-chat",
                             "[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]", 1,
                             "<s>", "</s>");
    cr_assert_eq(r.rc, MODEL_ECHAT_RAISE);
    cr_assert_str_eq(r.err, "Conversation roles must alternate user/assistant/user/assistant/...");
}

Test(published, llama3_instruct)
{
    expect_text(render_file("llama-3-instruct", CONV_X, 1, "<|begin_of_text|>", "<|end_of_text|>"),
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_text(render_file("llama-3-instruct", CONV_Y, 0, "<|begin_of_text|>", "<|end_of_text|>"),
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>");
}

Test(published, llama32_instruct_dates_its_system_turn)
{
    char today[64];
    time_t now = time(NULL);
    struct tm tmv;
    localtime_r(&now, &tmv);
    strftime(today, sizeof today, "%d %b %Y", &tmv);
    char want[1024];
    snprintf(want, sizeof want,
             "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
             "Cutting Knowledge Date: December 2023\nToday Date: %s\n\n<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
             today);
    expect_text(render_file("llama-3.2-instruct", CONV_X, 1, "<|begin_of_text|>", "<|eot_id|>"), want);
    snprintf(want, sizeof want,
             "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
             "Cutting Knowledge Date: December 2023\nToday Date: %s\n\nBe brief.<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
             today);
    expect_text(render_file("llama-3.2-instruct", CONV_Y, 0, "<|begin_of_text|>", "<|eot_id|>"), want);
}

Test(published, zephyr)
{
    expect_text(render_file("zephyr-7b-beta", CONV_X, 1, "<s>", "</s>"),
                "<|user|>\nHi there</s>\n<|assistant|>\n  Hello! How can I help?  </s>\n"
                "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n");
    expect_text(render_file("zephyr-7b-beta", CONV_Y, 0, "<s>", "</s>"),
                "<|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello!</s>\n");
}

Test(published, gemma2_it)
{
    expect_text(render_file("gemma-2-it", CONV_X, 1, "<bos>", "<eos>"),
                "<bos><start_of_turn>user\nHi there<end_of_turn>\n"
                "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
                "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
                "<start_of_turn>model\n");
    rendered r = render_file("gemma-2-it", CONV_Y, 0, "<bos>", "<eos>");
    cr_assert_eq(r.rc, MODEL_ECHAT_RAISE);
    cr_assert_str_eq(r.err, "System role not supported");
}

Test(published, phi3_mini_instruct)
{
    expect_text(render_file("phi-3-mini-instruct", CONV_X, 1, "<s>", "<|endoftext|>"),
                "<|user|>\nHi there<|end|>\n<|assistant|>\n  Hello! How can I help?  <|end|>\n"
                "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n");
    expect_text(render_file("phi-3-mini-instruct", CONV_Y, 0, "<s>", "<|endoftext|>"),
                "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n<|endoftext|>");
}

Test(published, families_recognised_by_their_markers)
{
    static const struct {
        const char *file, *family;
    } cases[] = {
        { "smollm-instruct", "chatml" }, { "smollm2-instruct", "chatml" }, { "qwen2.5-instruct", "chatml" },
        { "llama-2-chat", "llama2" },    { "llama-3-instruct", "llama3" }, { "llama-3.2-instruct", "llama3" },
        { "zephyr-7b-beta", "zephyr" },  { "gemma-2-it", "gemma" },        { "phi-3-mini-instruct", "phi3" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/chat_templates/%s.jinja", cases[i].file);
        size_t len;
        char *src = (char *)th_read_file(path, &len);
        cr_assert_not_null(src, "%s", path);
        char *z = realloc(src, len + 1);
        cr_assert_not_null(z);
        z[len] = '\0';
        cr_expect_str_eq(model_chat_template_family(z), cases[i].family, "%s", cases[i].file);
        free(z);
    }
    cr_expect_str_eq(model_chat_template_family("{{ messages[0].content }}"), "custom");
}

/* ---- Built-in templates ---------------------------------------------------------------- */

static rendered render_builtin(const char *name, const char *conv, int gen, const char *bos, const char *eos)
{
    const char *src = model_chat_template_builtin(name);
    cr_assert_not_null(src, "no built-in %s", name);
    return render_src(src, strlen(src), conv, gen, bos, eos);
}

Test(builtin, each_renders_its_family_as_published)
{
    /* for conversation X every built-in gives exactly what its family's published template gives */
    static const struct {
        const char *name, *file, *bos, *eos;
    } cases[] = {
        { "chatml", "smollm-instruct", "", "<|im_end|>" },
        { "llama2", "llama-2-chat", "<s>", "</s>" },
        { "llama3", "llama-3-instruct", "<|begin_of_text|>", "<|end_of_text|>" },
        { "zephyr", "zephyr-7b-beta", "<s>", "</s>" },
        { "gemma", "gemma-2-it", "<bos>", "<eos>" },
        { "phi3", "phi-3-mini-instruct", "<s>", "<|endoftext|>" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rendered a = render_builtin(cases[i].name, CONV_X, 1, cases[i].bos, cases[i].eos);
        rendered b = render_file(cases[i].file, CONV_X, 1, cases[i].bos, cases[i].eos);
        cr_assert_eq(a.rc, 0, "%s: %s", cases[i].name, a.err);
        cr_assert_eq(b.rc, 0, "%s: %s", cases[i].file, b.err);
        cr_expect_str_eq(a.text, b.text, "%s", cases[i].name);
        cr_expect_str_eq(model_chat_template_family(model_chat_template_builtin(cases[i].name)), cases[i].name);
        free(a.text);
        free(b.text);
    }
    cr_assert_null(model_chat_template_builtin("nonsense"));
    int n = 0;
    while (model_chat_template_names[n]) n++;
    cr_assert_eq(n, 6);
}

Test(builtin, system_turns)
{
    expect_text(render_builtin("llama2", CONV_Y, 0, "<s>", "</s>"),
                "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! </s>");
    /* unlike Gemma 2's own template, the built-in folds a system turn into the first user turn */
    expect_text(render_builtin("gemma", CONV_Y, 1, "<bos>", "<eos>"),
                "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
                "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>model\n");
    expect_text(render_builtin("chatml", CONV_Y, 1, "", ""),
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n");
    expect_text(render_builtin("phi3", CONV_Y, 0, "", "<|endoftext|>"),
                "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n<|endoftext|>");
}

/* ---- Jinja semantics, piece by piece ----------------------------------------------------- */

static void expect_jinja(const char *src, const char *want)
{
    expect_text(render_src(src, strlen(src), "[{\"role\": \"user\", \"content\": \" a b \"}]", 1, "<s>", "</s>"), want);
}

Test(jinja, whitespace_control_as_transformers_renders)
{
    /* trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it goes */
    expect_jinja("{% if true %}\n  yes\n{% endif %}\n", "  yes\n");
    expect_jinja("    {% if true %}x{% endif %}|", "x|");
    expect_jinja("a {% if true %}b{% endif %}", "a b"); /* not at the start of a line: kept */
    expect_jinja("a  {{- 'b' -}}  \n c", "abc");
    expect_jinja("a\n{#- comment #}\nb", "ab");
    expect_jinja("x{{ 'y' }}\nz", "xy\nz");              /* no trimming after an expression */
    expect_jinja("  {%+ if true %}x{% endif %}", "  x"); /* "+" keeps the indentation */
}

Test(jinja, values_print_as_python_prints_them)
{
    expect_jinja("{{ none }} {{ true }} {{ False }} {{ 3 }} {{ 2.5 }} {{ 4.0 }} {{ undefined_name }}|",
                 "None True False 3 2.5 4.0 |");
    expect_jinja("{{ [1, 'a', none] }} {{ {'k': 'v'} }}", "[1, 'a', None] {'k': 'v'}");
    expect_jinja("{{ \"it's\" }} {{ ['it\\'s'] }}", "it's [\"it's\"]");
    expect_jinja("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'ab' * 2 }}",
                 "3 -4 1 2 3.5 1024 abab");
    expect_jinja("{{ 1 ~ 'x' ~ none }} {{ 'a' + 'b' }} {{ [1] + [2] }}", "1xNone ab [1, 2]");
}

Test(jinja, operators_tests_and_precedence)
{
    expect_jinja("{{ 'a' if messages[0].role == 'user' else 'b' }}", "a");
    expect_jinja("{{ 'x' in 'xyz' }} {{ 'w' not in ['w'] }} {{ 'role' in messages[0] }}", "True False True");
    expect_jinja("{{ not none is none }} {{ messages is defined }} {{ nope is undefined }} {{ 3 is odd }} {{ 4 is "
                 "divisibleby 2 }}",
                 "False True True True True");
    expect_jinja(
        "{{ 1 or 2 }} {{ 0 or '' }}|{{ 0 and 1 }} {{ [] is iterable }} {{ {} is mapping }} {{ 'a' is string }}",
        "1 |0 True True True");
    /* a filter binds tighter than +: this is how Llama 3's template trims only the content */
    expect_jinja("{{ '[' + messages[0]['content'] | trim + ']' }}", "[a b]");
    expect_jinja("{{ [1, 2] == [1, 2] }} {{ 1 == 1.0 }} {{ '1' == 1 }} {{ 'b' > 'a' }} {{ {'a': 1} == {'a': 1} }}",
                 "True True False True True");
}

Test(jinja, loops_sets_and_namespaces)
{
    expect_jinja("{% for x in [10, 20, 30] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
                 "{{ loop.length }}{{ loop.revindex }},{% endfor %}",
                 "10TrueFalse33,21FalseFalse32,32FalseTrue31,");
    expect_jinja("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }} {% endfor %}", "22 42 ");
    expect_jinja("{% for x in [] %}a{% else %}empty{% endfor %}", "empty");
    expect_jinja("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;");
    expect_jinja("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% "
                 "endif %}{{ x }}{% endfor %}",
                 "13");
    /* a set inside a loop stays in the loop; a namespace carries state out */
    expect_jinja("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set n = n + x %}{% set ns.n = "
                 "ns.n + x %}{% endfor %}{{ n }} {{ ns.n }}",
                 "0 3");
    expect_jinja("{% set t %}[{{ 1 + 1 }}]{% endset %}{{ t }}{{ t | length }}", "[2]3");
    expect_jinja(
        "{% for m in messages[::-1] %}{{ m.role }}{% endfor %} {{ 'hello'[1:3] }} {{ 'hello'[-1] }} {{ [1,2,3][-2:] }}",
        "user el o [2, 3]");
    expect_jinja("{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(5, 1, -2) %}{{ i }}{% endfor %}",
                 "01253");
}

Test(jinja, filters_and_methods)
{
    expect_jinja(
        "{{ '  x  ' | trim }}|{{ ' x '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}|",
        "x|x|hi|x | x|");
    expect_jinja("{{ 'Ab' | upper }} {{ 'Ab' | lower }} {{ 'hello world' | title }} {{ 'hello' | capitalize }} {{ "
                 "'ab'.upper() }}",
                 "AB ab Hello World Hello AB");
    expect_jinja("{{ [3, 4] | length }} {{ 'héllo' | length }} {{ [1, 2] | first }} {{ [1, 2] | last }} {{ ['a', 'b'] "
                 "| join(', ') }}",
                 "2 5 1 2 a, b");
    expect_jinja(
        "{{ nope | default('d') }} {{ '' | default('d', true) }} {{ 'a-b-c'.split('-') }} {{ ' a  b '.split() }}",
        "d d ['a', 'b', 'c'] ['a', 'b']");
    expect_jinja("{{ 'aXbX'.replace('X', '.') }} {{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ "
                 "'abc' | replace('b', '') }}",
                 "a.b. True True ac");
    expect_jinja("{{ {'b': [1, 2.5, true, none], 'a': \"q\\\"\"} | tojson }}",
                 "{\"b\": [1, 2.5, true, null], \"a\": \"q\\\"\"}");
    expect_jinja("{{ {'a': [1]} | tojson(indent=2) }}", "{\n  \"a\": [\n    1\n  ]\n}");
    expect_jinja("{{ messages | selectattr('role', 'equalto', 'user') | list | length }}"
                 "{{ messages | rejectattr('role', 'equalto', 'user') | list | length }}"
                 "{{ messages | map(attribute='role') | join }}",
                 "10user");
    expect_jinja("{{ {'k': 1}.get('k') }} {{ {'k': 1}.get('z', 'no') }} {% for k, v in {'a': 1, 'b': 2} | items %}{{ k "
                 "}}{{ v }}{% endfor %} {{ [1, 2] | reverse | list }}",
                 "1 no a1b2 [2, 1]");
}

Test(jinja, messages_from_json)
{
    /* content given as parts is joined; other fields pass through */
    const char *conv = "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": "
                       "\"text\", \"text\": \"b\"}], \"name\": \"n\"}]";
    const char *src = "{{ messages[0].content }} {{ messages[0].name }} {{ messages[0].tool_calls is defined }}";
    expect_text(render_src(src, strlen(src), conv, 0, "", ""), "ab n False");
}

/* ---- Errors and limits ---------------------------------------------------------------------- */

static rendered try_src(const char *src)
{
    return render_src(src, strlen(src), "[{\"role\": \"user\", \"content\": \"a\"}]", 1, "", "");
}

Test(errors, syntax_errors_name_their_line)
{
    rendered r = try_src("ok\n{% if messages %}\nnever closed");
    cr_assert_eq(r.rc, MODEL_EFORMAT);
    cr_assert(strstr(r.err, "endif"), "%s", r.err);
    r = try_src("line1\n{{ 'unterminated }}");
    cr_assert_eq(r.rc, MODEL_EFORMAT);
    cr_assert(strstr(r.err, "line 2"), "%s", r.err);
    r = try_src("{% endfor %}");
    cr_assert_eq(r.rc, MODEL_EFORMAT);
    r = try_src("{{ 1 + }}");
    cr_assert_eq(r.rc, MODEL_EFORMAT);
    r = try_src("{% break %}");
    cr_assert_eq(r.rc, MODEL_EFORMAT);
}

Test(errors, unsupported_constructs_are_named)
{
    rendered r = try_src("{% macro m() %}x{% endmacro %}{{ m() }}");
    cr_assert_eq(r.rc, MODEL_ECHAT_UNSUPPORTED);
    cr_assert(strstr(r.err, "'macro'"), "%s", r.err);
    r = try_src("{{ messages | wordcount }}");
    cr_assert_eq(r.rc, MODEL_ECHAT_UNSUPPORTED);
    cr_assert(strstr(r.err, "wordcount"), "%s", r.err);
    r = try_src("{{ lipsum(2) }}");
    cr_assert_eq(r.rc, MODEL_ECHAT_UNSUPPORTED);
    r = try_src("{% include 'x' %}");
    cr_assert_eq(r.rc, MODEL_ECHAT_UNSUPPORTED);
}

Test(errors, type_errors_and_limits)
{
    rendered r = try_src("{{ 'a' + 1 }}");
    cr_assert_eq(r.rc, MODEL_ECHAT_EVAL);
    cr_assert(strstr(r.err, "string and integer"), "%s", r.err);
    r = try_src("{% for i in range(2000000) %}{% endfor %}");
    cr_assert_eq(r.rc, MODEL_ECHAT_EVAL);
    cr_assert(strstr(r.err, "loop steps"), "%s", r.err);
    r = try_src("{% for i in range(1000) %}{{ 'x' * 10000 }}{% endfor %}");
    cr_assert_eq(r.rc, MODEL_ECHAT_EVAL, "8 MiB output limit: %s", r.err);
    cr_assert(strstr(r.err, "exceeds"), "%s", r.err);
    char deep[2000];
    size_t k = 0;
    k += (size_t)snprintf(deep, sizeof deep, "{{ ");
    for (int i = 0; i < 400; i++) deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 400; i++) deep[k++] = ')';
    snprintf(deep + k, sizeof deep - k, " }}");
    r = try_src(deep);
    cr_assert_eq(r.rc, MODEL_ECHAT_EVAL, "nesting limit: %d %s", r.rc, r.err);
    r = try_src("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}");
    cr_assert_eq(r.rc, MODEL_ECHAT_EVAL, "memory budget: %d %s", r.rc, r.err);
    cr_assert(strstr(r.err, "MiB of memory"), "%s", r.err);
    r = try_src("{{ raise_exception('no ' ~ 'way') }}");
    cr_assert_eq(r.rc, MODEL_ECHAT_RAISE);
    cr_assert_str_eq(r.err, "no way");
}

Test(errors, rendering_is_reentrant_and_repeatable)
{
    const char *src = model_chat_template_builtin("chatml");
    model_chat_template *t = NULL;
    char err[256];
    cr_assert_eq(model_chat_template_new(&t, src, strlen(src), err, sizeof err), 0, "%s", err);
    json_t *msgs = json_loads(CONV_X, 0, NULL);
    model_chat_input in = { msgs, 1, "", "" };
    char *a = NULL, *b = NULL;
    cr_assert_eq(model_chat_template_render(t, &in, &a, NULL, err, sizeof err), 0);
    cr_assert_eq(model_chat_template_render(t, &in, &b, NULL, err, sizeof err), 0);
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
    json_decref(msgs);
    model_chat_template_free(t);
    model_chat_template_free(NULL);
}

/* ---- model_tokenize_special -------------------------------------------------------------------- */

static int tok(model *m, int special, const char *text, int add_bos, int32_t *out, int cap)
{
    return special ? model_tokenize_special(m, text, strlen(text), add_bos, out, cap)
                   : model_tokenize(m, text, strlen(text), add_bos, out, cap);
}

Test(tokenize_special, spm_control_tokens_spelled_in_text)
{
    model *m = NULL;
    char err[256];
    char *path = th_model_path("stories260K.gguf");
    cr_assert_eq(model_load(&m, path, NULL, err, sizeof err), 0, "%s", err);
    free(path);
    int32_t a[64], b[64];
    /* "<s>" and "</s>" become BOS and EOS; the text after each is a piece of its own */
    int n = tok(m, 1, "<s>Once upon</s>a time", 0, a, 64);
    int n1 = tok(m, 0, "Once upon", 0, b, 64);
    cr_assert_gt(n1, 0);
    cr_assert_eq(a[0], 1);
    cr_assert_arr_eq(a + 1, b, (size_t)n1 * sizeof *b);
    cr_assert_eq(a[1 + n1], 2);
    int n2 = tok(m, 0, "a time", 0, b, 64);
    cr_assert_eq(n, 1 + n1 + 1 + n2);
    cr_assert_arr_eq(a + 2 + n1, b, (size_t)n2 * sizeof *b);
    /* plain tokenization keeps them as characters */
    n = tok(m, 0, "</s>", 0, a, 64);
    cr_assert_gt(n, 1);
    for (int i = 0; i < n; i++) cr_assert_neq(a[i], 2);
    /* without any special spelling the two agree; add_bos prepends BOS; a small buffer reports the size */
    n = tok(m, 1, "Once upon a time", 1, a, 64);
    n1 = tok(m, 0, "Once upon a time", 1, b, 64);
    cr_assert_eq(n, n1);
    cr_assert_arr_eq(a, b, (size_t)n * sizeof *a);
    cr_assert_eq(tok(m, 1, "<s><s>x</s>", 0, a, 2), tok(m, 1, "<s><s>x</s>", 0, b, 64));
    model_free(m);
}
