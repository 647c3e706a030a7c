"""Chat templates rendered by lmserve's own Jinja evaluator (model/tokenizers/chat_template.c,
through `lmserve chat-template`) compared byte for byte with the reference: the Jinja2 library
set up the way Hugging Face transformers sets it up for tokenizer.apply_chat_template.

That set-up, as transformers' chat_template_utils.py (_compile_jinja_template) documents it:
an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks on and the loopcontrols
extension; a `tojson` filter replaced by json.dumps (ensure_ascii False, no HTML escaping,
keys in their order); the globals raise_exception (raises a TemplateError with the message)
and strftime_now (the current local time, formatted); and the render called with messages,
add_generation_prompt and the tokenizer's special tokens (bos_token, eos_token) as variables.
A special token the tokenizer lacks (Qwen2.5 has no BOS) is not passed at all.

Every template real instruct models publish (tests/data/chat_templates, sources in
tests/data/SOURCES.md) and every built-in (`--chat-template NAME`, whose Jinja text comes
from `lmserve chat-template --source`) renders a set of conversations; each must give the
same bytes as Jinja2, or -- where the template refuses the conversation (Llama 2 and Gemma 2
demand alternating roles, Gemma 2 refuses a system turn) -- both must refuse, with the same
message.  (The built-in gemma folds a system turn into the first user turn instead, as
llama.cpp does.)  The unit tests (tests/model/tokenizers/test_chat_template.c) hold the hand-written
expected strings; this test checks the evaluator against the real engine on many more inputs.

Needs Jinja2 for the Python that runs the tests (Debian: python3-jinja2, installed by
`make deps-test`); without it the test fails and says so."""
import datetime
import json
import os
import subprocess
import tempfile
import unittest

from chat_model import write_chat_model
from lmserve_testlib import REPO, binary, model_path

try:
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
except ImportError as e:  # fail, never skip: the comparison is the test
    raise AssertionError("Jinja2 is missing for %s (Debian: apt-get install python3-jinja2, or make deps-test): %s"
                         % (os.sys.executable, e))

TEMPLATES = os.path.join(REPO, "tests", "data", "chat_templates")

# The special tokens each model's tokenizer_config.json names (None: the tokenizer has none).
PUBLISHED = {
    "smollm-instruct": ("<|im_start|>", "<|im_end|>"),
    "smollm2-instruct": ("<|im_start|>", "<|im_end|>"),
    "qwen2.5-instruct": (None, "<|im_end|>"),
    "llama-2-chat": ("<s>", "</s>"),
    "llama-3-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "zephyr-7b-beta": ("<s>", "</s>"),
    "gemma-2-it": ("<bos>", "<eos>"),
    "phi-3-mini-instruct": ("<s>", "<|endoftext|>"),
}
BUILTIN = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama2": ("<s>", "</s>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "zephyr": ("<s>", "</s>"),
    "gemma": ("<bos>", "<eos>"),
    "phi3": ("<s>", "<|endoftext|>"),
}


def msg(role, content, **kw):
    m = {"role": role, "content": content}
    m.update(kw)
    return m


TOOL_CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo", "days": 2}}}
CONVERSATIONS = {
    "three_turns": ([msg("user", "Hi there"), msg("assistant", "  Hello! How can I help?  "),
                     msg("user", "What is 2+2?")], True),
    "system_first_no_prompt": ([msg("system", "Be brief."), msg("user", "Hi there"), msg("assistant", "Hello!")], False),
    "long": ([msg("system", "  You answer in French.\nAlways.  "), msg("user", "Line one\nline two\n\n"),
              msg("assistant", "Oui."), msg("user", "Caf\u00e9 \u65e5\u672c \U0001F600 \"quoted\" {{ not a tag }} {% raw %}"),
              msg("assistant", "\n Bien s\u00fbr \n"), msg("user", "<|im_end|> and </s> typed by a user")], True),
    "one_user": ([msg("user", "Tell me a story.")], True),
    "one_user_no_prompt": ([msg("user", "Tell me a story.")], False),
    "empty_content": ([msg("user", ""), msg("assistant", ""), msg("user", " ")], True),
    "two_users_in_a_row": ([msg("user", "a"), msg("user", "b")], True),
    "assistant_first": ([msg("assistant", "I start."), msg("user", "Fine.")], True),
    "tool_call": ([msg("user", "Weather in Oslo?"), msg("assistant", "", tool_calls=[TOOL_CALL]),
                   msg("tool", "rain")], True),
}


def reference_env():
    """Jinja2 as transformers configures it for chat templates."""
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = reference_env()


def jinja_render(source, messages, gen, bos, eos):
    """(text, None) or (None, error message)."""
    kw = {"messages": messages, "add_generation_prompt": gen}
    if bos is not None:
        kw["bos_token"] = bos
    if eos is not None:
        kw["eos_token"] = eos
    try:
        return ENV.from_string(source).render(**kw).encode("utf-8"), None
    except jinja2.exceptions.TemplateError as e:
        return None, str(e)


