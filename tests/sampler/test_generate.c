/* test_generate.c -- the whole decode loop (sampler/generate.c) over toy models. */
#include "sampler/sampler.h"
#include "toy_lm.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

enum { V = 32 };
static toy_lm toy; /* large: keep it off the stack */

static int gen(toy_kind kind, int max_seq_len, const int32_t *prompt, int n_prompt, int n_new, const sampler_params *p,
               int32_t *out)
{
    toy_init(&toy, kind, V, max_seq_len);
    return sampler_generate(&toy.lm, prompt, n_prompt, n_new, p, out);
}

static const int32_t prompt3[3] = { 1, 2, 3 };

Test(generate, output_length_prompt_prefix_and_valid_ids)
{
    int32_t out[3 + 20];
    sampler_params p = { .temperature = 1.0f, .seed = 9 };
    int n = gen(TOY_WAVE, 64, prompt3, 3, 20, &p, out);
    cr_assert_eq(n, 23);
    cr_assert_eq(toy.calls, 20);
    cr_assert(memcmp(out, prompt3, sizeof prompt3) == 0);
    for (int i = 0; i < n; i++) cr_assert(out[i] >= 0 && out[i] < V);
}

Test(generate, greedy_is_deterministic_argmax_and_ignores_seed)
{
    int32_t a[3 + 15], b[3 + 15];
    sampler_params p = { .temperature = 0.0f, .seed = 1 };
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 15, &p, a), 18);
    p.seed = 999;
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 15, &p, b), 18);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    for (int i = 3; i < 18; i++) { /* each token is the argmax of the toy's logits */
        float lg[V];
        toy_logits(TOY_WAVE, a, i, V, lg);
        cr_assert_eq(a[i], sampler_argmax(lg, V), "position %d", i);
    }
}

Test(generate, seeded_reproducible_and_different_seeds_differ)
{
    int32_t a[3 + 40], b[3 + 40], c[3 + 40];
    sampler_params p = { .temperature = 1.0f, .top_p = 0.95f, .seed = 1234 };
    gen(TOY_WAVE, 64, prompt3, 3, 40, &p, a);
    gen(TOY_WAVE, 64, prompt3, 3, 40, &p, b);
    p.seed = 1235;
    gen(TOY_WAVE, 64, prompt3, 3, 40, &p, c);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    cr_assert(memcmp(a, c, sizeof a) != 0);
}

Test(generate, top_k_one_equals_greedy)
{
    int32_t g[3 + 25], k1[3 + 25];
    sampler_params greedy = { 0 };
    gen(TOY_WAVE, 64, prompt3, 3, 25, &greedy, g);
    for (uint64_t seed = 0; seed < 5; seed++) {
        sampler_params p = { .temperature = 1.5f, .top_k = 1, .seed = seed };
        cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 25, &p, k1), 28);
        cr_assert(memcmp(g, k1, sizeof g) == 0, "seed %d", (int)seed);
    }
}

Test(generate, stop_id_ends_generation_and_is_included)
{
    int32_t g[3 + 20], s[3 + 20];
    sampler_params greedy = { 0 };
    gen(TOY_WAVE, 64, prompt3, 3, 20, &greedy, g);
    int32_t stop = g[3 + 4]; /* the 5th generated token */
    int first = 3;
    while (g[first] != stop) first++;
    sampler_params p = { .stop_ids = &stop, .n_stop_ids = 1 };
    int n = gen(TOY_WAVE, 64, prompt3, 3, 20, &p, s);
    cr_assert_eq(n, first + 1);
    cr_assert_eq(toy.calls, first + 1 - 3);
    cr_assert_eq(s[n - 1], stop);
    cr_assert(memcmp(s, g, (size_t)n * sizeof *s) == 0);
}

Test(generate, stop_id_in_the_prompt_does_not_stop)
{
    int32_t g[3 + 20], s[3 + 20];
    sampler_params greedy = { 0 };
    gen(TOY_WAVE, 64, prompt3, 3, 20, &greedy, g);
    int32_t stop = prompt3[0];
    int want = 23;
    for (int i = 3; i < 23; i++)
        if (g[i] == stop) {
            want = i + 1;
            break;
        }
    sampler_params p = { .stop_ids = &stop, .n_stop_ids = 1 };
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 20, &p, s), want);
    cr_assert_gt(want, 3);
}

