"""lmserve_testlib -- start the real lmserve server for integration tests and talk to it.

Shared by every tests/integration/test_*.py (Python 3 standard library only).

    from lmserve_testlib import Server, model_path
    with Server(["--parallel", "4"]) as srv:          # starts on a free port
        status, body = srv.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 4})
        events = srv.stream("/v1/completions", {"prompt": "Hi", "stream": True})
    # srv.stop() (also called by __exit__) sends SIGTERM and returns the exit code;
    # srv.stderr holds everything the server printed.

Environment: LMSERVE_BIN (the binary; default build/release/lmserve), LMSERVE_MODELS
(folder with stories260K.gguf; default tests/data/models), SANITIZE (non-empty under
sanitizer builds: timeouts are stretched by `slow`).
"""
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Sanitizer builds run several times slower: scale waits by this.
slow = 6.0 if os.environ.get("SANITIZE") else 1.0


def binary():
    return os.environ.get("LMSERVE_BIN") or os.path.join(REPO, "build", "release", "lmserve")


def models_dir():
    """$LMSERVE_MODELS, else the repository's own tests/data/models."""
    return os.environ.get("LMSERVE_MODELS") or os.path.join(REPO, "tests", "data", "models")


def fixtures_dir():
    """$LMSERVE_FIXTURES, else the repository's own tests/data/fixtures."""
    return os.environ.get("LMSERVE_FIXTURES") or os.path.join(REPO, "tests", "data", "fixtures")


def model_path(name="stories260K.gguf"):
    return os.path.join(models_dir(), name)


def _require(path, var, what):
    if not os.path.exists(path):
        raise AssertionError("%s not found: %s (tests/data/ comes with the repository: restore it with "
                             "`git checkout -- tests/data`, or set %s to a folder that has it)" % (what, path, var))
    return path


def require_model(name="stories260K.gguf"):
    """The path of a test model; fails the test (never skips it) when the file is missing."""
    return _require(model_path(name), "LMSERVE_MODELS", "model")


def require_fixture(rel):
    """The path of a fixture (file or folder) under fixtures_dir(); fails the test when missing."""
    return _require(os.path.join(fixtures_dir(), rel), "LMSERVE_FIXTURES", "fixture")


def require_program(path_or_name, how):
    """The path of an external program the test drives; fails the test, saying how to get
    it (`how`), when it is not installed."""
    import shutil
    p = path_or_name if os.path.isabs(path_or_name) else shutil.which(path_or_name)
    if not p or not os.access(p, os.X_OK):
        raise AssertionError("%s is not installed (%s)" % (path_or_name, how))
    return p


class Server:
    """One lmserve process on 127.0.0.1 and a free port."""

    def __init__(self, extra_args=(), model=None, env=None, start=True, ready_timeout=None, wrapper=(),
                 binary_path=None):
        self.extra_args = list(extra_args)
        self.binary = binary_path or binary()
        self.wrapper = list(wrapper)  # e.g. ["valgrind", "--leak-check=full"]
        self.model = None if model is False else (model or model_path())  # False: no --model flag
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.ready_timeout = ready_timeout or 30 * slow
        self.proc = None
        self.host = "127.0.0.1"
        self.port = None
        self._lines = []
        self._cond = threading.Condition()
        self._reader = None
        if start:
            self.start()

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, extra_args=None):
        if extra_args is not None:
            self.extra_args = list(extra_args)
        args = self.wrapper + [self.binary, "serve"] + (["--model", self.model] if self.model else [])
        args += ["--host", self.host, "--port", "0"]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        pat = re.compile(r"lmserve: listening on http://(.+):(\d+)$")
        deadline = time.time() + self.ready_timeout
        with self._cond:
            while True:
                for line in self._lines:
                    m = pat.search(line)
                    if m:
                        self.port = int(m.group(2))
                        return self
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError("lmserve exited with %s before listening:\n%s"
                                       % (self.proc.returncode, self.stderr))
                left = deadline - time.time()
                if left <= 0:
                    self.kill()
                    raise RuntimeError("lmserve did not print its listening line:\n" + self.stderr)
                self._cond.wait(min(left, 0.2))

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self):
        with self._cond:
            return "\n".join(self._lines)

    def wait_for_log(self, pattern, timeout=10):
        """Wait until a stderr line matches the regex; return the match (or None)."""
        pat = re.compile(pattern)
        deadline = time.time() + timeout * slow
        with self._cond:
            while True:
                for line in self._lines:
                    m = pat.search(line)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=None):
        """Wait for exit; returns the exit code (None on timeout)."""
        try:
            rc = self.proc.wait(timeout=(timeout or 30) * slow)
        except subprocess.TimeoutExpired:
            return None
        if self._reader:
            self._reader.join(5)
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal the server (SIGTERM) and return its exit code; kill it if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            rc = self.proc.returncode
        self.proc.stderr.close()
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        rc = self.stop()
        if exc_type is None and rc != 0:
            raise AssertionError("lmserve exited with %s (sanitizer report or crash?):\n%s"
                                 % (rc, self.stderr[-4000:]))

    # ---- HTTP ----------------------------------------------------------------------------
    def conn(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout * slow)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers dict with lower-case names, body bytes)."""
        c = self.conn(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def post_json(self, path, obj, headers=None, timeout=60):
        """(status, parsed JSON body)."""
        status, _, data = self.request("POST", path, obj, headers, timeout)
        return status, json.loads(data) if data else None

    def stream(self, path, obj, headers=None, timeout=120):
        """POST with stream: true; returns (status, headers, events) where events are the
        parsed `data:` payloads and the string "[DONE]"."""
        c = self.conn(timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            c.request("POST", path, body=json.dumps(obj), headers=h)
            r = c.getresponse()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            if r.status != 200:
                return r.status, hdrs, [json.loads(r.read() or b"null")]
            return r.status, hdrs, list(iter_sse(r))
        finally:
            c.close()

    def metrics(self):
        """/metrics as {name_with_labels: float}."""
        status, _, data = self.get("/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out


def iter_sse(resp):
    """Yield parsed `data:` payloads (and "[DONE]") from an http.client response."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if line.startswith(b"data: "):
                    payload = line[6:].decode("utf-8")
                    yield payload if payload == "[DONE]" else json.loads(payload)


def stream_text(events, kind="completion", index=0):
    """Concatenate the text of one choice from streamed events."""
    out = []
    for ev in events:
        if ev == "[DONE]" or "choices" not in ev:
            continue
        for ch in ev["choices"]:
            if ch["index"] != index:
                continue
            if kind == "chat":
                out.append(ch["delta"].get("content") or "")
            else:
                out.append(ch["text"])
    return "".join(out)
