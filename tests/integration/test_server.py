"""Integration tests for `lmserve serve` over real HTTP (issue 4, and issue 9's
bit-identical-under-batching property), against stories260K.gguf."""
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, iter_sse, require_model, slow, stream_text  # noqa: E402

PROMPT = "Once upon a time"
GREEDY16 = ", there was a little girl named Lily. She loved to play"
SHARED_ARGS = ["--parallel", "16", "--queue", "64", "--max-tokens-limit", "2048",
               "--body-limit", "65536", "--max-choices", "8"]


def completion(srv, **kw):
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    body.update(kw)
    return srv.post_json("/v1/completions", body)


class SharedServer(unittest.TestCase):
    srv = None

    @classmethod
    def setUpClass(cls):
        require_model()
        cls.srv = Server(SHARED_ARGS)

    @classmethod
    def tearDownClass(cls):
        if cls.srv:
            rc = cls.srv.stop()
            assert rc == 0, "server exit code %s\n%s" % (rc, cls.srv.stderr)


class TestCompletions(SharedServer):
    def test_greedy_not_streamed(self):
        status, r = completion(self.srv)
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "text_completion")
        self.assertEqual(r["model"], "stories260K")
        self.assertTrue(r["id"].startswith("cmpl-"))
        self.assertIsInstance(r["created"], int)
        ch = r["choices"][0]
        self.assertEqual(ch["text"], GREEDY16)
        self.assertEqual(ch["index"], 0)
        self.assertIsNone(ch["logprobs"])
        self.assertEqual(ch["finish_reason"], "length")
        self.assertEqual(r["usage"]["completion_tokens"], 16)
        self.assertGreater(r["usage"]["prompt_tokens"], 1)
        self.assertEqual(r["usage"]["total_tokens"],
                         r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"])

    def test_greedy_streamed_equals_not_streamed(self):
        status, hdrs, events = self.srv.stream(
            "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True})
        self.assertEqual(status, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/event-stream"))
        self.assertEqual(hdrs["cache-control"], "no-cache")
        self.assertEqual(hdrs["x-accel-buffering"], "no")
        self.assertEqual(events[-1], "[DONE]")
        chunks = events[:-1]
        self.assertEqual(stream_text(chunks), GREEDY16)
        # one chunk per token, then the final one with finish_reason
        self.assertEqual(len(chunks), 17)
        for c in chunks[:-1]:
            self.assertEqual(c["object"], "text_completion")
            self.assertIsNone(c["choices"][0]["finish_reason"])
            self.assertNotEqual(c["choices"][0]["text"], "")
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertNotIn("usage", chunks[-1])

    def test_stream_include_usage(self):
        status, _, events = self.srv.stream("/v1/completions", {
            "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}})
        self.assertEqual(status, 200)
        self.assertEqual(events[-1], "[DONE]")
        usage = events[-2]
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 5)
        self.assertEqual(events[-3]["choices"][0]["finish_reason"], "length")

    def test_token_array_prompt_matches_text_prompt(self):
        _, tok = self.srv.post_json("/tokenize", {"content": PROMPT})
        status, r = completion(self.srv, prompt=tok["tokens"])
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["text"], GREEDY16)

    def test_several_prompts(self):
        status, r = completion(self.srv, prompt=[PROMPT, "One day"], max_tokens=4)
        self.assertEqual(status, 200, r)
        self.assertEqual([c["index"] for c in r["choices"]], [0, 1])
        self.assertEqual(r["choices"][0]["text"], GREEDY16[:len(r["choices"][0]["text"])])

    def test_stop_string_never_emitted(self):
        status, r = completion(self.srv, stop=["little", "zzz"])
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["text"], ", there was a ")
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        status, _, events = self.srv.stream("/v1/completions", {
            "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True, "stop": "little"})
        self.assertEqual(stream_text(events), ", there was a ")
        self.assertEqual(events[-2]["choices"][0]["finish_reason"], "stop")
        # a stop string spanning several tokens
        status, r = completion(self.srv, stop="named Li")
        self.assertEqual(r["choices"][0]["text"], ", there was a little girl ")

    def test_logprobs(self):
        status, r = completion(self.srv, max_tokens=6, logprobs=3)
        self.assertEqual(status, 200, r)
        lp = r["choices"][0]["logprobs"]
        self.assertEqual(len(lp["tokens"]), 6)
        self.assertEqual("".join(lp["tokens"]), r["choices"][0]["text"])
        self.assertEqual(len(lp["token_logprobs"]), 6)
        self.assertEqual(lp["text_offset"][0], 0)
        self.assertEqual(lp["text_offset"], sorted(lp["text_offset"]))
        for tok, val, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            self.assertLessEqual(val, 0.0)
            self.assertLessEqual(len(top), 3)
            # greedy: the chosen token is the most likely one
            self.assertAlmostEqual(max(top.values()), val, places=6)
            self.assertIn(tok, top)

    def test_echo_scoring_matches_generation(self):
        # generation: logprob of the first greedy token after the prompt
        _, g = completion(self.srv, max_tokens=1, logprobs=1)
        first_tok = g["choices"][0]["logprobs"]["tokens"][0]
        first_lp = g["choices"][0]["logprobs"]["token_logprobs"][0]
        # scoring: echo + max_tokens 0 + logprobs on prompt + that token
        status, r = completion(self.srv, prompt=PROMPT + first_tok, max_tokens=0, echo=True, logprobs=1)
        self.assertEqual(status, 200, r)
        ch = r["choices"][0]
        self.assertEqual(ch["text"], PROMPT + first_tok)
        lp = ch["logprobs"]
        self.assertEqual(lp["tokens"][-1], first_tok)
        self.assertAlmostEqual(lp["token_logprobs"][-1], first_lp, places=5)
        self.assertEqual(lp["text_offset"][0], 0)
        self.assertEqual(lp["text_offset"][-1], len(PROMPT))
        self.assertEqual(r["usage"]["completion_tokens"], 0)
        self.assertTrue(all(v is None or v <= 0 for v in lp["token_logprobs"]))
        # echo with generation: prompt then completion
        status, r = completion(self.srv, echo=True)
        self.assertEqual(r["choices"][0]["text"], PROMPT + GREEDY16)

    def test_multibyte_characters_never_split(self):
        # byte-fallback tokens: the echo must come out as whole characters, streamed or not
        text = "Le caf\u00e9 \u2615 est chaud \U0001F600!"
        status, r = completion(self.srv, prompt=text, max_tokens=0, echo=True, logprobs=0)
        self.assertEqual(status, 200, r)
        self.assertEqual(r["choices"][0]["text"], text)
        status, _, events = self.srv.stream("/v1/completions", {
            "prompt": text, "max_tokens": 8, "temperature": 0, "echo": True, "stream": True})
        streamed = stream_text(events)
        self.assertTrue(streamed.startswith(text), streamed)
        self.assertNotIn("\ufffd", streamed)
        _, r2 = completion(self.srv, prompt=text, max_tokens=8, echo=True)
        self.assertEqual(streamed, r2["choices"][0]["text"])

    def test_seed_reproducible_and_n(self):
        body = {"temperature": 0.9, "seed": 1234, "max_tokens": 20}
        _, a = completion(self.srv, **body)
        _, b = completion(self.srv, **body)
        self.assertEqual(a["choices"][0]["text"], b["choices"][0]["text"])
        _, c = completion(self.srv, **dict(body, n=3))
        texts = [x["text"] for x in c["choices"]]
        self.assertEqual([x["index"] for x in c["choices"]], [0, 1, 2])
        self.assertEqual(texts[0], a["choices"][0]["text"])  # choice i uses seed + i
        self.assertGreater(len(set(texts)), 1)
        _, d = completion(self.srv, **dict(body, seed=1235))
        self.assertEqual(d["choices"][0]["text"], texts[1])

    def test_sampler_fields_accepted(self):
        status, r = completion(self.srv, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05,
                               repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5,
                               seed=7, user="someone", logit_bias={"0": -100})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["usage"]["completion_tokens"], 16)

    def test_logit_bias_changes_greedy_choice(self):
        _, g = completion(self.srv, max_tokens=1, logprobs=1)
        _, tok = self.srv.post_json("/tokenize", {"content": PROMPT + g["choices"][0]["text"],
                                                  "add_special": False})
        _, base = self.srv.post_json("/tokenize", {"content": PROMPT, "add_special": False})
        first_id = tok["tokens"][len(base["tokens"])]
        status, r = completion(self.srv, max_tokens=1, logit_bias={str(first_id): -100})
        self.assertEqual(status, 200, r)
        self.assertNotEqual(r["choices"][0]["text"], g["choices"][0]["text"])


class TestChat(SharedServer):
    MSGS = [{"role": "system", "content": "You tell stories."},
            {"role": "user", "content": "Tell me about a cat."}]

    def test_chat_not_streamed_and_streamed(self):
        body = {"messages": self.MSGS, "max_tokens": 12, "temperature": 0}
        status, r = self.srv.post_json("/v1/chat/completions", body)
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "chat.completion")
        self.assertTrue(r["id"].startswith("chatcmpl-"))
        msg = r["choices"][0]["message"]
        self.assertEqual(msg["role"], "assistant")
        self.assertIn(r["choices"][0]["finish_reason"], ("stop", "length"))
        status, hdrs, events = self.srv.stream("/v1/chat/completions", dict(body, stream=True))
        self.assertEqual(status, 200)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[0]["object"], "chat.completion.chunk")
        self.assertEqual(events[0]["choices"][0]["delta"]["role"], "assistant")
        self.assertEqual(stream_text(events, "chat"), msg["content"])
        self.assertEqual(events[-2]["choices"][0]["finish_reason"], r["choices"][0]["finish_reason"])

    def test_chat_logprobs(self):
        status, r = self.srv.post_json("/v1/chat/completions", {
            "messages": self.MSGS, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2})
        self.assertEqual(status, 200, r)
        content = r["choices"][0]["logprobs"]["content"]
        self.assertGreaterEqual(len(content), 1)
        self.assertEqual(len(content[0]["top_logprobs"]), 2)
        self.assertAlmostEqual(content[0]["top_logprobs"][0]["logprob"], content[0]["logprob"], places=6)

    def test_chat_errors(self):
        for body, param in [({}, "messages"), ({"messages": []}, "messages"),
                            ({"messages": [{"content": "x"}]}, "messages"),
                            ({"messages": "hi"}, "messages"),
                            ({"messages": self.MSGS, "top_logprobs": 2}, "top_logprobs"),
                            ({"messages": self.MSGS, "temperature": -1}, "temperature")]:
            status, r = self.srv.post_json("/v1/chat/completions", body)
            self.assertEqual(status, 400, (body, r))
            self.assertEqual(r["error"]["param"], param, body)


class TestOtherEndpoints(SharedServer):
    def test_models(self):
        status, _, data = self.srv.get("/v1/models")
        self.assertEqual(status, 200)
        r = json.loads(data)
        self.assertEqual(r["object"], "list")
        m = r["data"][0]
        self.assertEqual(m["id"], "stories260K")
        self.assertEqual(m["object"], "model")
        self.assertEqual(m["architecture"], "llama")
        self.assertIsInstance(m["context_length"], int)
        self.assertGreater(m["context_length"], 0)
        status, _, data = self.srv.get("/v1/models/stories260K")
        self.assertEqual(status, 200)
        status, _, data = self.srv.get("/v1/models/gpt-4")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(data)["error"]["code"], "model_not_found")

    def test_health(self):
        status, _, data = self.srv.get("/health")
        self.assertEqual(status, 200)
        h = json.loads(data)
        self.assertEqual(h["status"], "ok")
        self.assertRegex(h["version"], r"^\d+\.\d+\.\d+")  # the build's (test_conventions.py)

    def test_metrics(self):
        before = self.srv.metrics()
        completion(self.srv, max_tokens=3)
        m = self.srv.metrics()
        self.assertEqual(m["lmserve_completion_tokens_total"] - before.get("lmserve_completion_tokens_total", 0), 3)
        self.assertGreater(m['lmserve_requests_total{status="200"}'], before.get('lmserve_requests_total{status="200"}', 0))
        for name in ("lmserve_queue_length", "lmserve_requests_running", "lmserve_prompt_tokens_total",
                     'lmserve_time_to_first_token_seconds_bucket{le="+Inf"}',
                     "lmserve_time_per_output_token_seconds_count"):
            self.assertIn(name, m)
        status, hdrs, _ = self.srv.get("/metrics")
        self.assertTrue(hdrs["content-type"].startswith("text/plain"))

    def test_tokenize_detokenize(self):
        status, r = self.srv.post_json("/tokenize", {"content": PROMPT})
        self.assertEqual(status, 200)
        toks = r["tokens"]
        self.assertEqual(toks[0], 1)  # BOS
        status, r2 = self.srv.post_json("/tokenize", {"prompt": PROMPT, "add_special": False})
        self.assertEqual(r2["tokens"], toks[1:])
        status, d = self.srv.post_json("/detokenize", {"tokens": toks})
        self.assertEqual(status, 200)
        self.assertEqual(d["content"], PROMPT)
        status, e = self.srv.post_json("/detokenize", {"tokens": [1, 99999]})
        self.assertEqual((status, e["error"]["param"]), (400, "tokens"))
        status, e = self.srv.post_json("/tokenize", {"content": 5})
        self.assertEqual((status, e["error"]["param"]), (400, "content"))

    def test_root_page(self):
        status, hdrs, data = self.srv.get("/")
        self.assertEqual(status, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/html"))
        self.assertIn(b"<html", data.lower())


class TestErrors(SharedServer):
    CASES = [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"max_tokens": "16"}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": "yes"}, "stream"),
        ({"echo": 1}, "echo"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": [1, 2, 99999]}, "prompt"),
        ({"prompt": {"a": 1}}, "prompt"),
        ({"prompt": "x " * 5000, "context_overflow": "shift"}, "prompt"),  # slide would crop it
        ({"prompt": "x " * 5000, "context_overflow": "stop"}, "prompt"),
        ({"context_overflow": "crop"}, "context_overflow"),
        ({"context_overflow": 1}, "context_overflow"),
        ({"seed": "abc"}, "seed"),
        ({"model": 5}, "model"),
    ]

    def test_400_names_the_parameter(self):
        for patch, param in self.CASES:
            body = {"prompt": PROMPT, "max_tokens": 4}
            body.update(patch)
            if patch.get("prompt", 0) is None:
                del body["prompt"]
            status, r = self.srv.post_json("/v1/completions", body)
            self.assertEqual(status, 400, (patch, r))
            err = r["error"]
            self.assertEqual(err["param"], param, (patch, r))
            self.assertEqual(err["type"], "invalid_request_error")
            self.assertTrue(err["message"])
            self.assertIn("code", err)

    def test_invalid_json_and_non_object(self):
        for raw in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
            status, hdrs, data = self.srv.request("POST", "/v1/completions", raw,
                                                  {"Content-Type": "application/json"})
            self.assertEqual(status, 400, raw)
            self.assertEqual(hdrs["content-type"], "application/json")
            self.assertIn("error", json.loads(data))

    def test_unknown_model_404(self):
        status, r = completion(self.srv, model="gpt-4")
        self.assertEqual(status, 404)
        self.assertEqual(r["error"]["code"], "model_not_found")
        self.assertEqual(r["error"]["param"], "model")

    def test_unknown_route_404(self):
        status, _, data = self.srv.get("/v1/nothing")
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(data))

    def test_wrong_method_405(self):
        for method, path, allowed in (("GET", "/v1/completions", "POST"), ("POST", "/v1/models", "GET"),
                                      ("DELETE", "/health", "GET"), ("PUT", "/tokenize", "POST")):
            status, hdrs, data = self.srv.request(method, path)
            self.assertEqual(status, 405, (method, path))
            self.assertIn(allowed, hdrs["allow"])
            self.assertEqual(json.loads(data)["error"]["code"], "method_not_allowed")

    def test_body_too_large_413(self):
        big = json.dumps({"prompt": "a" * 70000})
        status, _, data = self.srv.request("POST", "/v1/completions", big)
        self.assertEqual(status, 413)
        self.assertIn("error", json.loads(data))
        # chunked upload (no Content-Length) over the limit
        c = self.srv.conn()
        c.putrequest("POST", "/v1/completions")
        c.putheader("Transfer-Encoding", "chunked")
        c.putheader("Content-Type", "application/json")
        c.endheaders()
        for _ in range(10):
            piece = b"a" * 10000
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
        r = c.getresponse()
        self.assertEqual(r.status, 413)
        r.read()
        c.close()


