"""Conventions a user expects of a server binary: `lmserve --version` / `-V` (the build's version:
VERSION plus the commit, scripts/version.sh), the same version in /health and in a `Server`
header on every answer; `lmserve health` for container health checks; and a model served under
its own name (GGUF general.name, unless that is only the architecture's name as llama.cpp's
converters write it; else the file or folder name; `--model-id` wins)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

from lmserve_testlib import REPO, Server, binary, model_path, require_model

SET_META = os.path.join(REPO, "scripts", "gguf-set-meta.py")
DEFAULT = os.path.join(REPO, "models", "default", "model.gguf")


def release():
    with open(os.path.join(REPO, "VERSION")) as f:
        return f.read().strip()


class Version(unittest.TestCase):
    def test_version_flags_print_the_build_version(self):
        outs = []
        for flag in ("--version", "-V"):
            r = subprocess.run([binary(), flag], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            outs.append(r.stdout.strip())
        self.assertEqual(outs[0], outs[1])
        m = re.fullmatch(r"lmserve (\S+)", outs[0])
        self.assertTrue(m, outs[0])
        v = m.group(1)
        self.assertTrue(v == release() or v.startswith(release() + "+g"), v)
        if os.path.isdir(os.path.join(REPO, ".git")):
            commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            self.assertRegex(v, r"\+g[0-9a-f]{12}(\.dirty)?$")
            self.assertIn(commit, v, "built from this checkout's commit")

    def test_help_mentions_version_and_unknown_command_still_fails(self):
        r = subprocess.run([binary(), "--help"], capture_output=True, text=True, timeout=30)
        self.assertIn("--version", r.stdout)
        r = subprocess.run([binary(), "--versio"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)


class ServerVersion(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        cls.version = subprocess.run([binary(), "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.split()[1]
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_health_and_server_header(self):
        st, h, data = self.srv.get("/health")
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(data), {"status": "ok", "version": self.version})
        self.assertEqual(h["server"], "lmserve/" + self.version)

    def test_server_header_on_errors_streams_and_files(self):
        st, h, _ = self.srv.get("/no/such/route")
        self.assertEqual(st, 404)
        self.assertEqual(h["server"], "lmserve/" + self.version)
        st, h, body = self.srv.request("POST", "/v1/completions",
                                       {"prompt": "Once upon a time", "max_tokens": 2, "stream": True})
        self.assertEqual(st, 200)
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(h["server"], "lmserve/" + self.version)
        st, h, _ = self.srv.get("/favicon.svg")
        self.assertEqual(st, 200)
        self.assertEqual(h["server"], "lmserve/" + self.version)

    def test_lmserve_health_command(self):
        r = subprocess.run([binary(), "health", "--port", str(self.srv.port)], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        with socket.socket() as s:  # a port where nothing listens
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        r = subprocess.run([binary(), "health", "--port", str(closed), "--timeout", "2"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect", r.stderr)
        r = subprocess.run([binary(), "health", "--bogus", "1"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)

    def test_a_second_server_on_a_busy_port_fails(self):
        # Two listeners on one port would split the clients between two models without a word.
        r = subprocess.run([binary(), "serve", "--model", model_path(), "--host", "127.0.0.1",
                            "--port", str(self.srv.port)], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("cannot listen on 127.0.0.1:%d" % self.srv.port, r.stderr)
        st, _, _ = self.srv.get("/health")  # the first one is untouched
        self.assertEqual(st, 200)


def served_id(args, model):
    with Server(args, model=model) as srv:
        st, _, data = srv.get("/v1/models")
        assert st == 200, data
        return json.loads(data)["data"][0]["id"]


class ModelId(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="lmserve-id-")

    def tearDown(self):
        self.tmp.cleanup()

    def test_default_model_is_served_under_its_general_name(self):
        self.assertEqual(served_id([], DEFAULT), "lmserve-kjv-1.8M")
        self.assertEqual(served_id(["--model-id", "kjv"], DEFAULT), "kjv")

    def test_an_architecture_placeholder_name_gives_the_file_name(self):
        # stories260K.gguf says general.name = "llama" (its architecture): the file name wins
        self.assertEqual(served_id([], require_model()), "stories260K")

    def test_a_real_name_with_spaces_becomes_an_id(self):
        path = os.path.join(self.tmp.name, "renamed.gguf")
        shutil.copy(require_model(), path)
        r = subprocess.run([sys.executable, SET_META, path, "general.name=Tiny Stories\t260K"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(served_id([], path), "Tiny-Stories-260K")

    def test_a_trained_model_is_named_after_its_file(self):
        data = os.path.join(self.tmp.name, "book.txt")
        with open(data, "w") as f:
            f.write("In the beginning was the word. " * 400)
        out = os.path.join(self.tmp.name, "my-book.gguf")
        r = subprocess.run([binary(), "train", "--data", data, "--out", out, "--dim", "16", "--layers", "1",
                            "--heads", "2", "--ctx", "16", "--steps", "2", "--batch", "2", "--eval-every", "0",
                            "--eval-tokens", "64", "--threads", "1", "--val-frac", "0.5"],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertEqual(served_id([], out), "my-book")


if __name__ == "__main__":
    unittest.main()