Test(generate, crops_context_to_max_seq_len)
{
    enum { L = 8, NP = 13, NEW = 30 };
    int32_t prompt[NP], out[NP + NEW];
    for (int i = 0; i < NP; i++) prompt[i] = (i * 5 + 1) % V;
    sampler_params p = { .temperature = 0.8f, .seed = 77 };
    int n = gen(TOY_WAVE, L, prompt, NP, NEW, &p, out);
    cr_assert_eq(n, NP + NEW);
    cr_assert_eq(toy.calls, NEW);
    cr_assert_eq(toy.max_ctx_seen, L);
    for (int s = 0; s < NEW; s++) {
        int len = NP + s;
        cr_assert_eq(toy.n_ctx[s], L);
        cr_assert(memcmp(toy.ctx[s], out + len - L, L * sizeof(int32_t)) == 0, "step %d", s);
    }
    /* a short prompt grows to the limit and then stays there */
    int32_t out2[2 + 12];
    gen(TOY_WAVE, 5, prompt, 2, 12, &p, out2);
    for (int s = 0; s < 12; s++) {
        int want = 2 + s < 5 ? 2 + s : 5;
        cr_assert_eq(toy.n_ctx[s], want);
        cr_assert(memcmp(toy.ctx[s], out2 + 2 + s - want, (size_t)want * sizeof(int32_t)) == 0);
    }
}

Test(generate, shift_keeps_half_the_window_when_full)
{
    enum { L = 8, NP = 3, NEW = 20 };
    int32_t out[NP + NEW];
    sampler_params p = { .temperature = 0.8f, .seed = 77, .crop = SAMPLER_CROP_SHIFT };
    cr_assert_eq(gen(TOY_WAVE, L, prompt3, NP, NEW, &p, out), NP + NEW);
    int start = 0;
    for (int s = 0; s < NEW; s++) {
        int len = NP + s;
        if (len - start > L) start = len - L / 2; /* full: keep the last 4 */
        cr_assert_eq(toy.n_ctx[s], len - start, "step %d", s);
        cr_assert(memcmp(toy.ctx[s], out + start, (size_t)(len - start) * sizeof(int32_t)) == 0, "step %d", s);
    }
    cr_assert_eq(toy.max_ctx_seen, L);
}

Test(generate, stop_ends_when_the_window_is_full)
{
    int32_t out[3 + 20];
    sampler_params p = { .temperature = 0.8f, .seed = 77, .crop = SAMPLER_CROP_STOP };
    cr_assert_eq(gen(TOY_WAVE, 8, prompt3, 3, 20, &p, out), 8, "prompt + generated = the window");
    cr_assert_eq(toy.calls, 5);
    cr_assert_eq(gen(TOY_WAVE, 3, prompt3, 3, 20, &p, out), 3, "a prompt that fills the window");
    cr_assert_eq(toy.calls, 0);
}

Test(generate, crop_names_and_starts)
{
    cr_assert_eq(sampler_crop_parse("slide"), SAMPLER_CROP_SLIDE);
    cr_assert_eq(sampler_crop_parse("shift"), SAMPLER_CROP_SHIFT);
    cr_assert_eq(sampler_crop_parse("stop"), SAMPLER_CROP_STOP);
    cr_assert_eq(sampler_crop_parse("Slide"), -1);
    cr_assert_eq(sampler_crop_parse(NULL), -1);
    cr_assert_str_eq(sampler_crop_name(SAMPLER_CROP_SHIFT), "shift");
    /* slide: the last W, whatever came before */
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SLIDE, 0, 5, 8), 0);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SLIDE, 0, 8, 8), 0);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SLIDE, 0, 9, 8), 1);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SLIDE, 1, 30, 8), 22);
    /* shift: moves only when the window overflows */
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SHIFT, 0, 8, 8), 0);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SHIFT, 0, 9, 8), 5);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SHIFT, 5, 13, 8), 5);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SHIFT, 5, 14, 8), 10);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_SHIFT, 0, 2, 1), 1);
    /* stop */
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_STOP, 0, 7, 8), 0);
    cr_assert_eq(sampler_crop_start(SAMPLER_CROP_STOP, 0, 8, 8), -1);
}

