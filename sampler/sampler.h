/* sampler.h -- logit warpers, the decode loop, and a step-wise sampler for servers.
 *
 * Design
 * ------
 * The four warpers (repetition penalty, temperature, top-k, top-p) are pure
 * functions of (logits, args): they
 * read logits[0..vocab) and write out[0..vocab) (out may equal logits), the
 * shape never changes, dropped tokens become -INFINITY, survivors keep their
 * exact values and nothing is normalised.  The argmax always survives top-k
 * and top-p.  The one softmax comes last.
 *
 * The order of one step (documented, tested):
 *   [constraint ->] logit_bias -> repetition penalty (over the penalty window of prompt +
 *   generated ids) -> presence/frequency penalties (over generated ids) ->
 *   temperature (0 = argmax here, nothing below runs) -> top-k -> top-p ->
 *   min-p -> softmax -> one draw from the sequence's own RNG.
 *
 * This module depends on libc and libm only (the constraint caches' mutexes are
 * POSIX threads', part of glibc's libc).  It sees a model through the
 * `sampler_lm` callback (whole-loop use) or not at all (step-wise use: the
 * caller computes logits however it likes, e.g. batched across sequences).
 */
#ifndef LMSERVE_SAMPLER_H
#define LMSERVE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

enum { SAMPLER_OK = 0, SAMPLER_EINVAL = -22, SAMPLER_ENOMEM = -12, SAMPLER_ECANCELED = -125 };

/* ---- Warpers ------------------------------------------------------------------
 * On an out-of-range argument: return SAMPLER_EINVAL and leave out untouched. */
int sampler_apply_temperature(const float *logits, float *out, int vocab,
                              float temperature); /* temperature > 0, finite */
int sampler_top_k_filter(const float *logits, float *out, int vocab,
                         int k); /* k >= 1; k >= vocab keeps all; ties with the k-th value survive */
int sampler_top_p_filter(
    const float *logits, float *out, int vocab,
    float p); /* 0 < p <= 1; keeps the smallest top prefix whose mass >= p, always incl. the crossing token */
int sampler_apply_repetition_penalty(
    const float *logits, float *out, int vocab, const int32_t *seen, int n_seen,
    float
        penalty); /* penalty > 0; each distinct seen id once: logit > 0 -> /penalty, else *penalty; ids must be in [0, vocab) */
int sampler_softmax(const float *logits, float *probs, int vocab); /* -INFINITY -> exactly 0 */

/* Extras, same contract. */
int sampler_min_p_filter(const float *logits, float *out, int vocab,
                         float min_p); /* 0 <= min_p <= 1: drop p_i < min_p * p_max */
int sampler_apply_logit_bias(const float *logits, float *out, int vocab, const int32_t *ids, const float *bias,
                             int n); /* adds bias[j] to ids[j]; -INFINITY bias forbids */
int sampler_apply_presence_frequency(
    const float *logits, float *out, int vocab, const int32_t *seen, int n_seen, float presence,
    float frequency); /* OpenAI: l -= c*frequency + (c>0)*presence, c = count in seen; each in [-2, 2] */

/* ---- The crop: what the next logits are computed from ------------------------
 * A model sees at most max_seq_len (W) positions.  Once a sequence seq[0..n) no
 * longer fits, a policy decides the window seq[start..n) the next logits come from:
 *   SAMPLER_CROP_SLIDE (the default): the last W tokens, every step, at
 *     positions 0..W-1, as the reference decode loop crops.  No cached position survives a step (every input
 *     of every layer moves), so past the window each new token costs a forward
 *     pass over W tokens.
 *   SAMPLER_CROP_SHIFT: when the window is full, keep its last W/2 tokens and go
 *     on from there: W/2 recomputed once, then one new position per step until the
 *     window is full again.  Cheaper, but an approximation: the model sees between
 *     W/2 and W tokens.
 *   SAMPLER_CROP_STOP: no crop; the sequence ends when it fills the window
 *     (prompt + generated = W). */
enum { SAMPLER_CROP_SLIDE = 0, SAMPLER_CROP_SHIFT = 1, SAMPLER_CROP_STOP = 2 };

/* The window's first index for the next logits of seq[0..n), given where the
 * window started so far (0 at first) and W >= 1; -1 if the policy ends the
 * sequence here (STOP at n >= W). */
