"""Chat templates in the server: a model that carries a ChatML template (a tiny llama GGUF with
SmolLM's real vocabulary, written by chat_model.py) is chatted with through its template, and
generation stops at <|im_end|> -- the template's end of turn, not the model's EOS (which is
<|endoftext|> here).  --chat-template overrides (a built-in name, a file, "none"); a template that
is not understood is a start-up warning, shows in /v1/models and makes chat requests 501, never a
silent other rendering; a template's own refusal (raise_exception) is a 400 with its message."""
import json
import os
import tempfile
import unittest

from chat_model import write_chat_model
from lmserve_testlib import REPO, Server

TEMPLATES = os.path.join(REPO, "tests", "data", "chat_templates")
IM_END = 2  # <|im_end|> in SmolLM's vocabulary
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
# SmolLM-Instruct's template (tests/data/chat_templates/smollm-instruct.jinja) renders CONV as:
RENDERED = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
            "<|im_start|>assistant\n")


def read(name):
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return f.read()


class ChatMLModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lmserve-chat-")
        cls.model = write_chat_model(cls.tmp.name, read("smollm-instruct.jinja"))
        cls.srv = Server(["--max-tokens-limit", "64"], model=cls.model)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def chat(self, **kw):
        body = {"messages": CONV, "max_tokens": 12, "temperature": 0}
        body.update(kw)
        return self.srv.post_json("/v1/chat/completions", body)

    def test_startup_line_and_models_card_name_the_template(self):
        self.assertIsNotNone(self.srv.wait_for_log(r"chat template: chatml \(from the model\), stops at <\|im_end\|>"),
                             self.srv.stderr)
        st, _, data = self.srv.get("/v1/models")
        card = json.loads(data)["data"][0]
        self.assertEqual(card["chat_template"], {"name": "chatml", "source": "model", "supported": True,
                                                 "stop": "<|im_end|>"})

    def test_the_prompt_is_the_rendered_template_with_its_control_tokens(self):
        st, tok = self.srv.post_json("/tokenize", {"prompt": RENDERED, "add_special_tokens": False})
        self.assertEqual(st, 200)
        ids = tok["tokens"]
        self.assertEqual(ids[0], 1)  # <|im_start|> is one token, not 12 characters
        self.assertEqual(ids.count(IM_END), 2)
        st, r = self.chat(max_tokens=1)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["usage"]["prompt_tokens"], len(ids))
        # the same prompt through completions scores the same first token: same tokens went in
        st, c = self.srv.post_json("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 1})
        self.assertEqual(st, 200, c)
        st, r = self.chat(max_tokens=1, logprobs=True, top_logprobs=1)
        self.assertEqual(st, 200, r)
        self.assertAlmostEqual(r["choices"][0]["logprobs"]["content"][0]["logprob"],
                               c["choices"][0]["logprobs"]["token_logprobs"][0], places=4)

    def test_generation_stops_at_im_end(self):
        # the bias makes <|im_end|> the first token: the chat ends there, with nothing to show
        st, r = self.chat(logit_bias={str(IM_END): 100})
        self.assertEqual(st, 200, r)
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        self.assertEqual(r["choices"][0]["message"]["content"], "")
        self.assertEqual(r["usage"]["completion_tokens"], 1)
        # the same prompt as a completion does not stop there: <|im_end|> is not this model's EOS
        st, tok = self.srv.post_json("/tokenize", {"prompt": RENDERED, "add_special_tokens": False})
        st, c = self.srv.post_json("/v1/completions", {"prompt": tok["tokens"], "max_tokens": 12, "temperature": 0,
                                                       "logit_bias": {str(IM_END): 100}})
        self.assertEqual(st, 200, c)
        self.assertEqual(c["choices"][0]["finish_reason"], "length")
        self.assertEqual(c["usage"]["completion_tokens"], 12)

    def test_streamed_chat_stops_at_im_end_too(self):
        st, _, events = self.srv.stream("/v1/chat/completions", {"messages": CONV, "max_tokens": 12, "temperature": 0,
                                                                 "stream": True, "logit_bias": {str(IM_END): 100}})
        self.assertEqual(st, 200, events)
        self.assertEqual(events[-1], "[DONE]")
        finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e.get("choices")]
        self.assertEqual(finishes[-1], "stop")

    def test_malformed_messages_are_400(self):
        for bad in ([], [{"content": "x"}], [{"role": "user", "content": 5}], "text"):
            st, r = self.srv.post_json("/v1/chat/completions", {"messages": bad})
            self.assertEqual(st, 400, (bad, r))
            self.assertEqual(r["error"]["param"], "messages")


