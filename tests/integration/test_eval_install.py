"""The eval client as a package (scripts/pyproject.toml): `pip install` into a fresh virtual
environment made as Debian users make one, offline, then the installed `lmserve-eval` works
(--help, and a real `run` against the server); and the checkout's launcher works under
whichever python3 runs it (it no longer re-runs itself under /usr/bin/python3).

    /usr/bin/python3 -m venv --system-site-packages VENV
    VENV/bin/pip install --no-index --no-build-isolation ./scripts

--no-index: nothing may be downloaded (no package index is reachable here); the build uses
the setuptools that is installed (Debian's python3-setuptools / the venv's own).  The
package is installed from a copy of scripts/, so the build's files stay out of the checkout."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from lmserve_testlib import REPO, Server, require_model

DEBIAN_PY = "/usr/bin/python3"


class InstalledClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DEBIAN_PY):
            raise AssertionError("no %s: the test installs into a venv made by Debian's Python" % DEBIAN_PY)
        cls.tmp = tempfile.TemporaryDirectory(prefix="lmserve-eval-venv-")
        d = cls.tmp.name
        cls.venv = os.path.join(d, "venv")
        src = os.path.join(d, "scripts")
        shutil.copytree(os.path.join(REPO, "scripts"), src,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        r = subprocess.run([DEBIAN_PY, "-m", "venv", "--system-site-packages", cls.venv],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError("python3 -m venv failed (Debian needs python3-venv):\n" + r.stdout + r.stderr)
        env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        cls.pip = subprocess.run([os.path.join(cls.venv, "bin", "pip"), "install", "--no-index",
                                  "--no-build-isolation", src], capture_output=True, text=True, timeout=300,
                                 env=env)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def bin(self, name):
        return os.path.join(self.venv, "bin", name)

    def test_pip_install_offline_succeeds(self):
        self.assertEqual(self.pip.returncode, 0, self.pip.stdout + self.pip.stderr)
        self.assertIn("Successfully installed lmserve-eval", self.pip.stdout)

    def test_console_script_help(self):
        r = subprocess.run([self.bin("lmserve-eval"), "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: lmserve-eval", r.stdout)
        for command in ("run", "sweep", "score"):
            self.assertIn(command, r.stdout)
        r = subprocess.run([self.bin("lmserve-eval"), "run", "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("-j CONCURRENCY", r.stdout)

    def test_the_package_is_imported_from_the_venv(self):
        r = subprocess.run([self.bin("python"), "-c", "import lmserve_eval, sys; print(lmserve_eval.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.realpath(r.stdout.strip()).startswith(os.path.realpath(self.venv)), r.stdout)

    def test_installed_command_runs_against_the_server(self):
        require_model()
        prompts = os.path.join(self.tmp.name, "prompts.jsonl")
        out = os.path.join(self.tmp.name, "out.jsonl")
        with open(prompts, "w") as f:
            f.write(json.dumps({"id": "a", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}) + "\n")
            f.write(json.dumps({"id": "b", "prompt": "Lily saw a cat", "max_tokens": 8}) + "\n")
        with Server() as srv:
            r = subprocess.run([self.bin("lmserve-eval"), "run", prompts, "-o", out, "--url", srv.url],
                               capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            rows = [json.loads(line) for line in f]
        self.assertEqual([x["id"] for x in rows], ["a", "b"])
        self.assertEqual(rows[0]["text"], ", there was a little girl named Lily. She loved to play")
        self.assertEqual(rows[1]["tokens"], 8)


class CheckoutLauncher(unittest.TestCase):
    def test_runs_under_the_python_that_starts_it(self):
        launcher = os.path.join(REPO, "scripts", "lmserve-eval")
        with open(launcher) as f:
            self.assertNotIn("/usr/bin/python3", f.read(), "no hard-coded interpreter")
        r = subprocess.run([sys.executable, launcher, "--version"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout.strip(), r"^lmserve-eval \d")
        r = subprocess.run([launcher, "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: lmserve-eval", r.stdout)


if __name__ == "__main__":
    unittest.main()
