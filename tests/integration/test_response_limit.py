"""Memory per request is bounded: --response-limit and logit_bias ids.

A non-streamed answer is held whole until it ends, so one request could once make
the server allocate gigabytes (chat, n 32, max_tokens 1024, logprobs with
top_logprobs 20: a 44 MB body, RSS 13 -> 687 MB).  Now:
  - a request whose n x max_tokens tokens could not fit in --response-limit even
    with the smallest logprobs entries is refused up front (400 response_too_large,
    param max_tokens) -- the server's peak RSS does not move;
  - one that passes that estimate but grows past the limit ends with the same 400,
    and what it held is given back (/metrics lmserve_response_bytes back to 0);
  - streaming is not limited that way (its unsent bytes are, by --outbox-limit);
  - the estimate is a true lower bound of what the output stage writes;
  - logit_bias keys are token ids: "1" and "01" together are a 400 naming logit_bias.

Run alone: TESTS_ONLY=response_limit make test
"""
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, require_model, slow  # noqa: E402

SANITIZED = bool(os.environ.get("SANITIZE"))
RSS_GROWTH_BOUND_KIB = 64 * 1024  # the issue's acceptance bound

# The chat logprobs entry the output stage writes when everything is as short as it
# can be (empty token, logprob 0.0): the server's estimate must not exceed this.
CHAT_MIN_ENTRY = len('{"token":"","logprob":0.0,"bytes":[],"top_logprobs":[]}')
CHAT_MIN_TOP = len('{"token":"","logprob":0.0,"bytes":[]}')


def status_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        st = dict(line.split(":", 1) for line in f)
    return int(st["VmRSS"].split()[0]), int(st["VmHWM"].split()[0])


def big_chat(**over):
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "n": 32, "max_tokens": 1024,
            "logprobs": True, "top_logprobs": 20, "temperature": 1, "seed": 1}
    body.update(over)
    return body


