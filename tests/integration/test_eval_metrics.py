"""Unit tests for lmserve-eval's pure parts: the text metrics, percentiles, echo
scoring of continuations, the resumable results store, text splitting and seeds.
No server needed."""

import json
import math
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

from lmserve_eval import metrics  # noqa: E402
from lmserve_eval.client import parse_retry_after  # noqa: E402
from lmserve_eval.common import derive_seed  # noqa: E402
from lmserve_eval.scoring import ScoringError, continuation_logprobs, score_id  # noqa: E402
from lmserve_eval.score_cmd import split_text  # noqa: E402
from lmserve_eval.store import JsonlStore, StoreError  # noqa: E402


class WordsAndRatios(unittest.TestCase):
    def test_words_lowercase_apostrophes_no_punctuation(self):
        self.assertEqual(metrics.words("The cat didn't run. The CAT ran!"),
                         ["the", "cat", "didn't", "run", "the", "cat", "ran"])
        self.assertEqual(metrics.words("  ,.!  "), [])

    def test_type_token_ratio(self):
        self.assertAlmostEqual(metrics.type_token_ratio(["a", "b", "a", "c"]), 3 / 4)
        self.assertEqual(metrics.type_token_ratio(["x"] * 5), 1 / 5)
        self.assertIsNone(metrics.type_token_ratio([]))

    def test_ngrams(self):
        self.assertEqual(metrics.ngrams(["a", "b", "c"], 2), [("a", "b"), ("b", "c")])
        self.assertEqual(metrics.ngrams(["a"], 2), [])
        with self.assertRaises(ValueError):
            metrics.ngrams(["a"], 0)

    def test_distinct_n_pooled_over_texts(self):
        texts = [["a", "b", "a"], ["a", "b", "c"]]
        # unigrams: a b a a b c -> {a, b, c} = 3 of 6
        self.assertAlmostEqual(metrics.distinct_n(texts, 1), 3 / 6)
        # bigrams: ab ba | ab bc -> {ab, ba, bc} = 3 of 4 (none across the text boundary)
        self.assertAlmostEqual(metrics.distinct_n(texts, 2), 3 / 4)
        self.assertIsNone(metrics.distinct_n([["a"], []], 2))

    def test_distinct_of_identical_samples_falls_with_k(self):
        one = [["a", "b", "c", "d"]]
        self.assertEqual(metrics.distinct_n(one, 1), 1.0)
        self.assertEqual(metrics.distinct_n(one * 4, 1), 0.25)

    def test_repeated_ngram_rate(self):
        ws = "he liked to play he liked to play".split()
        # trigrams: 6, distinct: {he liked to, liked to play, to play he, play he liked} = 4
        self.assertAlmostEqual(metrics.repeated_ngram_rate(ws, 3), 2 / 6)
        self.assertEqual(metrics.repeated_ngram_rate("a b c d".split(), 2), 0.0)
        self.assertIsNone(metrics.repeated_ngram_rate(["a", "b"], 3))

    def test_text_stats(self):
        s = metrics.text_stats(["A b a.", "c d"], rep_n=1)
        self.assertEqual(s["texts"], 2)
        self.assertAlmostEqual(s["ttr"], (2 / 3 + 1.0) / 2)
        self.assertAlmostEqual(s["distinct_1"], 4 / 5)
        self.assertAlmostEqual(s["distinct_2"], 3 / 3)
        self.assertAlmostEqual(s["repeated_ngram_rate"], (1 / 3 + 0) / 2)
        self.assertAlmostEqual(s["mean_words"], 2.5)

    def test_text_stats_of_empty_texts(self):
        s = metrics.text_stats(["", "..."])
        self.assertIsNone(s["ttr"])
        self.assertIsNone(s["distinct_1"])
        self.assertEqual(s["mean_words"], 0)


class Aggregates(unittest.TestCase):
    def test_percentile_linear_interpolation(self):
        v = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4
        self.assertEqual(metrics.percentile(v, 0), 1.0)
        self.assertEqual(metrics.percentile(v, 100), 4.0)
        self.assertAlmostEqual(metrics.percentile(v, 50), 2.5)
        self.assertAlmostEqual(metrics.percentile(v, 95), 3.85)
        self.assertAlmostEqual(metrics.percentile(list(range(1, 101)), 99), 99.01)
        self.assertEqual(metrics.percentile([7.0], 99), 7.0)
        self.assertIsNone(metrics.percentile([], 50))
        with self.assertRaises(ValueError):
            metrics.percentile(v, 101)

    def test_mean_ignores_none(self):
        self.assertEqual(metrics.mean([1, None, 3]), 2)
        self.assertIsNone(metrics.mean([None]))

    def test_variation(self):
        self.assertEqual(metrics.variation(["x", "x", "x"]), 0.0)
        self.assertEqual(metrics.variation(["x", "y", "z"]), 1.0)
        self.assertEqual(metrics.variation(["x", "x", "y"]), 0.5)
        self.assertIsNone(metrics.variation(["x"]))

    def test_pooled_logprob_and_perplexity(self):
        lp = metrics.pooled_logprob([[-1.0, -2.0], [], [-3.0]])
        self.assertAlmostEqual(lp, -2.0)  # token-weighted, not a mean of means (-1.5, -3)
        self.assertAlmostEqual(metrics.perplexity(lp), math.exp(2.0))
        self.assertIsNone(metrics.pooled_logprob([[], []]))
        self.assertIsNone(metrics.perplexity(None))


def echo_answer(text, tokens, offsets, lps):
    return {"choices": [{"text": text, "logprobs": {"tokens": tokens, "token_logprobs": lps,
                                                    "top_logprobs": None, "text_offset": offsets}}]}


