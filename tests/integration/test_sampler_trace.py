"""The `sampler_trace` request field (issue 23) over real HTTP, against stories260K.gguf:
tracing never changes the text, each step's trace agrees with the other outputs of the
same request (logprobs, the text, usage), streamed chunks carry the trace of their own
token, and bad values are 400 naming the parameter."""
import math
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, model_path, stream_text  # noqa: E402

PROMPT = "Once upon a time"
GREEDY16 = ", there was a little girl named Lily. She loved to play"
STAGES = ["logits", "constraint", "logit_bias", "repetition_penalty", "presence_frequency", "temperature",
          "top_k", "top_p", "min_p", "softmax"]
EOS = 2  # stories260K's </s>

# Every stage on: bias, both penalties, temperature, the three filters.
ALL_STAGES = {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "min_p": 0.02,
              "repetition_penalty": 1.2, "penalty_last_n": 32, "presence_penalty": 0.3,
              "frequency_penalty": 0.2, "logit_bias": {"261": 1.5, "383": -100}}


class TestSamplerTrace(unittest.TestCase):
    srv = None

    @classmethod
    def setUpClass(cls):
        assert os.path.exists(model_path()), "no model at %s (set LMSERVE_MODELS)" % model_path()
        cls.srv = Server(["--parallel", "4", "--max-choices", "4"])

    @classmethod
    def tearDownClass(cls):
        if cls.srv:
            rc = cls.srv.stop()
            assert rc == 0, "server exit code %s\n%s" % (rc, cls.srv.stderr)

    def complete(self, **kw):
        body = {"prompt": PROMPT, "max_tokens": 16}
        body.update(kw)
        status, r = self.srv.post_json("/v1/completions", body)
        self.assertEqual(status, 200, r)
        return r

    def check_step(self, st, n):
        """The shape's invariants, and the chosen token's path through the stages."""
        cands = st["candidates"]
        ids = [c["id"] for c in cands]
        self.assertEqual(len(set(ids)), len(ids), "each candidate once")
        self.assertLessEqual(len(cands), n * len(STAGES) + 1)
        self.assertEqual([s["name"] for s in st["stages"]], STAGES)
        self.assertIn(st["draw"]["token"], ids)
        ci = ids.index(st["draw"]["token"])
        for s in st["stages"]:
            if s["skipped"]:
                self.assertNotIn("values", s)
                continue
            self.assertEqual(len(s["values"]), len(cands), s["name"])
            v = s["values"][ci]
            self.assertIsNotNone(v, "the chosen token survives %s" % s["name"])
            if s["name"] == "softmax":
                self.assertGreater(v, 0)
        self.assertEqual(len(st["draw"]["cdf_before"]), len(cands))
        return ids, ci

    def test_greedy_traced_is_the_untraced_text(self):
        plain = self.complete(temperature=0)
        traced = self.complete(temperature=0, sampler_trace=5)
        self.assertEqual(plain["choices"][0]["text"], GREEDY16)
        self.assertEqual(traced["choices"][0]["text"], GREEDY16)
        steps = traced["choices"][0]["sampler_trace"]
        self.assertEqual(len(steps), traced["usage"]["completion_tokens"])
        for st in steps:
            ids, ci = self.check_step(st, 5)
            self.assertEqual(st["draw"]["method"], "argmax")
            self.assertIsNone(st["draw"]["coin"])
            self.assertIsNone(st["draw"]["probability"])
            self.assertEqual(ci, 0, "no penalty: greedy takes the raw top token")
            ran = [s["name"] for s in st["stages"] if not s["skipped"]]
            self.assertEqual(ran, ["logits"], "greedy: nothing after the logits ran")
        self.assertIsNone(plain["choices"][0].get("sampler_trace"), "off by default")

    def test_seeded_traced_is_the_untraced_text_with_every_stage(self):
        common = dict(ALL_STAGES, seed=42, n=2, max_tokens=40, logprobs=3)
        plain = self.complete(**common)
        traced = self.complete(sampler_trace=8, **common)
        for a, b in zip(plain["choices"], traced["choices"]):
            self.assertEqual(a["text"], b["text"])
            self.assertEqual(a["logprobs"], b["logprobs"])
            steps = b["sampler_trace"]
            self.assertEqual(len(steps), len(b["logprobs"]["tokens"]))
            chosen = []
            for st, tok, lp, top in zip(steps, b["logprobs"]["tokens"], b["logprobs"]["token_logprobs"],
                                        b["logprobs"]["top_logprobs"]):
                ids, ci = self.check_step(st, 8)
                # every stage but the constraint (the request has none)
                self.assertEqual([s["skipped"] for s in st["stages"]], [n == "constraint" for n in STAGES])
                self.assertEqual(st["draw"]["method"], "sample")
                self.assertEqual(st["candidates"][ci]["token"], tok)
                self.assertNotEqual(st["draw"]["token"], 383, "logit_bias -100 forbids ' there'")
                chosen.append(st["draw"]["token"])
                d = st["draw"]
                self.assertLessEqual(d["cdf_before"][ci], d["coin"])
                self.assertLess(d["coin"], d["cdf_before"][ci] + d["probability"] + 1e-12)
                stage = {s["name"]: s for s in st["stages"]}
                # The raw logits differ as the model's logprobs do.
                raw = stage["logits"]["values"]
                for c, cand in enumerate(st["candidates"]):
                    if cand["token"] in top and cand["token"] != tok:
                        self.assertAlmostEqual(raw[ci] - raw[c], lp - top[cand["token"]], delta=2e-4)
                # logit_bias adds exactly its value; temperature divides the previous stage.
                for c, cand in enumerate(st["candidates"]):
                    if cand["id"] == 261:
                        self.assertAlmostEqual(stage["logit_bias"]["values"][c], raw[c] + 1.5, places=4)
                    pf = stage["presence_frequency"]["values"][c]
                    if pf is not None:
                        self.assertAlmostEqual(stage["temperature"]["values"][c], pf / 0.9,
                                               delta=1e-5 * max(1, abs(pf)))
                self.assertLessEqual(stage["top_k"]["survivors"], 40 + 8, "ties only")
                self.assertLessEqual(stage["top_p"]["survivors"], stage["top_k"]["survivors"])
                self.assertLessEqual(stage["min_p"]["survivors"], stage["top_p"]["survivors"])
                self.assertEqual(stage["softmax"]["survivors"], stage["min_p"]["survivors"])
            # The drawn ids are the text.
            status, d = self.srv.post_json("/detokenize", {"tokens": chosen})
            self.assertEqual(status, 200, d)
            self.assertTrue(b["text"] and d["content"].endswith(b["text"]), (d["content"], b["text"]))

    def test_streamed_chunks_carry_the_trace_of_their_token(self):
        body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 1.2, "top_k": 20, "seed": 7,
                "stream": True, "logprobs": 1, "sampler_trace": 3,
                "stream_options": {"include_usage": True}}
        status, _, events = self.srv.stream("/v1/completions", body)
        self.assertEqual(status, 200, events)
        n_steps, usage = 0, None
        for ev in events:
            if ev == "[DONE]":
                continue
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev["choices"]:
                steps = ch.get("sampler_trace") or []
                toks = (ch.get("logprobs") or {}).get("tokens") or []
                self.assertEqual(len(steps), len(toks), ch)
                for st, tok in zip(steps, toks):
                    ids, ci = self.check_step(st, 3)
                    self.assertEqual(st["candidates"][ci]["token"], tok)
                n_steps += len(steps)
        self.assertEqual(n_steps, usage["completion_tokens"])
        plain = self.complete(**{k: v for k, v in body.items()
                                 if k not in ("stream", "stream_options", "sampler_trace")})
        self.assertEqual(stream_text(events), plain["choices"][0]["text"])

    def test_the_end_of_text_token_has_its_step(self):
        """EOS forced by logit_bias: no text, but its step is traced (in the chunk with
        finish_reason when streamed) and scored in logprobs, as vLLM scores it (lm-eval's echo
        parse drops the last entry as the generated token)."""
        r = self.complete(temperature=0.7, seed=3, logit_bias={str(EOS): 100}, sampler_trace=4, logprobs=1)
        ch = r["choices"][0]
        self.assertEqual((ch["text"], ch["finish_reason"]), ("", "stop"))
        self.assertEqual(ch["logprobs"]["tokens"], ["</s>"])
        self.assertEqual(len(ch["sampler_trace"]), 1)
        st = ch["sampler_trace"][0]
        self.assertEqual(st["draw"]["token"], EOS)
        ids, ci = self.check_step(st, 4)
        stage = {s["name"]: s for s in st["stages"]}
        self.assertIn(EOS, ids[:4] + [ids[ci]])
        self.assertAlmostEqual(stage["logit_bias"]["values"][ci] - stage["logits"]["values"][ci], 100, places=3)
        status, _, events = self.srv.stream("/v1/completions", {
            "prompt": PROMPT, "max_tokens": 8, "temperature": 0.7, "seed": 3, "stream": True,
            "logit_bias": {str(EOS): 100}, "sampler_trace": 4})
        self.assertEqual(status, 200, events)
        final = [c for ev in events if ev != "[DONE]" for c in ev["choices"] if c["finish_reason"]]
        self.assertEqual(len(final), 1)
        self.assertEqual(final[0]["sampler_trace"], ch["sampler_trace"])

    def test_chat_streamed_and_not(self):
        msgs = [{"role": "user", "content": "Tell me a story."}]
        body = {"messages": msgs, "max_tokens": 8, "temperature": 0.8, "seed": 11, "sampler_trace": 2}
        status, r = self.srv.post_json("/v1/chat/completions", body)
        self.assertEqual(status, 200, r)
        steps = r["choices"][0]["sampler_trace"]
        self.assertEqual(len(steps), r["usage"]["completion_tokens"])
        for st in steps:
            self.check_step(st, 2)
        status, _, events = self.srv.stream("/v1/chat/completions", dict(body, stream=True))
        self.assertEqual(status, 200, events)
        streamed = [st for ev in events if ev != "[DONE]" for c in ev["choices"]
                    for st in c.get("sampler_trace") or []]
        self.assertEqual(streamed, steps)
        self.assertEqual(stream_text(events, "chat"), r["choices"][0]["message"]["content"])

    def test_bad_values_are_400_naming_the_parameter(self):
        for v in (-1, 21, 1000, "5", 2.5, True, [3], {"n": 3}):
            for path, body in (("/v1/completions", {"prompt": PROMPT}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
                status, r = self.srv.post_json(path, dict(body, sampler_trace=v))
                self.assertEqual(status, 400, (path, v, r))
                self.assertEqual(r["error"]["param"], "sampler_trace", (path, v, r))
        # 0 and null are "off"; the server still serves.
        for v in (0, None):
            r = self.complete(temperature=0, sampler_trace=v)
            self.assertEqual(r["choices"][0]["text"], GREEDY16)
            self.assertNotIn("sampler_trace", r["choices"][0])


if __name__ == "__main__":
    unittest.main()