class Overrides(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lmserve-chat-")
        cls.model = write_chat_model(cls.tmp.name, read("smollm-instruct.jinja"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_none_keeps_the_plain_rendering(self):
        with Server(["--chat-template", "none"], model=self.model) as srv:
            st, _, data = srv.get("/v1/models")
            self.assertEqual(json.loads(data)["data"][0]["chat_template"]["name"], "none")
            # plain "role: content" lines are not ChatML: no <|im_start|> token in the prompt, and
            # <|im_end|> does not stop the chat
            st, r = srv.post_json("/v1/chat/completions", {"messages": CONV, "max_tokens": 5, "temperature": 0,
                                                           "logit_bias": {str(IM_END): 100}})
            self.assertEqual(st, 200, r)
            self.assertEqual(r["choices"][0]["finish_reason"], "length")
            st, tok = srv.post_json("/tokenize", {"content": "system: Be brief.\nuser: Hi there\nassistant:",
                                                  "add_special": False})
            self.assertEqual(r["usage"]["prompt_tokens"], len(tok["tokens"]))

    def test_a_builtin_by_name(self):
        with Server(["--chat-template", "zephyr"], model=self.model) as srv:
            st, _, data = srv.get("/v1/models")
            ct = json.loads(data)["data"][0]["chat_template"]
            self.assertEqual((ct["name"], ct["source"], ct["supported"]), ("zephyr", "builtin", True))
            # zephyr's turns end with EOS (<|endoftext|> here): that is the stop it reports
            self.assertEqual(ct["stop"], "<|endoftext|>")

    def test_a_file(self):
        path = os.path.join(self.tmp.name, "mine.jinja")
        with open(path, "w") as f:
            f.write("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]")
        with Server(["--chat-template", path], model=self.model) as srv:
            st, _, data = srv.get("/v1/models")
            ct = json.loads(data)["data"][0]["chat_template"]
            self.assertEqual((ct["name"], ct["source"]), ("custom", "file"))
            st, r = srv.post_json("/v1/chat/completions", {"messages": CONV, "max_tokens": 1})
            self.assertEqual(st, 200, r)
            st, tok = srv.post_json("/tokenize", {"prompt": "[system] Be brief.\n[user] Hi there\n[assistant]",
                                                  "add_special_tokens": False})
            self.assertEqual(r["usage"]["prompt_tokens"], len(tok["tokens"]))

    def test_an_unusable_explicit_template_stops_the_start(self):
        path = os.path.join(self.tmp.name, "macro.jinja")
        with open(path, "w") as f:
            f.write("{% macro turn(m) %}{{ m.content }}{% endmacro %}{% for m in messages %}{{ turn(m) }}{% endfor %}")
        for arg, words in ((path, "'macro' blocks are not supported"), ("/no/such/file.jinja", "cannot read chat template")):
            srv = Server(["--chat-template", arg], model=self.model, start=False)
            with self.assertRaises(RuntimeError) as cm:
                srv.start()
            srv.proc.stderr.close()
            self.assertNotEqual(srv.proc.wait(), 0)
            self.assertIn(words, str(cm.exception))


class NotUnderstood(unittest.TestCase):
    """A model whose own template needs what the evaluator lacks still serves completions."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lmserve-chat-")
        model = write_chat_model(cls.tmp.name, "{% macro t(m) %}<|im_start|>{{ m.content }}{% endmacro %}"
                                               "{% for m in messages %}{{ t(m) }}{% endfor %}")
        cls.srv = Server([], model=model)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.tmp.cleanup()

    def test_warning_models_card_and_501(self):
        self.assertIsNotNone(self.srv.wait_for_log(r"warning: the model's chat template is not understood .*macro"),
                             self.srv.stderr)
        st, _, data = self.srv.get("/v1/models")
        ct = json.loads(data)["data"][0]["chat_template"]
        self.assertEqual((ct["source"], ct["supported"]), ("model", False))
        self.assertIn("macro", ct["error"])
        st, r = self.srv.post_json("/v1/chat/completions", {"messages": CONV, "max_tokens": 2})
        self.assertEqual(st, 501, r)
        self.assertEqual(r["error"]["code"], "chat_template_unsupported")
        self.assertIn("--chat-template", r["error"]["message"])
        st, r = self.srv.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        self.assertEqual(st, 200, r)


class TemplateRefusal(unittest.TestCase):
    def test_gemma_refuses_a_system_turn_with_its_own_words(self):
        with tempfile.TemporaryDirectory(prefix="lmserve-chat-") as d:
            model = write_chat_model(d, read("gemma-2-it.jinja"))
            with Server([], model=model) as srv:
                st, r = srv.post_json("/v1/chat/completions", {"messages": CONV, "max_tokens": 2})
                self.assertEqual(st, 400, r)
                self.assertEqual(r["error"]["param"], "messages")
                self.assertIn("System role not supported", r["error"]["message"])
                st, r = srv.post_json("/v1/chat/completions", {"messages": CONV[1:], "max_tokens": 2})
                self.assertEqual(st, 200, r)


class BaseModel(unittest.TestCase):
    def test_a_model_without_template_keeps_the_plain_rendering(self):
        with Server() as srv:  # stories260K: no chat template
            st, _, data = srv.get("/v1/models")
            self.assertEqual(json.loads(data)["data"][0]["chat_template"], {"name": "none", "source": "none",
                                                                            "supported": True})
            st, r = srv.post_json("/v1/chat/completions", {"messages": CONV, "max_tokens": 2})
            self.assertEqual(st, 200, r)
            st, tok = srv.post_json("/tokenize", {"content": "system: Be brief.\nuser: Hi there\nassistant:"})
            self.assertEqual(r["usage"]["prompt_tokens"], len(tok["tokens"]))


if __name__ == "__main__":
    unittest.main()
