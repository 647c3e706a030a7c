"""The prefix cache (issue 24) over real HTTP, against stories260K.gguf: two servers, one
with the cache (the default --cache-mb) and one without (--cache-mb 0), get the same
requests, and every answer must be EQUAL -- text, logprobs (JSON numbers as printed),
finish reasons, streamed chunks -- greedy, seeded at T 0.8, n = 4, streaming, 16
concurrent requests sharing a long prefix with different suffixes, under a tiny budget
that evicts all the time, and after a client left in the middle of a request.  The cached
server reports what it reused: usage.prompt_tokens_details.cached_tokens, /metrics, the
log line."""
import http.client
import json
import os
import re
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, require_model, slow  # noqa: E402

# ~250 tokens of stories260K: a long shared start.
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the sun "
         "with her dog, Max. One day, Lily and Max went to the park. They saw a big tree with red apples. "
         "Lily wanted an apple, but the tree was too tall. She asked her mom for help. Her mom smiled and "
         "picked an apple for her. Lily was very happy. She shared the apple with Max and they ran home "
         "together. The next day, Lily found a small bird in the garden. The bird was sad because it could "
         "not fly. Lily gave the bird some water and a little bread.")
SUFFIXES = [" Then", " The bird", " Max", " Her mom", " Lily said", " After that", " One night", " Soon",
            " The sun", " In the end", " Later", " So", " But", " When", " The tree", " Every day"]


def strip(r):
    """What must not depend on the cache: everything but ids, times and usage."""
    r = json.loads(json.dumps(r))
    for k in ("id", "created", "usage", "system_fingerprint"):
        r.pop(k, None)
    return r


def same_answer(tc, on, off, body):
    """The same request to a server with the cache (on) and one without (off); the answers
    must be equal.  Returns (on's, off's)."""
    st1, a = on.post_json("/v1/completions", body)
    st2, b = off.post_json("/v1/completions", body)
    tc.assertEqual((st1, st2), (200, 200), (a, b))
    tc.assertEqual(strip(a), strip(b), "the cache changed the answer to %s" % json.dumps(body)[:200])
    return a, b


class CacheOnOff(unittest.TestCase):
    """Two servers started with ARGS, the second with --cache-mb 0 (no test of its own)."""
    ARGS = []
    on = off = None

    @classmethod
    def setUpClass(cls):
        require_model()
        cls.on = Server(cls.ARGS)
        cls.off = Server(cls.ARGS + ["--cache-mb", "0"])

    @classmethod
    def tearDownClass(cls):
        for s in (cls.on, cls.off):
            if s:
                rc = s.stop()
                assert rc == 0, "server exit code %s\n%s" % (rc, s.stderr)

    def both(self, body):
        return same_answer(self, self.on, self.off, body)