Test(generate, invalid_params_and_prompt_rejected_before_the_model)
{
    int32_t out[3 + 4];
    const sampler_params bad[] = {
        { .temperature = -0.5f },
        { .temperature = NAN },
        { .temperature = INFINITY },
        { .top_k = -1 },
        { .top_p = -0.1f },
        { .top_p = 1.5f },
        { .repetition_penalty = -1.0f },
        { .min_p = 2.0f },
        { .presence_penalty = 3.0f },
        { .frequency_penalty = -2.5f },
        { .penalty_last_n = -1 },
        { .n_stop_ids = 1 },
        { .n_bias = 1 },
        { .crop = 3 },
        { .crop = -1 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 4, &bad[i], out), SAMPLER_EINVAL, "case %zu", i);
        cr_assert_eq(toy.calls, 0);
    }
    sampler_params ok = { .temperature = 0.7f };
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 0, 4, &ok, out), SAMPLER_EINVAL); /* empty prompt */
    cr_assert_eq(toy.calls, 0);
    cr_assert_eq(gen(TOY_WAVE, 64, NULL, 3, 4, &ok, out), SAMPLER_EINVAL);
    int32_t badp[2] = { 1, V };
    cr_assert_eq(gen(TOY_WAVE, 64, badp, 2, 4, &ok, out), SAMPLER_EINVAL);
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, -1, &ok, out), SAMPLER_EINVAL);
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 4, NULL, out), SAMPLER_EINVAL);
    cr_assert_eq(toy.calls, 0);
    int32_t stop_bad[1] = { V };
    sampler_params s = { .stop_ids = stop_bad, .n_stop_ids = 1 };
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 4, &s, out), SAMPLER_EINVAL);
    cr_assert_eq(toy.calls, 0);
}

Test(generate, zero_new_tokens_and_model_failure)
{
    int32_t out[3 + 6];
    sampler_params p = { 0 };
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 0, &p, out), 3);
    cr_assert_eq(toy.calls, 0);
    cr_assert(memcmp(out, prompt3, sizeof prompt3) == 0);
    toy_init(&toy, TOY_WAVE, V, 64);
    toy.fail_at_call = 3;
    cr_assert_eq(sampler_generate(&toy.lm, prompt3, 3, 6, &p, out), -5);
    cr_assert_eq(toy.calls, 3);
}

static int count_repeats(const int32_t *gen_ids, int n)
{
    int r = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (gen_ids[j] == gen_ids[i]) {
                r++;
                break;
            }
    return r;
}

Test(generate, repetition_penalty_reduces_repeats)
{
    int32_t pr[1] = { 0 }, a[1 + 20], b[1 + 20];
    sampler_params off = { 0 }, on = { .repetition_penalty = 3.0f };
    gen(TOY_REPEATER, 64, pr, 1, 20, &off, a);
    gen(TOY_REPEATER, 64, pr, 1, 20, &on, b);
    cr_assert_eq(count_repeats(a + 1, 20), 19); /* all 5s */
    cr_assert_lt(count_repeats(b + 1, 20), 5);
    cr_assert_eq(b[1], 5);
    cr_assert_neq(b[2], 5);
    /* sampled too: over 200 tokens the penalty lowers the share of the favourite */
    int32_t c[1 + 200], d[1 + 200];
    sampler_params s_off = { .temperature = 0.3f, .seed = 5 }, s_on = s_off;
    s_on.repetition_penalty = 1.8f;
    gen(TOY_REPEATER, 64, pr, 1, 200, &s_off, c);
    gen(TOY_REPEATER, 64, pr, 1, 200, &s_on, d);
    int fc = 0, fd = 0;
    for (int i = 1; i <= 200; i++) {
        fc += c[i] == 5;
        fd += d[i] == 5;
    }
    cr_assert_lt(fd, fc);
}

Test(generate, repetition_penalty_counts_the_prompt_and_window_limits_it)
{
    int32_t pr[2] = { 5, 0 }, out[2 + 1];
    sampler_params full = { .repetition_penalty = 3.0f };
    gen(TOY_REPEATER, 64, pr, 2, 1, &full, out);
    cr_assert_eq(out[2], V - 1); /* 5 penalised via the prompt: the next best is 1 + 0.01*31 */
    sampler_params window = { .repetition_penalty = 3.0f, .penalty_last_n = 1 };
    gen(TOY_REPEATER, 64, pr, 2, 1, &window, out);
    cr_assert_eq(out[2], 5); /* 5 is outside the window of the last 1 id */
}