class TestAuthCors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        cls.srv = Server(["--api-key", "sekrit", "--cors-origin", "https://example.com"])

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0

    def test_401_without_or_with_wrong_key(self):
        for hdrs in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "sekrit"}):
            for method, path, body in (("POST", "/v1/completions", {"prompt": "x"}), ("GET", "/v1/models", None),
                                       ("GET", "/metrics", None), ("POST", "/tokenize", {"content": "x"})):
                status, h, data = self.srv.request(method, path, body, hdrs)
                self.assertEqual(status, 401, (hdrs, path))
                self.assertEqual(json.loads(data)["error"]["code"], "invalid_api_key")

    def test_health_and_playground_need_no_key(self):
        status, _, _ = self.srv.get("/health")
        self.assertEqual(status, 200)
        status, _, _ = self.srv.get("/")
        self.assertEqual(status, 200)

    def test_with_key(self):
        status, r = self.srv.post_json("/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "temperature": 0},
                                       {"Authorization": "Bearer sekrit"})
        self.assertEqual(status, 200, r)
        status, h, _ = self.srv.request("GET", "/v1/models", headers={"Authorization": "Bearer sekrit"})
        self.assertEqual(status, 200)
        self.assertEqual(h["access-control-allow-origin"], "https://example.com")

    def test_cors_preflight(self):
        status, h, _ = self.srv.request("OPTIONS", "/v1/completions", headers={
            "Origin": "https://example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(status, 204)
        self.assertEqual(h["access-control-allow-origin"], "https://example.com")
        self.assertIn("POST", h["access-control-allow-methods"])
        self.assertIn("Authorization", h["access-control-allow-headers"])


def run_threads(fns):
    results = [None] * len(fns)
    errors = []

    def wrap(i, f):
        try:
            results[i] = f()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=wrap, args=(i, f)) for i, f in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    if errors:
        raise errors[0]
    return results


class TestConcurrency(SharedServer):
    def seeded(self, stream=False):
        # a prompt longer than one prefill chunk (64 tokens): chunked the same way alone or not
        body = {"prompt": "The little dog ran to the big park and played. " * 8, "max_tokens": 48,
                "temperature": 0.8, "top_k": 40,
                "seed": 424242, "logprobs": 2}
        if stream:
            _, _, ev = self.srv.stream("/v1/completions", dict(body, stream=True))
            toks, lps = [], []
            for e in ev:
                if e != "[DONE]" and e["choices"] and e["choices"][0]["logprobs"]:
                    toks += e["choices"][0]["logprobs"]["tokens"]
                    lps += e["choices"][0]["logprobs"]["token_logprobs"]
            return toks, lps
        status, r = self.srv.post_json("/v1/completions", body)
        self.assertEqual(status, 200, r)
        lp = r["choices"][0]["logprobs"]
        return lp["tokens"], lp["token_logprobs"]

    def other(self, i):
        def f():
            _, _, ev = self.srv.stream("/v1/completions", {
                "prompt": "Story %d: the %s" % (i, "big " * (i * 7)), "max_tokens": 60 + 5 * i,
                "temperature": 1.0, "seed": i, "stream": True})
            return ev[-1]
        return f

    def test_seeded_identical_alone_and_among_15_others(self):
        alone = self.seeded()
        self.assertEqual(len(alone[0]), 48)
        fns = [self.other(i) for i in range(15)] + [lambda: self.seeded(), lambda: self.seeded(stream=True)]
        res = run_threads(fns)
        for r in res[:15]:
            self.assertEqual(r, "[DONE]")
        # tokens AND logprobs bit-identical (JSON round-trips floats exactly)
        self.assertEqual(res[15], alone)
        self.assertEqual(res[16], alone)

    def test_seeded_reproducible_with_8_concurrent(self):
        alone = self.seeded()
        res = run_threads([self.other(i) for i in range(8)] + [lambda: self.seeded()])
        self.assertEqual(res[-1], alone)

    def test_32_concurrent_streams_complete(self):
        def one(i):
            def f():
                status, _, ev = self.srv.stream("/v1/completions", {
                    "prompt": PROMPT, "max_tokens": 32, "temperature": 0.7, "seed": i, "stream": True,
                    "stream_options": {"include_usage": True}})
                return status, ev
            return f
        res = run_threads([one(i) for i in range(32)])
        for status, ev in res:
            self.assertEqual(status, 200)
            self.assertEqual(ev[-1], "[DONE]")
            self.assertEqual(ev[-2]["usage"]["completion_tokens"], 32)
            self.assertEqual(ev[-3]["choices"][0]["finish_reason"], "length")
            self.assertLessEqual(len(ev), 32 + 3)


def open_stream(srv, body):
    """Raw socket streaming request; returns the socket after the response headers."""
    s = socket.create_connection((srv.host, srv.port), timeout=30 * slow)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return s


def wait_metric(srv, name, value, timeout=10):
    deadline = time.time() + timeout * slow
    while time.time() < deadline:
        if srv.metrics().get(name) == value:
            return True
        time.sleep(0.02)
    return False


class TestFaults(unittest.TestCase):
    def setUp(self):
        require_model()

    def test_generation_past_the_context_window(self):
        # --ctx 64: the cache is cropped to its last 32 tokens and recomputed; the
        # tokens before the first crop are those of an uncropped run
        body = {"prompt": PROMPT, "max_tokens": 150, "temperature": 0, "logprobs": 0}
        with Server(["--ctx", "64"]) as small, Server([]) as big:
            s1, a = small.post_json("/v1/completions", body)
            s2, b = big.post_json("/v1/completions", body)
        self.assertEqual((s1, s2), (200, 200), (a, b))
        # greedy stories260K.gguf does not end its text within 150 tokens of this prompt
        for r in (a, b):
            self.assertEqual((r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]), ("length", 150))
        ta, tb = a["choices"][0]["logprobs"]["tokens"], b["choices"][0]["logprobs"]["tokens"]
        n_prompt = a["usage"]["prompt_tokens"]
        before_crop = 64 - n_prompt
        self.assertEqual(ta[:before_crop], tb[:before_crop])

    def test_disconnect_mid_stream_frees_slot(self):
        with Server(["--parallel", "1", "--ctx", "64", "--max-tokens-limit", "100000"]) as srv:
            s = open_stream(srv, {"prompt": PROMPT, "max_tokens": 90000, "stream": True, "seed": 1})
            got = b""
            while got.count(b"data: ") < 3:
                got += s.recv(4096)
            self.assertEqual(srv.metrics()["lmserve_requests_running"], 1)
            s.close()
            self.assertTrue(wait_metric(srv, "lmserve_requests_running", 0), srv.stderr)
            m = srv.wait_for_log(r"POST /v1/completions 499 prompt=\d+ reused=\d+ completion=(\d+)")
            self.assertIsNotNone(m, srv.stderr)
            self.assertLess(int(m.group(1)), 90000)
            # the slot serves the next request at once
            status, r = completion(srv, max_tokens=4)
            self.assertEqual(status, 200, r)

    def test_disconnect_while_queued_and_while_waiting(self):
        with Server(["--parallel", "1", "--queue", "4", "--ctx", "64", "--max-tokens-limit", "100000"]) as srv:
            a = open_stream(srv, {"prompt": PROMPT, "max_tokens": 90000, "stream": True})
            a.recv(100)
            b = open_stream(srv, {"prompt": PROMPT, "max_tokens": 10})  # queued, not streamed
            self.assertTrue(wait_metric(srv, "lmserve_queue_length", 1))
            b.close()
            self.assertTrue(wait_metric(srv, "lmserve_queue_length", 0), srv.stderr)
            a.close()
            self.assertTrue(wait_metric(srv, "lmserve_requests_running", 0), srv.stderr)
            # a non-streamed request whose client leaves while it runs
            c = open_stream(srv, {"prompt": PROMPT, "max_tokens": 90000})
            self.assertTrue(wait_metric(srv, "lmserve_requests_running", 1))
            c.close()
            self.assertTrue(wait_metric(srv, "lmserve_requests_running", 0), srv.stderr)

    def test_queue_overflow_503(self):
        with Server(["--parallel", "1", "--queue", "1", "--ctx", "64", "--max-tokens-limit", "100000"]) as srv:
            a = open_stream(srv, {"prompt": PROMPT, "max_tokens": 90000, "stream": True})
            a.recv(100)
            b = open_stream(srv, {"prompt": PROMPT, "max_tokens": 90000, "stream": True})
            self.assertTrue(wait_metric(srv, "lmserve_queue_length", 1))
            t0 = time.time()
            status, h, data = srv.request("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
            self.assertLess(time.time() - t0, 2 * slow)
            self.assertEqual(status, 503)
            self.assertIn("retry-after", h)
            self.assertEqual(json.loads(data)["error"]["code"], "queue_full")
            a.close()
            b.close()
            self.assertTrue(wait_metric(srv, "lmserve_requests_running", 0))
            m = srv.metrics()
            self.assertEqual(m['lmserve_requests_total{status="503"}'], 1)

    def test_sigterm_with_streams_in_flight(self):
        srv = Server(["--parallel", "4"])
        try:
            conns = []
            for i in range(4):
                c = srv.conn()
                c.request("POST", "/v1/completions", json.dumps(
                    {"prompt": PROMPT, "max_tokens": 200, "temperature": 0.8, "seed": i, "stream": True}),
                    {"Content-Type": "application/json"})
                conns.append(c)
            resps = [c.getresponse() for c in conns]
            firsts = [r.read1(100) for r in resps]
            self.assertTrue(all(firsts))
            srv.send_signal(signal.SIGTERM)
            for r in resps:
                events = list(iter_sse(r))
                self.assertEqual(events[-1], "[DONE]")
            for c in conns:
                c.close()
            rc = srv.wait(30)
            self.assertEqual(rc, 0, srv.stderr)
            self.assertIn("shutting down", srv.stderr)
        finally:
            srv.stop()

    def test_sigterm_deadline_ends_long_streams(self):
        srv = Server(["--parallel", "2", "--ctx", "64", "--max-tokens-limit", "100000",
                      "--shutdown-timeout", "1"])
        try:
            c = srv.conn()
            c.request("POST", "/v1/completions", json.dumps(
                {"prompt": PROMPT, "max_tokens": 90000, "stream": True}), {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read1(100)
            t0 = time.time()
            srv.send_signal(signal.SIGTERM)
            events = list(iter_sse(r))
            c.close()
            self.assertEqual(events[-1], "[DONE]")
            self.assertEqual(events[-2]["error"]["code"], "shutting_down")
            self.assertEqual(srv.wait(30), 0, srv.stderr)
            self.assertLess(time.time() - t0, 10 * slow)
        finally:
            srv.stop()


class TestLimits(unittest.TestCase):
    def test_per_ip_connection_limit_and_idle_timeout(self):
        require_model()
        with Server(["--timeout", "1", "--max-connections-per-ip", "2"]) as srv:
            idle = []
            for _ in range(2):
                c = socket.create_connection((srv.host, srv.port), timeout=10 * slow)
                c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
                idle.append(c)
            time.sleep(0.2)
            third = socket.create_connection((srv.host, srv.port), timeout=10 * slow)
            try:
                third.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                self.assertEqual(third.recv(100), b"")  # closed: over the per-IP limit
            except ConnectionResetError:
                pass
            third.close()
            t0 = time.time()
            try:
                self.assertEqual(idle[0].recv(100), b"")  # the slow client is timed out
            except ConnectionResetError:
                pass
            self.assertLess(time.time() - t0, 5 * slow)
            for c in idle:
                c.close()
            # once the server has seen the closes, the address may connect again
            deadline = time.time() + 5 * slow
            while True:
                try:
                    status, _, _ = srv.get("/health")
                    break
                except (ConnectionError, http.client.HTTPException):
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
            self.assertEqual(status, 200)


class TestCli(unittest.TestCase):
    OPTIONS = ["--model", "--tokenizer", "--model-id", "--host", "--port", "--threads", "--parallel",
               "--queue", "--ctx", "--api-key", "--cors-origin", "--max-tokens-limit", "--body-limit",
               "--timeout", "--max-connections", "--max-connections-per-ip", "--shutdown-timeout"]

    def run_cli(self, *args, env=None):
        import subprocess
        from lmserve_testlib import binary
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([binary()] + list(args), capture_output=True, text=True, timeout=30 * slow, env=e)

    def test_help_lists_every_option_with_default(self):
        for args in (["--help"], ["serve", "--help"]):
            r = self.run_cli(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            for opt in self.OPTIONS:
                self.assertIn(opt, r.stdout, (args, opt))
            self.assertIn("(default: 8080)", r.stdout)
            self.assertIn("(default: 127.0.0.1)", r.stdout)

    def test_bad_arguments(self):
        r = self.run_cli("serve", "--port", "http")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--port", r.stderr)
        r = self.run_cli("serve", "--frobnicate", "1")
        self.assertEqual(r.returncode, 2)
        r = self.run_cli("serve", "--model", "/nonexistent/model.gguf")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/model.gguf", r.stderr)
        r = self.run_cli("serve", env={"LMSERVE_DEFAULT_MODEL": "/nonexistent/default.gguf"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/default.gguf", r.stderr)
        r = self.run_cli("serve", "--kv-type", "f8")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--kv-type", r.stderr)

    def test_f16_kv_cache(self):
        # --kv-type f16: the same greedy text on stories260K (its logits move by ~1e-4 of their
        # scale, not enough to change these tokens), and seeds still reproduce exactly.
        require_model()
        with Server(["--kv-type", "f16", "--parallel", "4"]) as srv:
            st, body = srv.post_json("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 16,
                                                         "temperature": 0})
            self.assertEqual(st, 200)
            self.assertEqual(body["choices"][0]["text"],
                             ", there was a little girl named Lily. She loved to play")
            req = {"prompt": "Once upon a time", "max_tokens": 24, "seed": 9, "logprobs": 1}
            st1, a = srv.post_json("/v1/completions", req)
            st2, b = srv.post_json("/v1/completions", req)
            self.assertEqual((st1, st2), (200, 200))
            self.assertEqual(a["choices"][0]["text"], b["choices"][0]["text"])
            self.assertEqual(a["choices"][0]["logprobs"]["token_logprobs"],
                             b["choices"][0]["logprobs"]["token_logprobs"])

    def test_model_id_and_request_log(self):
        require_model()
        with Server(["--model-id", "tiny-stories"]) as srv:
            status, _, data = srv.get("/v1/models")
            self.assertEqual(json.loads(data)["data"][0]["id"], "tiny-stories")
            status, r = srv.post_json("/v1/completions", {"prompt": "x", "model": "stories260K"})
            self.assertEqual(status, 404)
            status, r = srv.post_json("/v1/completions", {"prompt": "x", "top_k": -3, "model": "tiny-stories"})
            self.assertEqual(status, 400)
            srv.post_json("/tokenize", {"content": "hello"})
            self.assertIsNotNone(srv.wait_for_log(
                r"lmserve: POST /v1/completions 400 prompt=0 reused=0 completion=0 ttft=- total=[\d.]+ms$"), srv.stderr)
            self.assertIsNotNone(srv.wait_for_log(r"lmserve: POST /tokenize 200 "), srv.stderr)
            # a request with a first token logs its timeline (scripts/serve-load.sh reads it)
            st, _, events = srv.stream("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 3,
                                                           "stream": True, "model": "tiny-stories"})
            self.assertEqual(st, 200)
            m = srv.wait_for_log(r"lmserve: POST /v1/completions 200 prompt=5 reused=0 completion=3 ttft=([\d.]+)ms "
                                 r"total=[\d.]+ms in=([\d.]+)ms queue=([\d.]+)ms wait=([\d.]+)ms "
                                 r"fwd=([\d.]+)ms out=([\d.]+)ms steps=(\d+)$")
            self.assertIsNotNone(m, srv.stderr)
            ttft, queue, wait, fwd = (float(m.group(i)) for i in (1, 3, 4, 5))
            # the parts from queued to first token add up to the time to first token
            self.assertAlmostEqual(queue + wait + fwd, ttft, delta=0.3)
            self.assertGreaterEqual(int(m.group(7)), 1)  # an idle server: its first step
            self.assertLessEqual(int(m.group(7)), 2)


if __name__ == "__main__":
    unittest.main()