class TestPrefixCache(CacheOnOff):
    ARGS = ["--parallel", "16", "--queue", "64", "--max-choices", "8"]

    def test_repeated_prompt_greedy_and_seeded(self):
        for params in ({"temperature": 0}, {"temperature": 0.8, "seed": 424242}):
            body = dict(prompt=STORY, max_tokens=24, logprobs=3, **params)
            first, off = self.both(body)
            second, _ = self.both(body)
            n = second["usage"]["prompt_tokens"]
            self.assertGreater(n, 200)
            self.assertEqual(off["usage"]["prompt_tokens_details"], {"cached_tokens": 0})
            self.assertEqual(second["usage"]["prompt_tokens_details"]["cached_tokens"], n - 1,
                             "a repeated prompt computes only its last token")
            self.assertEqual(second["choices"][0]["text"], first["choices"][0]["text"])

    def test_n_choices(self):
        body = {"prompt": STORY + " Then", "max_tokens": 20, "n": 4, "temperature": 0.8, "seed": 7, "logprobs": 2}
        a, _ = self.both(body)
        texts = [c["text"] for c in a["choices"]]
        self.assertEqual(len(set(texts)), 4, "four seeds, four texts: %s" % texts)

    def test_streaming(self):
        body = {"prompt": STORY + " The end", "max_tokens": 20, "temperature": 0.8, "seed": 11, "logprobs": 1,
                "n": 2, "stream": True, "stream_options": {"include_usage": True}}
        runs = []
        for srv in (self.on, self.off, self.on):
            st, _, events = srv.stream("/v1/completions", body)
            self.assertEqual(st, 200)
            self.assertEqual(events[-1], "[DONE]")
            runs.append(events)
        # each choice's chunks in order (how the two choices' chunks interleave is timing:
        # with the cache the second choice starts a step after the first, whose prompt it takes)
        chunks = [[[strip(e)["choices"] for e in ev if e != "[DONE]" and e.get("choices")
                    and e["choices"][0]["index"] == i] for i in range(2)] for ev in runs]
        self.assertGreater(len(chunks[1][1]), 5)
        self.assertEqual(chunks[0], chunks[1], "streamed chunks differ with the cache")
        self.assertEqual(chunks[2], chunks[1], "a repeated stream differs")
        usage = [e for e in runs[2] if e != "[DONE]" and e.get("usage")][-1]["usage"]
        self.assertEqual(usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"] - 1)

    def test_sixteen_concurrent_sharing_a_prefix(self):
        start = self.on.metrics()
        out = [None] * len(SUFFIXES)

        def one(i):
            body = {"prompt": STORY + SUFFIXES[i] + " and", "max_tokens": 16, "temperature": 0.8,
                    "seed": 100 + i, "logprobs": 1}
            out[i] = self.on.post_json("/v1/completions", body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(SUFFIXES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120 * slow)
        for i, (st, r) in enumerate(out):
            self.assertEqual(st, 200, r)
            body = {"prompt": STORY + SUFFIXES[i] + " and", "max_tokens": 16, "temperature": 0.8,
                    "seed": 100 + i, "logprobs": 1}
            st2, alone = self.off.post_json("/v1/completions", body)
            self.assertEqual(st2, 200)
            self.assertEqual(strip(r), strip(alone), "request %d under load with the cache" % i)
        m = self.on.metrics()
        reused = m["lmserve_prompt_tokens_reused_total"] - start["lmserve_prompt_tokens_reused_total"]
        computed = m["lmserve_prompt_tokens_computed_total"] - start["lmserve_prompt_tokens_computed_total"]
        total = sum(r["usage"]["prompt_tokens"] for _, r in out)
        self.assertEqual(reused + computed, total, "every prompt position is computed or reused")
        self.assertGreater(reused, 14 * 200, "the shared start is reused by (almost) every request")

    def test_metrics_and_log_line(self):
        body = {"prompt": STORY + " Max barked", "max_tokens": 4}
        self.on.post_json("/v1/completions", body)
        st, r = self.on.post_json("/v1/completions", body)
        self.assertEqual(st, 200)
        cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        self.assertGreater(cached, 0)
        self.assertIsNotNone(self.on.wait_for_log(r"POST /v1/completions 200 prompt=%d reused=%d "
                                                  % (r["usage"]["prompt_tokens"], cached)))
        m = self.on.metrics()
        self.assertGreater(m["lmserve_prefix_cache_bytes"], 0)
        self.assertGreater(m["lmserve_prefix_cache_entries"], 0)
        self.assertLessEqual(m["lmserve_prefix_cache_bytes"], m["lmserve_prefix_cache_budget_bytes"])
        self.assertGreaterEqual(m["lmserve_prefix_cache_budget_bytes"], 64 << 20, "the default: at least 64 MiB")
        # the series openapi.yaml documents for the cache are the ones served, and all of them
        spec = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "openapi.yaml")).read()
        doc = spec[spec.index("operationId: metrics"):spec.index("/tokenize:")]
        documented = set(re.findall(r"`(lmserve_(?:prompt_tokens|prefix_cache)_\w+)`", doc))
        served = {k for k in m if re.match(r"lmserve_(prompt_tokens_(computed|reused)|prefix_cache)_", k)}
        self.assertEqual(documented, served)
        self.assertEqual(len(served), 6)
        moff = self.off.metrics()
        self.assertEqual(moff["lmserve_prefix_cache_budget_bytes"], 0)
        self.assertEqual(moff["lmserve_prompt_tokens_reused_total"], 0)
        self.assertGreater(moff["lmserve_prompt_tokens_computed_total"], 0)

    def test_client_leaving_midway(self):
        """A stream whose client hangs up after a few chunks leaves its entries; the same
        request again is answered as without the cache."""
        body = {"prompt": STORY + " Once", "max_tokens": 300, "temperature": 0.8, "seed": 5, "stream": True,
                "logit_bias": {"2": -100}}
        c = http.client.HTTPConnection("127.0.0.1", self.on.port, timeout=60)
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = c.getresponse()
        self.assertEqual(resp.status, 200)
        got = b""
        while got.count(b"data: ") < 5:
            got += resp.read1(4096)
        c.close()
        time.sleep(0.3 * slow)
        body.update(stream=False, max_tokens=30)
        self.both(body)
        st, r = self.on.post_json("/v1/completions", body)
        self.assertGreater(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)