Test(generate, logit_bias_forbids_and_presence_frequency_penalise)
{
    int32_t pr[1] = { 0 }, out[1 + 10];
    int32_t ids[1] = { 5 };
    float forbid[1] = { -INFINITY };
    sampler_params b = { .bias_ids = ids, .bias_values = forbid, .n_bias = 1 };
    gen(TOY_REPEATER, 64, pr, 1, 10, &b, out);
    for (int i = 1; i <= 10; i++) cr_assert_neq(out[i], 5);
    /* a sampled run with the bias never emits it either */
    sampler_params bs = b;
    bs.temperature = 2.0f;
    bs.seed = 3;
    int32_t many[1 + 200];
    gen(TOY_REPEATER, 64, pr, 1, 200, &bs, many);
    for (int i = 1; i <= 200; i++) cr_assert_neq(many[i], 5);
    /* presence penalty 1.5: once 5 has been generated it drops below the others */
    sampler_params pp = { .presence_penalty = 1.5f };
    gen(TOY_REPEATER, 64, pr, 1, 3, &pp, out);
    cr_assert_eq(out[1], 5);
    cr_assert_eq(out[2], V - 1);
    /* presence counts only generated ids: a 5 in the prompt is not penalised */
    int32_t pr5[1] = { 5 };
    gen(TOY_REPEATER, 64, pr5, 1, 1, &pp, out);
    cr_assert_eq(out[1], 5);
    /* frequency 0.6: 5 (2.0) stays best after one use (1.4 > 1.31), not after two */
    sampler_params fp = { .frequency_penalty = 0.6f };
    gen(TOY_REPEATER, 64, pr, 1, 3, &fp, out);
    cr_assert_eq(out[1], 5);
    cr_assert_eq(out[2], 5);
    cr_assert_eq(out[3], V - 1);
}

Test(generate, all_tokens_forbidden_is_an_error)
{
    int32_t ids[V], pr[1] = { 0 }, out[1 + 2];
    float bias[V];
    for (int i = 0; i < V; i++) {
        ids[i] = i;
        bias[i] = -INFINITY;
    }
    sampler_params p = { .bias_ids = ids, .bias_values = bias, .n_bias = V };
    cr_assert_eq(gen(TOY_WAVE, 64, pr, 1, 2, &p, out), SAMPLER_EINVAL);
    p.temperature = 1.0f;
    cr_assert_eq(gen(TOY_WAVE, 64, pr, 1, 2, &p, out), SAMPLER_EINVAL);
}

Test(generate, min_p_one_equals_greedy)
{
    int32_t g[3 + 20], m[3 + 20];
    sampler_params greedy = { 0 }, p = { .temperature = 1.0f, .min_p = 1.0f, .seed = 8 };
    gen(TOY_WAVE, 64, prompt3, 3, 20, &greedy, g);
    gen(TOY_WAVE, 64, prompt3, 3, 20, &p, m);
    cr_assert(memcmp(g, m, sizeof g) == 0);
}

Test(generate, out_may_alias_prompt)
{
    int32_t buf[3 + 10] = { 1, 2, 3 }, ref[3 + 10];
    sampler_params p = { .temperature = 0.9f, .seed = 4 };
    gen(TOY_WAVE, 64, prompt3, 3, 10, &p, ref);
    cr_assert_eq(gen(TOY_WAVE, 64, buf, 3, 10, &p, buf), 13);
    cr_assert(memcmp(buf, ref, sizeof ref) == 0);
}

/* The per-token callback sees every generated token in order, between model calls,
 * and a nonzero return cancels before the next call (the tokens so far are kept). */
typedef struct {
    int seen;
    int cancel_after;
    int32_t tokens[64];
    int calls_when_called[64];
} token_log;

static int log_token(void *user, int32_t token, int n_generated)
{
    token_log *t = user;
    t->tokens[t->seen] = token;
    t->calls_when_called[t->seen] = toy.calls;
    t->seen++;
    cr_assert_eq(n_generated, t->seen);
    return t->cancel_after > 0 && t->seen >= t->cancel_after;
}

Test(generate, per_token_callback_and_cancellation_between_steps)
{
    int32_t full[3 + 20], cut[3 + 20];
    token_log all = { 0 }, some = { .cancel_after = 7 };
    sampler_params p = { .temperature = 0.9f, .seed = 77, .on_token = log_token, .on_token_user = &all };
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 20, &p, full), 23);
    cr_assert_eq(all.seen, 20);
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(all.tokens[i], full[3 + i]);
        cr_assert_eq(all.calls_when_called[i], i + 1, "called after model call %d", i + 1);
    }
    p.on_token_user = &some;
    cr_assert_eq(gen(TOY_WAVE, 64, prompt3, 3, 20, &p, cut), 3 + 7);
    cr_assert_eq(toy.calls, 7, "no model call after the cancellation");
    cr_assert(memcmp(cut, full, sizeof(int32_t) * (3 + 7)) == 0, "same seed, same tokens up to the cut");
}