class EchoScoring(unittest.TestCase):
    # "Once upon a time, there" as a SentencePiece model tokenizes it, BOS first.
    TOKS = ["<s>", " Once", " upon", " a", " time", ",", " there"]
    OFFS = [0, 0, 4, 9, 11, 16, 17]
    LPS = [None, -6.5, -0.1, -1.0, -3.0, -1.1, -1.2]

    def test_tokens_after_the_prompt(self):
        resp = echo_answer("Once upon a time, there", self.TOKS, self.OFFS, self.LPS)
        lps, toks = continuation_logprobs(resp, "Once upon a time", ", there")
        self.assertEqual(toks, [",", " there"])
        self.assertEqual(lps, [-1.1, -1.2])
        lps, toks = continuation_logprobs(resp, "Once upon a", " time, there")
        self.assertEqual(lps, [-3.0, -1.1, -1.2])

    def test_straddling_token_counts_as_continuation(self):
        # prompt "Once upon a ti" + continuation "me, there": " time" ends after the join.
        resp = echo_answer("Once upon a time, there", self.TOKS, self.OFFS, self.LPS)
        lps, toks = continuation_logprobs(resp, "Once upon a ti", "me, there")
        self.assertEqual(toks, [" time", ",", " there"])

    def test_null_logprob_skipped_and_empty_prompt(self):
        resp = echo_answer("Once upon a time, there", self.TOKS, self.OFFS, self.LPS)
        lps, _ = continuation_logprobs(resp, "", "Once upon a time, there")
        self.assertEqual(lps, self.LPS[1:])

    def test_offsets_measured_from_the_end_when_the_server_normalises_the_prompt(self):
        # The server dropped a leading space of the prompt: offsets are one less.
        resp = echo_answer("Once upon a time, there", self.TOKS, self.OFFS, self.LPS)
        lps, toks = continuation_logprobs(resp, " Once upon a time", ", there")
        self.assertEqual(toks, [",", " there"])

    def test_malformed_answer(self):
        with self.assertRaises(ScoringError):
            continuation_logprobs({"choices": [{"text": "x", "logprobs": None}]}, "x", "y")
        with self.assertRaises(ScoringError):
            continuation_logprobs(echo_answer("ab", ["a", "b"], [0], [None, -1.0]), "a", "b")

    def test_score_id_distinguishes_the_join(self):
        self.assertNotEqual(score_id("ab", "c"), score_id("a", "bc"))
        self.assertEqual(score_id("a", "b"), score_id("a", "b"))


class Store(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "out.jsonl")

    def tearDown(self):
        self.dir.cleanup()

    def test_append_and_reopen(self):
        with JsonlStore(self.path) as s:
            s.append({"id": "a", "text": "é"})
            s.append({"id": 2, "text": "x"})
        with JsonlStore(self.path) as s:
            self.assertEqual(s.done_ids(), {"a", 2})
            self.assertEqual(s.torn_bytes, 0)
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        self.assertEqual(lines[-1], "")
        self.assertEqual(json.loads(lines[0]), {"id": "a", "text": "é"})

    def test_torn_last_line_is_cut(self):
        with JsonlStore(self.path) as s:
            s.append({"id": "a"})
        whole = os.path.getsize(self.path)
        with open(self.path, "ab") as f:
            f.write(b'{"id": "b", "te')
        with JsonlStore(self.path) as s:
            self.assertEqual(s.torn_bytes, len(b'{"id": "b", "te'))
            self.assertEqual(s.done_ids(), {"a"})
            self.assertEqual(os.path.getsize(self.path), whole)
            s.append({"id": "b"})
        with open(self.path, encoding="utf-8") as f:
            self.assertEqual([json.loads(x)["id"] for x in f], ["a", "b"])

    def test_bad_middle_line_and_duplicates_are_errors(self):
        with open(self.path, "w") as f:
            f.write('{"id": "a"}\nnot json\n{"id": "c"}\n')
        with self.assertRaisesRegex(StoreError, ":2: not a JSON line"):
            JsonlStore(self.path)
        with open(self.path, "w") as f:
            f.write('{"id": "a"}\n{"id": "a"}\n')
        with self.assertRaisesRegex(StoreError, "appears twice"):
            JsonlStore(self.path)

    def test_second_writer_is_refused(self):
        with JsonlStore(self.path):
            with self.assertRaisesRegex(StoreError, "another lmserve-eval"):
                JsonlStore(self.path)


class Helpers(unittest.TestCase):
    def test_split_text_at_a_word_boundary(self):
        self.assertEqual(split_text("one two three four", 0.5), ("one two", " three four"))
        self.assertEqual(split_text("one two three four", 0.01), ("one", " two three four"))
        self.assertEqual(split_text("one two three four", 0.99), ("one two three", " four"))
        self.assertEqual(split_text("a b c", n_words=2), ("a b", " c"))
        self.assertIsNone(split_text("single"))

    def test_derive_seed_depends_on_base_and_id_only(self):
        self.assertEqual(derive_seed(0, "p1"), derive_seed(0, "p1"))
        self.assertNotEqual(derive_seed(0, "p1"), derive_seed(0, "p2"))
        self.assertNotEqual(derive_seed(0, "p1"), derive_seed(1, "p1"))
        self.assertTrue(0 <= derive_seed(5, 7) < 2 ** 31)

    def test_retry_after(self):
        self.assertEqual(parse_retry_after("3"), 3.0)
        self.assertEqual(parse_retry_after("-2"), 0.0)
        self.assertIsNone(parse_retry_after(None))
        self.assertIsNone(parse_retry_after("soon"))
        self.assertAlmostEqual(parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now=1767225600.0), 10.0)


if __name__ == "__main__":
    unittest.main()