class TestPastTheWindow(CacheOnOff):
    """--ctx 32: prompts longer than the window are cropped and every choice slides past
    it (the default context_overflow), so every window is recomputed from position 0;
    what the cache holds is reusable only where a window starts with the same tokens.
    The answers must not change."""
    ARGS = ["--parallel", "4", "--ctx", "32"]

    def both(self, body):
        a, b = super().both(body)
        self.assertEqual(a["usage"].get("prompt_tokens_dropped"), b["usage"].get("prompt_tokens_dropped"))
        return a

    def test_sliding_choices(self):
        # (shift refuses a prompt longer than the window)
        for policy, prompt in (("slide", "Once upon a time"), ("slide", STORY), ("shift", "Once upon a time")):
            body = {"prompt": prompt, "max_tokens": 80, "n": 2, "temperature": 0.8, "seed": 31, "logprobs": 1,
                    "logit_bias": {"2": -100}, "context_overflow": policy}
            a = self.both(body)
            self.assertTrue(all(len(c["logprobs"]["tokens"]) == 80 for c in a["choices"]), "past the window")
            body["stream"] = True
            runs = []
            for srv in (self.on, self.off):
                st, _, events = srv.stream("/v1/completions", body)
                self.assertEqual(st, 200)
                runs.append([[strip(e)["choices"] for e in events if e != "[DONE]" and e.get("choices")
                              and e["choices"][0]["index"] == i] for i in range(2)])
            self.assertEqual(runs[0], runs[1], "streamed choices past the window differ with the cache")

    def test_cropped_prompt_repeated(self):
        """A prompt longer than the window, answered without sliding (max_tokens 1): the
        cropped window is retained, and the same prompt again takes all of it but its
        last token."""
        body = {"prompt": STORY + " Max", "max_tokens": 1, "temperature": 0, "logprobs": 3}
        first = self.both(body)
        self.assertGreater(first["usage"]["prompt_tokens_dropped"], 150)
        again = self.both(body)
        self.assertEqual(again["usage"]["prompt_tokens_details"]["cached_tokens"], 31)
        self.assertEqual(again["choices"], first["choices"])

    def test_scoring_a_prompt_longer_than_the_window(self):
        """echo + logprobs past the window: every position scored from its own last 32
        tokens.  Only the first window's positions are scored all at once (and kept with
        their scores); each later window is recomputed for its last position, and the
        window the previous request ended with is taken from the cache."""
        for _ in range(2):
            a = self.both({"prompt": STORY, "max_tokens": 0, "echo": True, "logprobs": 1})
            self.assertGreater(len(a["choices"][0]["logprobs"]["tokens"]), 200)
        st, r = self.on.post_json("/v1/completions", {"prompt": STORY, "max_tokens": 0, "echo": True, "logprobs": 1})
        self.assertGreater(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0)


class TestTinyBudget(unittest.TestCase):
    """--cache-mb 1 holds a few sequences of stories260K (~1.3 KB a position): entries are
    evicted all the time and the answers do not change."""

    def test_eviction(self):
        require_model()
        with Server(["--parallel", "4", "--cache-mb", "1"]) as on, \
                Server(["--parallel", "4", "--cache-mb", "0"]) as off:
            for rnd in range(3):
                for i, suf in enumerate(SUFFIXES[:6]):
                    body = {"prompt": suf + " " + STORY + suf, "max_tokens": 12, "temperature": 0.8,
                            "seed": rnd * 10 + i, "logprobs": 1}
                    same_answer(self, on, off, body)
                    m = on.metrics()
                    self.assertLessEqual(m["lmserve_prefix_cache_bytes"], 1 << 20)
            m = on.metrics()
            self.assertGreater(m["lmserve_prefix_cache_evictions_total"], 0)
            self.assertGreater(m["lmserve_prompt_tokens_reused_total"], 0)
            self.assertEqual(m["lmserve_prefix_cache_budget_bytes"], 1 << 20)


if __name__ == "__main__":
    unittest.main()