class ResponseLimit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        # the default limit (16 MiB); shift keeps long runs cheap past the 512-token window
        cls.srv = Server(["--no-log", "--context-overflow", "shift"])

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        assert rc == 0, "lmserve exited with %s:\n%s" % (rc, cls.srv.stderr[-3000:])

    def test_issue_request_refused_without_growth(self):
        """The issue's request: refused before it starts; peak RSS grows < 64 MiB
        (in fact by nothing measurable: nothing is generated)."""
        pid = self.srv.proc.pid
        # warm up: one ordinary request so the baseline includes the first-use allocations
        st, _ = self.srv.post_json("/v1/chat/completions", big_chat(n=1, max_tokens=4))
        self.assertEqual(st, 200)
        rss0, hwm0 = status_kib(pid)
        t0 = time.monotonic()
        st, body = self.srv.post_json("/v1/chat/completions", big_chat())
        took = time.monotonic() - t0
        rss1, hwm1 = status_kib(pid)
        print("response_limit: issue request -> %d in %.3f s; RSS %d -> %d KiB, peak %d -> %d KiB"
              % (st, took, rss0, rss1, hwm0, hwm1), file=sys.stderr)
        self.assertEqual(st, 400, body)
        err = body["error"]
        self.assertEqual(err["code"], "response_too_large")
        self.assertEqual(err["param"], "max_tokens")
        self.assertIn("--response-limit", err["message"])
        self.assertIn("16777216", err["message"])
        if not SANITIZED:  # ASan's shadow memory and quarantine make RSS meaningless
            self.assertLess(hwm1 - hwm0, RSS_GROWTH_BOUND_KIB)
            self.assertLess(rss1 - rss0, RSS_GROWTH_BOUND_KIB)
        # at the accepted maxima too
        st, body = self.srv.post_json("/v1/chat/completions", big_chat(n=64, max_tokens=4096))
        self.assertEqual(st, 400)
        self.assertEqual(body["error"]["code"], "response_too_large")
        # the same request streamed is not held whole: accepted (its first event is enough)
        c = self.srv.conn()
        try:
            c.request("POST", "/v1/chat/completions", body=json.dumps(big_chat(stream=True, n=2, max_tokens=8)),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            r.read()
        finally:
            c.close()

    def test_estimate_is_a_lower_bound(self):
        """A real answer is at least what the estimate counts per token: the smallest
        entries (what the server assumes) never exceed what it writes."""
        st, body = self.srv.post_json("/v1/chat/completions", big_chat(n=2, max_tokens=24))
        self.assertEqual(st, 200, body)
        for ch in body["choices"]:
            for ent in ch["logprobs"]["content"]:
                one = len(json.dumps(ent, separators=(",", ":"), ensure_ascii=False).encode())
                least = CHAT_MIN_ENTRY + CHAT_MIN_TOP * len(ent["top_logprobs"])
                self.assertGreaterEqual(one, least, ent)
                self.assertEqual(len(ent["top_logprobs"]), 20)

    def test_metrics_gauge_returns_to_zero(self):
        m = self.srv.metrics()
        self.assertIn("lmserve_response_bytes", m)
        st, _ = self.srv.post_json("/v1/completions", {"prompt": "Once", "max_tokens": 8, "logprobs": 5})
        self.assertEqual(st, 200)
        deadline = time.monotonic() + 5 * slow
        while self.srv.metrics()["lmserve_response_bytes"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.srv.metrics()["lmserve_response_bytes"], 0)

    def test_logit_bias_ids_normalised(self):
        for keys in (["1", "01"], ["7", "007"], ["0", "00"]):
            st, body = self.srv.post_json("/v1/completions", {
                "prompt": "Once", "max_tokens": 1, "logit_bias": {keys[0]: 5, keys[1]: -5}})
            self.assertEqual(st, 400, (keys, body))
            self.assertEqual(body["error"]["param"], "logit_bias")
            self.assertIn("more than once", body["error"]["message"])
        for bad in ("+1", " 1", "1 ", "-0", "0x1", "1e2", ""):
            st, body = self.srv.post_json("/v1/completions", {
                "prompt": "Once", "max_tokens": 1, "logit_bias": {bad: 1}})
            self.assertEqual(st, 400, (bad, body))
            self.assertEqual(body["error"]["param"], "logit_bias")
        # a leading zero names the same id: the greedy first token, forbidden as "X" or
        # as "000X", gives way to the same other token
        first = {"prompt": "Once upon a", "max_tokens": 1, "temperature": 0, "logprobs": 1}
        st, body = self.srv.post_json("/v1/completions", first)
        self.assertEqual(st, 200, body)
        tok = body["choices"][0]["logprobs"]["tokens"][0]
        st, tb = self.srv.post_json("/tokenize", {"content": tok, "add_special": False, "with_pieces": True})
        self.assertEqual(st, 200, tb)
        ids = [i for i, piece in zip(tb["tokens"], tb["pieces"]) if piece.replace("\u2581", " ") == tok]
        self.assertEqual(len(ids), 1, (tok, tb))
        x = ids[0]
        texts = []
        for key in (str(x), "000" + str(x)):
            st, body = self.srv.post_json("/v1/completions", dict(first, logit_bias={key: -100}))
            self.assertEqual(st, 200, body)
            texts.append(body["choices"][0]["logprobs"]["tokens"][0])
        self.assertNotEqual(texts[0], tok)
        self.assertEqual(texts[0], texts[1])


class GrowsPastLimit(unittest.TestCase):
    """A request the estimate lets through (it could fit) but whose answer grows past
    the limit ends with the 400, the server keeps serving, and the bytes come back."""

    LIMIT = 200000

    @classmethod
    def setUpClass(cls):
        require_model()
        cls.srv = Server(["--no-log", "--response-limit", str(cls.LIMIT), "--context-overflow", "shift"])

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        assert rc == 0, "lmserve exited with %s:\n%s" % (rc, cls.srv.stderr[-3000:])

    def test_ends_at_the_limit(self):
        pid = self.srv.proc.pid
        st, _ = self.srv.post_json("/v1/completions", {"prompt": "Once", "max_tokens": 4})
        self.assertEqual(st, 200)
        _, hwm0 = status_kib(pid)
        # estimate: 4 x 2000 tokens x 14 bytes = 112,000 < 200,000 -> admitted; a real
        # completions entry with 5 alternatives is well over 25 bytes -> passes the limit
        req = {"prompt": "Once upon a time", "n": 4, "max_tokens": 2000, "logprobs": 5, "temperature": 1,
               "seed": 3,
               "logit_bias": {"1": -100, "2": -100}}  # no end of text: every choice runs to max_tokens
        seen = []

        def watch():  # the gauge while the answer grows
            for _ in range(200):
                try:
                    seen.append(self.srv.metrics()["lmserve_response_bytes"])
                except Exception:
                    return
                if max(seen) > 0:
                    return
                time.sleep(0.01)

        w = threading.Thread(target=watch)
        w.start()
        st, body = self.srv.post_json("/v1/completions", req, timeout=300)
        w.join()
        _, hwm1 = status_kib(pid)
        self.assertEqual(st, 400, body)
        err = body["error"]
        self.assertEqual(err["code"], "response_too_large")
        self.assertEqual(err["param"], "max_tokens")
        self.assertIn(str(self.LIMIT), err["message"])
        self.assertGreater(max(seen or [0]), 0, "lmserve_response_bytes never showed the answer being built")
        print("response_limit: grew past %d bytes -> 400 (%s); peak RSS %d -> %d KiB"
              % (self.LIMIT, err["message"], hwm0, hwm1), file=sys.stderr)
        if not SANITIZED:
            self.assertLess(hwm1 - hwm0, RSS_GROWTH_BOUND_KIB)
        deadline = time.monotonic() + 5 * slow
        while self.srv.metrics()["lmserve_response_bytes"] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.srv.metrics()["lmserve_response_bytes"], 0)
        # still serving, and a smaller answer fits
        st, body = self.srv.post_json("/v1/completions", {"prompt": "Once", "max_tokens": 16, "logprobs": 5})
        self.assertEqual(st, 200, body)
        self.assertEqual(len(body["choices"][0]["logprobs"]["tokens"]), body["usage"]["completion_tokens"])
        # and the same request streamed is not refused
        st, _, events = self.srv.stream("/v1/completions", dict(req, stream=True, n=1, max_tokens=64))
        self.assertEqual(st, 200)
        self.assertEqual(events[-1], "[DONE]")


if __name__ == "__main__":
    unittest.main()
