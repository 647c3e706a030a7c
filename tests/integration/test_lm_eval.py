"""lm-evaluation-harness's `local-completions` against the real server: the requests it sends,
replayed exactly, and what it reads from the answers.

Read from lm-eval's source (lm_eval/models/openai_completions.py, api_models.py and utils.py's
RemoteTokenizer, 2026-08): with a base_url it first checks for a "remote" tokenizer --
GET /tokenizer_info must answer a JSON object holding "eos_token", and POST /tokenize
{"prompt": "test", "add_special_tokens": false} a "tokens" list; it then encodes every text with
that /tokenize request, finds the EOS and BOS ids by tokenizing their spellings, decodes with
POST /detokenize {"tokens"} reading "prompt".  Log-likelihood requests are
{"model", "prompt": [[token ids]], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
"echo": true}, parsed as sum(token_logprobs[ctxlen:-1]) and "greedy" when each of those equals
the largest value of its top_logprobs entry; older versions sent max_tokens 0.  Generation is
{"prompt", "model", "max_tokens", "temperature": 0, "stop": until + [eos_token], "seed"} and the
answer's choices[i]["text"]."""
import json
import unittest

from lmserve_testlib import Server

SEED = 1234


class LmEvalLocalCompletions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()  # stories260K: SentencePiece vocabulary, BOS 1, EOS 2
        st, _, data = cls.srv.get("/v1/models")
        cls.model = json.loads(data)["data"][0]["id"]

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    # -- the remote tokenizer, as lm-eval's RemoteTokenizer uses it --------------------------
    def encode(self, text):
        st, r = self.srv.post_json("/tokenize", {"prompt": text, "add_special_tokens": False})
        self.assertEqual(st, 200, r)
        self.assertIsInstance(r["tokens"], list)
        return r["tokens"]

    def decode(self, tokens):
        st, r = self.srv.post_json("/detokenize", {"tokens": tokens})
        self.assertEqual(st, 200, r)
        self.assertIsInstance(r["prompt"], str)
        return r["prompt"]

    def test_remote_tokenizer_detection_and_special_ids(self):
        st, _, data = self.srv.get("/tokenizer_info")
        self.assertEqual(st, 200)
        info = json.loads(data)
        self.assertIsInstance(info, dict)
        self.assertIn("eos_token", info)
        self.assertEqual(info["eos_token"], "</s>")
        self.assertEqual(info["bos_token"], "<s>")
        self.assertIn("pad_token", info)
        self.assertIsNone(info["pad_token"])
        self.assertIsInstance(info["tokenizer_class"], str)
        st, _, models = self.srv.get("/v1/models")
        self.assertEqual(info["model_max_length"], json.loads(models)["data"][0]["context_length"])
        self.assertIsNone(info["chat_template"])
        self.assertIsInstance(self.encode("test"), list)
        # eos_token_id / bos_token_id are encode(spelling)[0]
        self.assertEqual(self.encode(info["eos_token"])[0], 2)
        self.assertEqual(self.encode(info["bos_token"])[0], 1)
        self.assertEqual((info["eos_token_id"], info["bos_token_id"]), (2, 1))

    def test_encode_matches_the_servers_own_tokenization_and_decodes_back(self):
        text = "Once upon a time, there was a little girl."
        ids = self.encode(text)
        st, r = self.srv.post_json("/tokenize", {"content": text, "add_special": False})
        self.assertEqual(ids, r["tokens"])
        self.assertNotEqual(ids[0], 1, "add_special_tokens false: no BOS")
        st, r = self.srv.post_json("/tokenize", {"prompt": text})
        self.assertEqual(r["tokens"], [1] + ids, "vLLM's default adds the special tokens")
        self.assertEqual(self.decode(ids), text)
        st, r = self.srv.post_json("/detokenize", {"tokens": ids})
        # llama.cpp's field keeps the SentencePiece space of a first piece not after BOS (the
        # texts of consecutive id lists concatenate); vLLM's "prompt" decodes as Hugging Face does
        self.assertEqual(r["content"], " " + text)
        self.assertEqual(self.decode([1] + ids), text)

    # -- loglikelihood -----------------------------------------------------------------------
    def encode_pair(self, context, continuation):
        """lm-eval's TemplateLM._encode_pair for a causal model: trailing spaces of the context go
        to the continuation, the whole text is encoded and split after the context's tokens."""
        n = len(context) - len(context.rstrip())
        if n:
            continuation, context = context[-n:] + continuation, context[:-n]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood_request(self, prompts, max_tokens=1):
        body = {"model": self.model, "prompt": prompts, "temperature": 0, "max_tokens": max_tokens,
                "logprobs": 1, "seed": SEED, "echo": True}
        st, r = self.srv.post_json("/v1/completions", body)
        self.assertEqual(st, 200, r)
        return r

    @staticmethod
    def parse(choice, ctxlen, drop_last=True):
        """lm-eval's reading of one choice: (sum of continuation logprobs, greedy?)."""
        lp = choice["logprobs"]
        end = -1 if drop_last else None
        conts = lp["token_logprobs"][ctxlen:end]
        tops = lp["top_logprobs"][ctxlen:end]
        greedy = all(t == max(top.values()) for t, top in zip(conts, tops))
        return sum(conts), greedy, len(conts)

    def test_loglikelihood_of_token_prompts(self):
        context = "Once upon a time, there was"
        ctx = self.encode(context)
        # the model's own greedy continuation of exactly these tokens (no BOS: lm-eval's remote
        # tokenizer adds none)
        st, g = self.srv.post_json("/v1/completions", {"model": self.model, "prompt": ctx, "max_tokens": 4,
                                                       "temperature": 0, "seed": SEED, "logprobs": 1})
        self.assertEqual(st, 200, g)
        greedy_text = g["choices"][0]["text"]
        ctx1, cont_greedy = self.encode_pair(context, greedy_text)
        ctx2, cont_other = self.encode_pair(context, " a big red dog")
        self.assertEqual(ctx1, ctx)
        pieces = [self.srv.post_json("/detokenize", {"tokens": [t]})[1]["content"] for t in cont_greedy]
        self.assertEqual(pieces, g["choices"][0]["logprobs"]["tokens"], "the continuation re-tokenizes as generated")
        reqs = [ctx1 + cont_greedy, ctx2 + cont_other]
        resp = self.loglikelihood_request(reqs)  # one batched request, as lm-eval sends batch_size > 1
        choices = sorted(resp["choices"], key=lambda c: c["index"])
        self.assertEqual([c["index"] for c in choices], [0, 1])
        for c, toks in zip(choices, reqs):
            lp = c["logprobs"]
            # echo: every prompt token (the first has nothing before it), then the generated one
            self.assertEqual(len(lp["token_logprobs"]), len(toks) + 1)
            self.assertIsNone(lp["token_logprobs"][0])
            self.assertIsNone(lp["top_logprobs"][0])
            for top in lp["top_logprobs"][1:]:
                self.assertEqual(len(top), 1)
        ll_greedy, is_greedy, n1 = self.parse(choices[0], len(ctx))
        ll_other, is_greedy_other, n2 = self.parse(choices[1], len(ctx))
        self.assertEqual((n1, n2), (len(cont_greedy), len(cont_other)))
        self.assertTrue(is_greedy, "the model's own greedy continuation is greedy")
        self.assertFalse(is_greedy_other)
        self.assertGreater(ll_greedy, ll_other)
        # the number is the continuation's log-probability: the generation's own logprobs
        self.assertAlmostEqual(ll_greedy, sum(g["choices"][0]["logprobs"]["token_logprobs"]), places=4)

    def test_a_continuation_the_model_ends_is_still_scored_whole(self):
        # when the one generated token is the model's EOS it is listed too (no text), so
        # lm-eval's [ctxlen:-1] drops it and not the continuation's last token
        ctx, cont = self.encode_pair("Once upon a time", ", there was")
        plain = self.loglikelihood_request([ctx + cont])["choices"][0]
        body = {"model": self.model, "prompt": [ctx + cont], "temperature": 0, "max_tokens": 1, "logprobs": 1,
                "seed": SEED, "echo": True, "logit_bias": {"2": 100}}
        st, r = self.srv.post_json("/v1/completions", body)
        self.assertEqual(st, 200, r)
        ended = r["choices"][0]
        self.assertEqual(ended["finish_reason"], "stop")
        self.assertEqual(len(ended["logprobs"]["token_logprobs"]), len(ctx) + len(cont) + 1)
        self.assertEqual(ended["logprobs"]["tokens"][-1], "</s>")
        self.assertEqual(ended["text"], plain["text"][:len(ended["text"])])
        self.assertAlmostEqual(self.parse(ended, len(ctx))[0], self.parse(plain, len(ctx))[0], places=5)

    def test_max_tokens_0_and_string_prompts(self):
        context = "Once upon a time, there was"
        ctx, cont = self.encode_pair(context, " a girl")
        ids = ctx + cont
        # the older harness: max_tokens 0, nothing generated, nothing to drop
        c0 = self.loglikelihood_request([ids], max_tokens=0)["choices"][0]
        self.assertEqual(len(c0["logprobs"]["token_logprobs"]), len(ids))
        self.assertEqual(c0["text"], " Once upon a time, there was a girl")  # echoed as llama.cpp does
        c1 = self.loglikelihood_request([ids], max_tokens=1)["choices"][0]
        self.assertAlmostEqual(self.parse(c0, len(ctx), drop_last=False)[0], self.parse(c1, len(ctx))[0], places=5)
        # tokenized_requests=False: the text itself.  The server puts the model's BOS in front
        # and does not echo it, so the scores line up with the client's own tokens (each token
        # scored, the first one after BOS)
        cs = self.loglikelihood_request(context + " a girl")["choices"][0]
        lp = cs["logprobs"]["token_logprobs"]
        self.assertEqual(len(lp), len(ids) + 1)
        self.assertIsNotNone(lp[0])
        ll, _, n = self.parse(cs, len(ctx))
        self.assertEqual(n, len(cont))
        self.assertLess(ll, 0)

    # -- generate_until --------------------------------------------------------------------
    def test_generate_until_with_stop_sequences(self):
        st, _, data = self.srv.get("/tokenizer_info")
        eos = json.loads(data)["eos_token"]
        prompt = [1] + self.encode("Once upon a time")
        body = {"prompt": [prompt], "model": self.model, "max_tokens": 64, "temperature": 0,
                "stop": [".", eos], "seed": SEED}
        st, r = self.srv.post_json("/v1/completions", body)
        self.assertEqual(st, 200, r)
        text = r["choices"][0]["text"]
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        self.assertNotIn(".", text)
        self.assertEqual(text, ", there was a little girl named Lily")  # stories260K's greedy text, cut at "."
        # a string prompt gives the same text
        body["prompt"] = "Once upon a time"
        st, r2 = self.srv.post_json("/v1/completions", body)
        self.assertEqual(r2["choices"][0]["text"], text)


if __name__ == "__main__":
    unittest.main()