int sampler_crop_start(int policy, int start, int n, int W);
/* "slide", "shift", "stop" -> SAMPLER_CROP_*; -1 for anything else. */
int sampler_crop_parse(const char *name);
const char *sampler_crop_name(int policy);

struct sampler_constraint;

/* ---- Whole-loop interface ------------------------------------------------------ */

typedef struct sampler_lm sampler_lm;
struct sampler_lm {
    int vocab_size;
    int max_seq_len; /* W: the window the crop keeps the context within */
    /* Next-token logits for the last position of ctx[0..n_ctx), 1 <= n_ctx <= max_seq_len.
     * Returns 0, or a negative value on failure. */
    int (*next_logits)(sampler_lm *lm, const int32_t *ctx, int n_ctx, float *logits);
};

/* Every field's zero value means "off" / default, so (sampler_params){.temperature = 0.7f} is valid. */
typedef struct {
    float temperature;        /* 0 = greedy (argmax); < 0 or non-finite: invalid */
    int top_k;                /* 0 = off; < 0 invalid */
    float top_p;              /* 0 = off; else must be in (0, 1] */
    float repetition_penalty; /* 0 = off; else must be > 0 (1 is a no-op) */
    uint64_t seed;            /* the RNG is seeded once per call from this */
    const int32_t *stop_ids;  /* generation stops after emitting any of these (it is included) */
    int n_stop_ids;
    /* additions; zero = off */
    float min_p;             /* 0 = off; else in (0, 1] */
    float presence_penalty;  /* [-2, 2] */
    float frequency_penalty; /* [-2, 2] */
    int penalty_last_n;      /* repetition penalty window: 0 = whole sequence, else the last n ids */
    int crop;                /* sampler_generate: SAMPLER_CROP_* (0 = slide) */
    const int32_t *bias_ids; /* logit_bias */
    const float *bias_values;
    int n_bias;
    /* sampler_generate only: called after each new token is appended (prompt excluded),
     * between model calls.  A nonzero return stops generation there (cancellation); the
     * tokens so far are kept and their count returned as usual.  NULL = no callback. */
    int (*on_token)(void *user, int32_t token, int n_generated);
    void *on_token_user;
    /* Constrained decoding (see below): NULL = off.  Borrowed, not copied: it must
     * outlive the sampler, and it belongs to one sequence (it holds that sequence's
     * automaton state).  It is the FIRST warper; sampler_step and sampler_generate
     * advance it with each chosen token. */
    struct sampler_constraint *constraint;
} sampler_params;

/* Check every field; SAMPLER_OK or SAMPLER_EINVAL.  If name is not NULL, *name is
 * set to the offending field's name ("temperature", "top_p", ...). */
int sampler_params_validate(const sampler_params *p, int vocab, const char **name);

/* Writes the prompt followed by the generated tokens into out (capacity n_prompt + max_new_tokens).
 * Returns the total length, or a negative error (SAMPLER_EINVAL for bad params or an empty prompt,
 * before the model is ever called; a model failure is passed through). */
int sampler_generate(sampler_lm *lm, const int32_t *prompt, int n_prompt, int max_new_tokens,
                     const sampler_params *params, int32_t *out);

/* ---- RNG ---------------------------------------------------------------------
 * Deterministic on every platform: xoshiro-style 64-bit generator seeded via
 * splitmix64.  A draw takes a coin in [0, 1) so sampling tests can pass their own. */
typedef struct {
    uint64_t s[4];
} sampler_rng;
void sampler_rng_seed(sampler_rng *r, uint64_t seed);
uint64_t sampler_rng_next(sampler_rng *r);
float sampler_rng_uniform(sampler_rng *r); /* [0, 1), 24 random bits */

/* Index drawn from probs[0..n) (sum 1) with coin in [0, 1). */
int sampler_draw(const float *probs, int n, float coin);
int sampler_argmax(const float *logits, int n); /* lowest index among equal maxima */

/* ---- Step-wise interface (servers) ---------------------------------------------
 * One sampler per sequence: owns its RNG and scratch buffers.  The caller feeds
 * the logits of each step (computed however it likes) plus the sequence so far. */

#define SAMPLER_MAX_TOP 20

typedef struct {
    int32_t id;
    float logprob; /* log softmax of the raw (unwarped) logits */
} sampler_candidate;

