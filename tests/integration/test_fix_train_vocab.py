"""scripts/fix-train-vocab.py: a GGUF written by an older `lmserve train` (space token named
"<0x20>", a byte token) becomes exactly today's file (space token U+2581, a normal piece).

The old-style file is made from models/default/model.gguf by the reverse edit (with the
script's own parse and build), so the round trip must give the committed file back byte for
byte -- metadata order, tensor infos, padding and tensor data included.  The script also
refuses a file that is already fixed and one that is not a trainer vocabulary, without writing."""
import importlib.util
import os
import subprocess
import sys
import tempfile
import unittest

from lmserve_testlib import REPO, binary, require_model

SCRIPT = os.path.join(REPO, "scripts", "fix-train-vocab.py")
MODEL = os.path.join(REPO, "models", "default", "model.gguf")


def load_script():
    spec = importlib.util.spec_from_file_location("fix_train_vocab", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_old_style(mod, src, dst):
    """src with token 35 renamed back to <0x20> (type BYTE): what `lmserve train` wrote before."""
    b = open(src, "rb").read()
    version, n_t, kvs, infos, align, data_start = mod.parse(b)
    kv = {k: v for k, _, v in kvs}
    kv[b"tokenizer.ggml.tokens"][1][35] = b"<0x20>"
    kv[b"tokenizer.ggml.token_type"][1][35] = 6
    open(dst, "wb").write(mod.build(version, n_t, kvs, infos, align, b[data_start:]))


class FixTrainVocab(unittest.TestCase):
    def test_round_trip_gives_the_committed_file(self):
        mod = load_script()
        with tempfile.TemporaryDirectory() as d:
            old, fixed = os.path.join(d, "old.gguf"), os.path.join(d, "fixed.gguf")
            write_old_style(mod, MODEL, old)
            self.assertNotEqual(open(old, "rb").read(), open(MODEL, "rb").read())
            out = subprocess.run([sys.executable, SCRIPT, old, fixed], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("token 35 renamed", out.stdout)
            self.assertEqual(open(fixed, "rb").read(), open(MODEL, "rb").read())
            # both files generate the same text with lmserve (it encodes a space as id 35 either way)
            gen = [binary(), "generate", "--prompt", "And God said", "--max-tokens", "24", "--temperature", "0"]
            a = subprocess.run(gen + ["--model", old], capture_output=True, check=True).stdout
            b = subprocess.run(gen + ["--model", fixed], capture_output=True, check=True).stdout
            self.assertEqual(a, b)
            self.assertTrue(a.startswith(b"And God said"))

    def test_refuses_without_writing(self):
        with tempfile.TemporaryDirectory() as d:
            dst = os.path.join(d, "out.gguf")
            out = subprocess.run([sys.executable, SCRIPT, MODEL, dst], capture_output=True, text=True)
            self.assertNotEqual(out.returncode, 0)
            self.assertIn("already fixed", out.stderr)
            stories = require_model("stories260K.gguf")
            out = subprocess.run([sys.executable, SCRIPT, stories, dst], capture_output=True, text=True)
            self.assertNotEqual(out.returncode, 0)
            self.assertIn("259 tokens expected", out.stderr)
            self.assertFalse(os.path.exists(dst))


if __name__ == "__main__":
    unittest.main()
