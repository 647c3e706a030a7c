"""`lmserve serve --model DIR` for a Hugging Face folder and a course artifact folder:
/v1/models reports the architecture, format and context length from the files, and
a greedy completion over HTTP equals `lmserve generate` on the same folder."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

from lmserve_testlib import REPO, Server, binary, model_path, require_fixture, require_model

WRITER = os.path.join(REPO, "tests", "tools", "write_course_pt.py")


def generate(model, prompt, n):
    out = subprocess.run([binary(), "generate", "--model", model, "--prompt", prompt,
                          "--max-tokens", str(n), "--temperature", "0"],
                         capture_output=True, check=True)
    text = out.stdout.decode("utf-8", "replace")
    return text[:-1] if text.endswith("\n") else text  # generate ends its output with a newline


class ServeFolders(unittest.TestCase):
    def check(self, folder, model_id, arch, fmt, ctx, vocab, prompt="Hello world", n=8):
        with Server(["--parallel", "2"], model=folder) as srv:
            status, _, data = srv.get("/v1/models")
            self.assertEqual(status, 200)
            m = json.loads(data)["data"][0]
            self.assertEqual((m["id"], m["architecture"], m["format"], m["context_length"], m["vocab_size"]),
                             (model_id, arch, fmt, ctx, vocab))
            st, body = srv.post_json("/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0})
            self.assertEqual(st, 200)
            text = body["choices"][0]["text"]
            self.assertEqual(body["usage"]["completion_tokens"], n)
        self.assertEqual(generate(folder, prompt, n), prompt + text)

    def test_hugging_face_gpt2_folder(self):
        folder = require_fixture(os.path.join("hf", "tiny-gpt2"))
        self.check(folder, "tiny-gpt2", "gpt2", "safetensors", 1024, 50257)

    def test_course_artifact_folder(self):
        with tempfile.TemporaryDirectory() as root:
            subprocess.run([sys.executable, WRITER, "course", root, "storylm", "--seed", "3"], check=True,
                           capture_output=True)
            folder = os.path.join(root, "models", "storylm")
            self.check(folder, "storylm", "gpt2", "torch", 32, 294, prompt="Once", n=6)


class BosEndsLlama2cText(unittest.TestCase):
    """stories260K was trained on stories separated by BOS (no EOS). From "Sam was sad
    because" it ends its story after 172 tokens and emits BOS. A llama2.c checkpoint stops
    there, as run.c does (finish_reason "stop", 173 tokens counting the BOS); the GGUF of the
    same model goes on into the next story, as llama.cpp does ("length" at 200), and the
    texts agree up to the BOS."""

    PROMPT, N = "Sam was sad because", 200

    def complete(self, args):
        with Server(args, model=False) as srv:
            st, body = srv.post_json("/v1/completions", {"prompt": self.PROMPT, "max_tokens": self.N,
                                                          "temperature": 0})
            self.assertEqual(st, 200)
            return body["choices"][0], body["usage"]["completion_tokens"]

    def test_bin_stops_at_bos_gguf_goes_on(self):
        require_model("stories260K.bin")
        require_model("stories260K.gguf")
        cb, nb = self.complete(["--model", model_path("stories260K.bin"), "--tokenizer", model_path("tok512.bin")])
        cg, ng = self.complete(["--model", model_path("stories260K.gguf")])
        self.assertEqual((cb["finish_reason"], nb), ("stop", 173))
        self.assertEqual((cg["finish_reason"], ng), ("length", self.N))
        self.assertTrue(cb["text"].endswith("They played together and had fun."), cb["text"][-60:])
        # the GGUF's text goes on after the BOS with its space kept (SentencePiece's decoding)
        self.assertEqual(cg["text"][:len(cb["text"]) + 17], cb["text"] + " Once upon a time")
        # `lmserve generate` stops at the same place
        out = subprocess.run([binary(), "generate", "--model", model_path("stories260K.bin"), "--tokenizer",
                              model_path("tok512.bin"), "--prompt", self.PROMPT, "--max-tokens", str(self.N),
                              "--temperature", "0"], capture_output=True, check=True)
        self.assertEqual(out.stdout.decode("utf-8").rstrip("\n"), self.PROMPT + cb["text"])


if __name__ == "__main__":
    unittest.main()
