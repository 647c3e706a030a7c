"""metrics -- pure functions over generated texts (no server, no I/O).

Definitions (the report and the README use exactly these):
  words(text)        lower-cased word tokens: runs of letters/digits/underscore, with
                     inner apostrophes kept ("didn't" is one word); punctuation is dropped.
  type-token ratio   distinct words / words, for one text (None for a text with no words).
                     Reported per setting as the mean over its texts.
  distinct-n         distinct n-grams / n-grams, pooled over a *set* of texts (Li et al.
                     2016): measures how different the texts are from each other as well
                     as within themselves.  n-grams never cross text boundaries.
  repeated n-gram rate  for one text, the share of its n-grams that already occurred
                     earlier in the same text: (n-grams - distinct n-grams) / n-grams.
  mean log-prob      sum of the continuation tokens' log-probabilities / their count,
                     pooled over texts (see scoring.py for which tokens count).
  perplexity         exp(-mean log-prob).
  variation          for K samples of one prompt under one setting, (distinct texts - 1)
                     / (K - 1): 0 when every sample is the same, 1 when all differ;
                     reported as the mean over prompts.
  percentile(q)      linear interpolation between the closest ranks (numpy's default).
"""

import math
import re

_WORD = re.compile(r"\w+(?:'\w+)*")


def words(text):
    return _WORD.findall(text.lower())


def ngrams(seq, n):
    if n < 1:
        raise ValueError("n must be >= 1")
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def type_token_ratio(ws):
    if not ws:
        return None
    return len(set(ws)) / len(ws)


def distinct_n(texts_words, n):
    """texts_words: a list of word lists.  None if there is no n-gram at all."""
    total = 0
    seen = set()
    for ws in texts_words:
        g = ngrams(ws, n)
        total += len(g)
        seen.update(g)
    if total == 0:
        return None
    return len(seen) / total


def repeated_ngram_rate(ws, n):
    g = ngrams(ws, n)
    if not g:
        return None
    return (len(g) - len(set(g))) / len(g)


def mean(values):
    """Mean of the values that are not None; None if there are none."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return math.fsum(vs) / len(vs)


def percentile(values, q):
    """q in [0, 100]; linear interpolation between closest ranks.  None if empty."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    vs = sorted(values)
    if not vs:
        return None
    pos = (len(vs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(vs) - 1)
    frac = pos - lo
    return vs[lo] + (vs[hi] - vs[lo]) * frac


def variation(samples):
    """samples: the K texts generated for one prompt under one setting."""
    if len(samples) < 2:
        return None
    return (len(set(samples)) - 1) / (len(samples) - 1)


def pooled_logprob(logprob_lists):
    """Mean per-token log-prob over all tokens of all lists; None if no token."""
    total = 0.0
    count = 0
    for lps in logprob_lists:
        if lps:
            total += math.fsum(lps)
            count += len(lps)
    if count == 0:
        return None
    return total / count


def perplexity(mean_logprob):
    if mean_logprob is None:
        return None
    return math.exp(-mean_logprob)


def text_stats(texts, rep_n=3):
    """Diversity and length statistics of a set of texts (one setting, or one side
    of a comparison).  Values are None where undefined (e.g. no words)."""
    ws = [words(t) for t in texts]
    return {
        "texts": len(texts),
        "ttr": mean(type_token_ratio(w) for w in ws),
        "distinct_1": distinct_n(ws, 1),
        "distinct_2": distinct_n(ws, 2),
        "repeated_ngram_rate": mean(repeated_ngram_rate(w, rep_n) for w in ws),
        "mean_words": mean(len(w) for w in ws),
    }