typedef struct {
    int32_t token;                          /* the chosen token */
    float logprob;                          /* its log-probability under the raw model distribution */
    int n_top;                              /* number of entries in top (= n_top asked, <= vocab) */
    sampler_candidate top[SAMPLER_MAX_TOP]; /* most likely tokens under the raw distribution, best first */
    int constraint;                         /* with a constraint: its status after this token
                                 (SAMPLER_CONSTRAINT_*); without one: SAMPLER_CONSTRAINT_NONE */
} sampler_choice;

typedef struct sampler sampler;

/* params is copied (including bias and stop arrays).  NULL on bad params or no memory. */
sampler *sampler_new(int vocab, const sampler_params *params);
void sampler_free(sampler *s);
/* Choose the next token given this step's logits (not modified) and the ids so far
 * (prompt + generated; the repetition window and presence/frequency counts use them,
 * generated = the last n_generated of them).  n_top in [0, SAMPLER_MAX_TOP], or
 * SAMPLER_TOKEN_ONLY: the token alone (out->logprob NAN, out->n_top 0), which skips
 * the pass over the vocabulary that log-probabilities cost when nobody asked for them. */
#define SAMPLER_TOKEN_ONLY (-1)
int sampler_step(sampler *s, const float *logits, const int32_t *ids, int n_ids, int n_generated, int n_top,
                 sampler_choice *out);
/* Log-softmax entries for scoring a given token (echo/logprobs of prompts). */
int sampler_logprobs(const float *logits, int vocab, int32_t token, int n_top, sampler_choice *out);

/* ---- Trace of a step: what each stage did ---------------------------------------
 * A traced step records, for the stages of the order above, the row each stage
 * left behind -- the very arrays the step warped and drew from, copied as it goes,
 * not recomputed -- and reduces them afterwards to a few candidates:
 *   candidates = the raw top N, then any token that is in the top N after a later
 *   stage, then the drawn token if it is none of those (each once; top N ranks by
 *   value, equal values by increasing id, dropped tokens never rank).
 * For every stage that ran: how many tokens survive it (not -INFINITY; after
 * softmax, probability > 0) and each candidate's value after it: a logit (bias,
 * penalties, temperature, filters; -INFINITY = dropped) or, after softmax, the
 * probability the draw used.  A stage that is off for the request (an identity:
 * temperature 1, top-p 1, top-k 0 or >= the candidates left, ...) does not run
 * and is marked so.  Greedy (temperature 0) takes the argmax after the penalties:
 * temperature and everything after it are marked not run, and there is no coin.
 * Top-k keeps ties with the k-th value, so more than k may survive it.
 * Tracing only reads the step's arrays: the tokens drawn are the untraced ones. */

#define SAMPLER_TRACE_MAX 20 /* largest N */

typedef enum {
    SAMPLER_STAGE_LOGITS,     /* the model's logits, as given */
    SAMPLER_STAGE_CONSTRAINT, /* the grammar's mask (response_format, grammar, choice) */
    SAMPLER_STAGE_LOGIT_BIAS,
    SAMPLER_STAGE_REPETITION_PENALTY,
    SAMPLER_STAGE_PRESENCE_FREQUENCY,
    SAMPLER_STAGE_TEMPERATURE,
    SAMPLER_STAGE_TOP_K,
    SAMPLER_STAGE_TOP_P,
    SAMPLER_STAGE_MIN_P,
    SAMPLER_STAGE_SOFTMAX, /* values are probabilities */
    SAMPLER_STAGE_COUNT
} sampler_stage;

/* "logits", "constraint", "logit_bias", "repetition_penalty", "presence_frequency", "temperature",
 * "top_k", "top_p", "min_p", "softmax"; NULL out of range. */
const char *sampler_stage_name(int stage);

/* A stage can bring at most N new tokens into the top N. */
#define SAMPLER_TRACE_MAX_CANDIDATES (SAMPLER_TRACE_MAX * SAMPLER_STAGE_COUNT + 1)

typedef struct {
    int ran;                                   /* 0: skipped (off for this request, or after greedy's argmax) */
    int survivors;                             /* tokens left after the stage (set when ran) */
    float value[SAMPLER_TRACE_MAX_CANDIDATES]; /* per candidate (set when ran) */
} sampler_trace_stage;