def lmserve_render(template, messages, gen, bos, eos):
    """(bytes, None) or (None, stderr); asserts the exit code is 0 or 1 (never a crash)."""
    args = [binary(), "chat-template", "--template", template, "--bos", bos or "", "--eos", eos or ""]
    if not gen:
        args.append("--no-generation-prompt")
    r = subprocess.run(args, input=json.dumps(messages).encode(), capture_output=True, timeout=30)
    if r.returncode not in (0, 1):
        raise AssertionError("lmserve chat-template exited %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
    return (r.stdout, None) if r.returncode == 0 else (None, r.stderr.decode("utf-8", "replace"))


class AgainstJinja2(unittest.TestCase):
    def compare(self, template, source, bos, eos):
        rendered = refused = 0
        for cname, (messages, gen) in CONVERSATIONS.items():
            with self.subTest(template=template, conversation=cname):
                want, want_err = jinja_render(source, messages, gen, bos, eos)
                got, got_err = lmserve_render(template, messages, gen, bos, eos)
                if want_err is None:
                    self.assertIsNone(got_err, "Jinja2 renders %r, lmserve fails: %s" % (want, got_err))
                    self.assertEqual(got, want)
                    rendered += 1
                else:
                    self.assertIsNone(got, "Jinja2 refuses (%s), lmserve renders %r" % (want_err, got))
                    self.assertIn(want_err, got_err)
                    refused += 1
        return rendered, refused

    def test_published_templates(self):
        counts = {}
        for name, (bos, eos) in PUBLISHED.items():
            path = os.path.join(TEMPLATES, name + ".jinja")
            with open(path, encoding="utf-8") as f:
                source = f.read()
            counts[name] = self.compare(path, source, bos, eos)
        # the comparison covered both outcomes: renderings and refusals
        self.assertGreaterEqual(sum(r for r, _ in counts.values()), 60, counts)
        # Llama 2 refuses two users in a row, an assistant first, a tool turn; Gemma 2 those and
        # any system turn
        self.assertEqual(counts["llama-2-chat"][1], 3, counts)
        self.assertEqual(counts["gemma-2-it"][1], 5, counts)

    def test_builtin_templates(self):
        for name, (bos, eos) in BUILTIN.items():
            r = subprocess.run([binary(), "chat-template", "--template", name, "--source"],
                               capture_output=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            source = r.stdout.decode("utf-8")
            self.assertIn("messages", source)
            rendered, _ = self.compare(name, source, bos, eos)
            self.assertGreaterEqual(rendered, 5, name)


class Command(unittest.TestCase):
    def run_cmd(self, args, stdin=b"[]"):
        return subprocess.run([binary(), "chat-template"] + args, input=stdin, capture_output=True, timeout=30)

    def test_object_input_and_its_generation_flag(self):
        conv = {"messages": [msg("user", "Hi")], "add_generation_prompt": False}
        r = self.run_cmd(["--template", "chatml"], json.dumps(conv).encode())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"<|im_start|>user\nHi<|im_end|>\n")

    def test_a_models_own_template_and_special_tokens(self):
        """--model: the template the GGUF carries, with the model's BOS text (SmolLM's
        vocabulary: <|endoftext|> is its BOS), as the server renders chats."""
        with tempfile.TemporaryDirectory(prefix="lmserve-chat-ref-") as d:
            with open(os.path.join(TEMPLATES, "llama-3-instruct.jinja"), encoding="utf-8") as f:
                path = write_chat_model(d, f.read())
            r = self.run_cmd(["--model", path], json.dumps([msg("user", "Hi")]).encode())
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, b"<|endoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                                       b"<|start_header_id|>assistant<|end_header_id|>\n\n")
        r = self.run_cmd(["--model", model_path()])
        self.assertEqual(r.returncode, 2)
        self.assertIn("carries no chat template", r.stderr.decode())

    def test_a_hugging_face_folders_template(self):
        """An HF folder's template: tokenizer_config.json's chat_template as a string, or as a
        list of named templates (the one named "default"), and chat_template.jinja beside it
        first (where recent transformers save it).  The folder is tests/data's tiny GPT-2, whose
        BOS and EOS are <|endoftext|>."""
        src = os.path.join(REPO, "tests", "data", "fixtures", "hf", "tiny-gpt2")
        with open(os.path.join(TEMPLATES, "zephyr-7b-beta.jinja"), encoding="utf-8") as f:
            zephyr = f.read()
        conv = json.dumps([msg("user", "Hi")]).encode()
        want = b"<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
        with tempfile.TemporaryDirectory(prefix="lmserve-chat-hf-") as d:
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                if not os.path.exists(os.path.join(src, name)):
                    raise AssertionError("missing test data %s (see tests/data/SOURCES.md)" % os.path.join(src, name))
                os.symlink(os.path.join(src, name), os.path.join(d, name))
            cfg = os.path.join(d, "tokenizer_config.json")
            for template in (zephyr, [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": zephyr},
                                      {"name": "rag", "template": "RAG"}]):
                with open(cfg, "w", encoding="utf-8") as f:
                    json.dump({"chat_template": template}, f)
                r = self.run_cmd(["--model", d], conv)
                self.assertEqual((r.returncode, r.stdout), (0, want), r.stderr)
            with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8") as f:
                f.write("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
            r = self.run_cmd(["--model", d], conv)
            self.assertEqual((r.returncode, r.stdout), (0, b"[user]Hi"), r.stderr)

    def test_bad_usage_is_exit_2_with_a_message(self):
        for args, stdin, words in ((["--template", "chatml"], b"{not json", "not JSON"),
                                   (["--template", "chatml"], b"{\"messages\": 3}", "array of messages"),
                                   ([], b"[]", "--template"),
                                   (["--template", "/nonexistent/t.jinja"], b"[]", "neither a built-in"),
                                   (["--bogus"], b"[]", "--bogus")):
            with self.subTest(args=args):
                r = self.run_cmd(args, stdin)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(words, r.stderr.decode())

    def test_a_template_error_is_exit_1(self):
        r = self.run_cmd(["--template", os.path.join(TEMPLATES, "gemma-2-it.jinja")],
                         json.dumps([msg("system", "x"), msg("user", "y")]).encode())
        self.assertEqual(r.returncode, 1)
        self.assertIn("System role not supported", r.stderr.decode())
        self.assertEqual(r.stdout, b"")


if __name__ == "__main__":
    unittest.main()
