"""The model that ships in models/default/ (issue 8): `lmserve serve` with no --model finds
it beside the binary's checkout and serves text that reads like its corpus (the King James
Bible), the same text `lmserve generate` gives for the same file."""
import json
import os
import re
import subprocess
import unittest

from lmserve_testlib import Server, binary

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT = os.path.join(ROOT, "models", "default", "model.gguf")


class DefaultModel(unittest.TestCase):
    def test_serve_without_model_serves_the_default(self):
        self.assertTrue(os.path.exists(DEFAULT), "%s is part of the repository: restore it with "
                        "`git checkout -- models/default`" % DEFAULT)
        env = {k: v for k, v in os.environ.items() if k != "LMSERVE_DEFAULT_MODEL"}
        prompt = "And God said"
        gen = subprocess.run([binary(), "generate", "--model", DEFAULT, "--prompt", prompt,
                              "--max-tokens", "40", "--temperature", "0"],
                             capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(gen.returncode, 0, gen.stderr)
        self.assertTrue(gen.stdout.startswith(prompt))
        with Server(model=False, env={"LMSERVE_DEFAULT_MODEL": ""}) as srv:  # exit 0 checked on leaving
            st, _, data = srv.get("/v1/models")
            self.assertEqual(st, 200)
            # its id is its own general.name, not the file name "model"
            self.assertEqual(json.loads(data)["data"][0]["id"], "lmserve-kjv-1.8M")
            st, body = srv.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 40,
                                                         "temperature": 0})
            self.assertEqual(st, 200)
            text = body["choices"][0]["text"]
            self.assertEqual(body["usage"]["completion_tokens"], 40)
            # the same model and arithmetic as `lmserve generate`
            self.assertEqual(prompt + text, gen.stdout.rstrip("\n")[:len(prompt) + len(text)])
            # reads like the corpus: English words in the KJV's vocabulary and style
            words = re.findall(r"[A-Za-z]+", text)
            self.assertGreaterEqual(len(words), 5, text)
            self.assertRegex(text, r"\b(LORD|God|unto|the|and)\b")
            self.assertTrue(all(ch.isascii() for ch in text), text)


if __name__ == "__main__":
    unittest.main()