typedef struct {
    int n; /* N: the candidates' top-N */
    int n_candidates;
    int32_t candidate[SAMPLER_TRACE_MAX_CANDIDATES]; /* token ids, in the order above */
    sampler_trace_stage stage[SAMPLER_STAGE_COUNT];  /* indexed by sampler_stage */
    int greedy;                                      /* 1: argmax after the penalties, nothing after ran */
    float coin;                                      /* the uniform number in [0, 1) the draw used; NAN when greedy */
    int32_t token;                                   /* the chosen token (always a candidate) */
    float probability;                               /* its probability after softmax; NAN when greedy */
    /* Where each candidate sits on the draw's line: the draw walks the survivors in
     * increasing id order, summing probabilities, and stops at the first token whose
     * running sum passes the coin.  cdf_before[c] is that sum just before candidate c
     * (in double, as the draw adds), so the chosen token has
     * cdf_before <= coin < cdf_before + probability (unless rounding left the total
     * below the coin: then the last survivor is taken).  NAN when the candidate has
     * probability 0, and for every candidate when greedy. */
    double cdf_before[SAMPLER_TRACE_MAX_CANDIDATES];
} sampler_trace;

/* Give the sampler the memory to trace its steps with N = n (1..SAMPLER_TRACE_MAX):
 * a copy of each stage's row, (SAMPLER_STAGE_COUNT + 4) * vocab * 4 bytes, allocated
 * here once.  Again with another n: only n changes.  SAMPLER_OK, SAMPLER_EINVAL
 * (n out of range), SAMPLER_ENOMEM (the sampler is unchanged). */
int sampler_trace_enable(sampler *s, int n);
/* sampler_step, and if trace is not NULL, the step's trace written there
 * (SAMPLER_EINVAL when tracing was not enabled).  trace NULL is sampler_step. */
int sampler_step_traced(sampler *s, const float *logits, const int32_t *ids, int n_ids, int n_generated, int n_top,
                        sampler_choice *out, sampler_trace *trace);
/* ---- Constrained decoding ------------------------------------------------------
 * A grammar (a documented subset of llama.cpp's GBNF, see grammar.c) compiles to
 * one byte-level pushdown automaton.  A constraint runs it for one sequence: per
 * step it is the first warper, setting to -INFINITY every token whose bytes the
 * automaton cannot read next from its current state, and the chosen token then
 * advances the state.  The end tokens (EOS, ...) are allowed exactly when the
 * automaton is in an accepting state.  The later warpers see only allowed tokens,
 * so the argmax of the allowed tokens survives top-k and top-p as before;
 * log-probabilities (sampler_choice) still describe the model's raw distribution.
 *
 * Three objects, by lifetime:
 *   sampler_grammar     compiled once per request; immutable, shareable across threads;
 *   sampler_vocab       the model's token bytes as a byte trie plus its end tokens;
 *                       built once per model; immutable, shareable across threads;
 *   sampler_constraint_cache  the lazily built transition tables and per-state
 *                       token masks of one grammar; shared by the sequences and
 *                       requests that use the grammar, on any threads;
 *   sampler_constraint  one sequence's automaton state; one thread at a time.
 * How the mask is computed and cached: constrain.c. */

typedef struct sampler_grammar sampler_grammar;
typedef struct sampler_vocab sampler_vocab;
typedef struct sampler_constraint sampler_constraint;

typedef struct {
    size_t offset;     /* byte offset in the grammar text where the problem is */
    int line, column;  /* 1-based, columns in bytes */
    char message[200]; /* what is wrong, e.g. "undefined rule 'valeu'" */
} sampler_grammar_error;

/* Compile GBNF text.  SAMPLER_OK and *out, or SAMPLER_EINVAL with *err filled
 * (err may be NULL), or SAMPLER_ENOMEM.  Limits (element count, nesting depth,
 * repetition counts) are errors too, never truncation. */
int sampler_grammar_parse(sampler_grammar **out, const char *text, size_t len, sampler_grammar_error *err);
void sampler_grammar_free(sampler_grammar *g);
/* Nonzero if the grammar's strings may hold byte b anywhere. */
int sampler_grammar_uses_byte(const sampler_grammar *g, unsigned char b);

/* Run the automaton over s[0..n) from the start: SAMPLER_MATCH_FULL if s is a whole
 * string of the language, SAMPLER_MATCH_PREFIX if it is only a proper prefix of
 * one, SAMPLER_MATCH_NONE if it is neither; or a negative error. */
enum { SAMPLER_MATCH_NONE = 0, SAMPLER_MATCH_PREFIX = 1, SAMPLER_MATCH_FULL = 2 };
int sampler_grammar_match(const sampler_grammar *g, const char *s, size_t n);

/* The bytes of token id, or NULL for a token a constrained text can never hold
 * (control tokens, tokens with no bytes).  The pointer need only stay valid until
 * the next call. */
typedef const char *(*sampler_token_bytes_fn)(void *user, int32_t id, size_t *len);

/* Build the trie of n_vocab tokens; end_ids[0..n_end) are the tokens that end a
 * text (EOS, and BOS for models that end there).  SAMPLER_OK, SAMPLER_EINVAL, SAMPLER_ENOMEM. */
int sampler_vocab_new(sampler_vocab **out, int n_vocab, sampler_token_bytes_fn bytes, void *user,
                      const int32_t *end_ids, int n_end);
void sampler_vocab_free(sampler_vocab *v);
int sampler_vocab_size(const sampler_vocab *v);
/* Nonzero if the vocabulary has a one-byte token for b (a constrained text can
 * never get stuck on a byte that has one). */
int sampler_vocab_has_byte(const sampler_vocab *v, unsigned char b);

/* The constraint's status, after the tokens accepted so far. */
enum {
    SAMPLER_CONSTRAINT_NONE = -1,    /* no constraint (sampler_choice only) */
    SAMPLER_CONSTRAINT_OPEN = 0,     /* the text must go on */
    SAMPLER_CONSTRAINT_MAY_END = 1,  /* the text is complete; an end token or more text may follow */
    SAMPLER_CONSTRAINT_COMPLETE = 2, /* complete and nothing can follow: end it now (or an end token was accepted) */
    SAMPLER_CONSTRAINT_STUCK = 3,    /* not complete, yet no token of the vocabulary can continue it */
};

/* A cache of automaton tables and masks for one grammar and vocabulary, shared
 * by every constraint made from it, on any threads: a state's mask is computed
 * once for all of them.  It takes ownership of g (freed with the cache, also when
 * this fails); v is borrowed and must outlive it.  Reference-counted: _ref adds a
 * holder, _free drops one, and each constraint made from it holds one too.
 * NULL on bad arguments or no memory. */
typedef struct sampler_constraint_cache sampler_constraint_cache;
sampler_constraint_cache *sampler_constraint_cache_new(sampler_grammar *g, const sampler_vocab *v);
sampler_constraint_cache *sampler_constraint_cache_ref(sampler_constraint_cache *cc);
void sampler_constraint_cache_free(sampler_constraint_cache *cc);
const sampler_grammar *sampler_constraint_cache_grammar(const sampler_constraint_cache *cc);
/* A constraint at the start of the language, working in cc's tables. */
sampler_constraint *sampler_constraint_new_shared(sampler_constraint_cache *cc);
/* The same with a private cache; g and v are borrowed and must outlive c.  NULL on
 * bad arguments or no memory. */
sampler_constraint *sampler_constraint_new(const sampler_grammar *g, const sampler_vocab *v);
void sampler_constraint_free(sampler_constraint *c);
/* One more token that ends the text for this constraint alone, beside the
 * vocabulary's end tokens (a chat template's end of turn): allowed exactly when
 * the text is whole, whatever bytes it has, and accepting it ends the text.  Once,
 * before the first token; SAMPLER_EINVAL for an id outside the vocabulary or a
 * second call. */
int sampler_constraint_add_end(sampler_constraint *c, int32_t token);
/* The warper: out[i] = logits[i] if token i may come next, else -INFINITY (out may
 * equal logits).  SAMPLER_EINVAL if vocab differs from the vocabulary's size or an
 * end token was already accepted, SAMPLER_ENOMEM; out is untouched on error. */
int sampler_constraint_apply(sampler_constraint *c, const float *logits, float *out, int vocab);
/* Advance by one token.  SAMPLER_EINVAL (state unchanged) if the token may not come next. */
int sampler_constraint_accept(sampler_constraint *c, int32_t token);
/* SAMPLER_CONSTRAINT_OPEN .. STUCK, or a negative error (no memory). */
int sampler_constraint_status(sampler_constraint *c);

#endif /* LMSERVE_SAMPLER_H */
