"""Out of memory on the request path: a clean 503, and the server keeps serving (issue 21).

The policy (server/server.h): every allocation is checked; a request whose allocation
fails gets 503 out_of_memory in OpenAI's error shape (or, when not even that answer can
be built, its connection is closed); nothing leaks, and the next request is served.

failalloc.c (LD_PRELOAD) makes the N-th allocation of the server's loop thread fail,
once, when the test arms it.  For a completion, a streamed completion, a chat request
and a tokenize request, for every N from 1 until the request needs fewer than N
allocations (bounded by $LMSERVE_FAILALLOC_MAX_N, default 400, each 1 in
$LMSERVE_FAILALLOC_STRIDE, default 1): the request gets 200 (the failure was absorbed),
503 out_of_memory, or a closed connection; the next normal request gets 200; the server
never dies.  At the end it shuts down with exit code 0 -- under ASan that includes the
leak check.

Run alone: TESTS_ONLY=test_failalloc make test
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, require_model, require_program, slow  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = []

REQUESTS = {
    "completion": ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4, "logprobs": 2, "n": 2,
                                       "seed": 7}),
    "stream": ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4, "stream": True, "seed": 7,
                                   "stream_options": {"include_usage": True}}),
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                      "logprobs": True, "top_logprobs": 2, "seed": 7}),
    "tokenize": ("/tokenize", {"content": "Once upon a time", "with_pieces": True}),
}


def tearDownModule():
    if FIGURES:
        print("\n" + "\n".join(FIGURES), file=sys.stderr, flush=True)


def normalized(body, stream):
    """The answer without what differs between two runs of the same seeded request (id,
    created, and usage's cached_tokens: how much of the prompt the prefix cache held depends
    on the requests before); a stream as its list of events."""
    def strip(o):
        if isinstance(o, dict):
            o = {k: v for k, v in o.items() if k not in ("id", "created")}
            if isinstance(o.get("usage"), dict):
                o["usage"] = {k: v for k, v in o["usage"].items() if k != "prompt_tokens_details"}
        return o
    if not stream:
        return strip(json.loads(body))
    events = []
    for ev in body.split(b"\n\n"):
        for line in ev.split(b"\n"):
            if line.startswith(b"data: "):
                p = line[6:]
                events.append(p.decode() if p == b"[DONE]" else strip(json.loads(p)))
    return events


def dechunk(body):
    """The payload of a chunked transfer-coded body."""
    out, rest = [], body
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out.append(rest[:n])
        rest = rest[n + 2:]
    return b"".join(out)


def exchange(port, path, obj, timeout):
    """(status or None if the connection closed without an answer, body bytes)."""
    body = json.dumps(obj).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), len(body)) + body)
        parts = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            parts.append(b)
    finally:
        s.close()
    out = b"".join(parts)
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", out)
    return (int(m.group(1)) if m else None), out.partition(b"\r\n\r\n")[2]


class FailAlloc(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        cc = require_program("cc", "the C compiler builds the LD_PRELOAD shim")
        cls.tmp = tempfile.mkdtemp()
        cls.shim = os.path.join(cls.tmp, "failalloc.so")
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", cls.shim, os.path.join(HERE, "failalloc.c"), "-ldl"],
                       check=True)
        cls.ctl = os.path.join(cls.tmp, "ctl")
        env = {"LD_PRELOAD": cls.shim, "FAILALLOC_CTL": cls.ctl}
        if os.environ.get("SANITIZE"):
            # the shim comes before the sanitizer's runtime; its malloc calls the sanitizer's
            env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")
        cls.srv = Server(["--no-log", "--parallel", "4"], env=env)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "srv", None) and cls.srv.proc.poll() is None:
            cls.srv.kill()
        shutil.rmtree(cls.tmp, True)

    def arm(self, n):
        """Arm the shim for the n-th allocation (0: disarm) and wait until it says so."""
        with open(self.ctl, "w") as f:
            f.write("%d\n" % n)
        mark = len(self.srv.stderr.splitlines())
        self.srv.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 5 * slow
        while time.monotonic() < deadline:
            if "failalloc: armed %d" % n in self.srv.stderr.splitlines()[mark:]:
                return mark
            time.sleep(0.002)
        self.fail("the shim did not arm (%d):\n%s" % (n, self.srv.stderr[-2000:]))

    def sweep(self, name):
        path, obj = REQUESTS[name]
        max_n = int(os.environ.get("LMSERVE_FAILALLOC_MAX_N", "400"))
        stride = int(os.environ.get("LMSERVE_FAILALLOC_STRIDE", "1"))
        stream = bool(obj.get("stream"))
        status, body = exchange(self.srv.port, path, obj, 30 * slow)
        self.assertEqual(status, 200, body[:300])
        want = normalized(dechunk(body) if stream else body, stream)
        counts = {"200": 0, "503": 0, "closed": 0}
        last = None
        for n in range(1, max_n + 1, stride):
            mark = self.arm(n)
            status, body = exchange(self.srv.port, path, obj, 30 * slow)
            # let the loop thread finish the request (a stream's last writes) before disarming
            time.sleep(0.01)
            self.arm(0)
            # the shim's lines come in order: a failure is reported before "armed 0"
            lines = self.srv.stderr.splitlines()[mark:]
            lines = lines[:lines.index("failalloc: armed 0")]
            hit = any(ln.startswith("failalloc: failed call") for ln in lines)
            self.assertIsNone(self.srv.proc.poll(), "the server died at N=%d:\n%s" % (n, self.srv.stderr[-3000:]))
            if status == 503:
                err = json.loads(body)["error"]
                self.assertEqual(err["code"], "out_of_memory", body)
                self.assertEqual(err["type"], "server_error", body)
            elif status == 200:
                # a failure absorbed (or one a stream reports in its last event) never
                # leaves a wrong or incomplete answer behind a 200
                got = normalized(dechunk(body) if stream else body, stream)
                if stream and got != want and got[-1:] == ["[DONE]"]:
                    # a stream that reports the failure in its last event
                    self.assertIn("error", got[-2], "N=%d: a stream differs without an error event: %r" % (n, got))
                elif stream and got != want:
                    # or is cut short: never a whole-looking stream that differs
                    self.assertEqual(got, want[:len(got)], "N=%d: a stream cut short differs before the cut" % n)
                else:
                    self.assertEqual(got, want, "N=%d" % n)
            else:
                self.assertIsNone(status, "N=%d: %r %r" % (n, status, body[:300]))
            counts["closed" if status is None else str(status)] += 1
            # the next request is served
            ok, data = exchange(self.srv.port, path, obj, 30 * slow)
            self.assertEqual(ok, 200, "N=%d: the next request got %r %r" % (n, ok, data[:300]))
            if not hit:
                last = n
                self.assertEqual(status, 200, "N=%d: no allocation failed, yet %r" % (n, status))
                break
        self.assertIsNotNone(last, "%s needs more than %d loop-thread allocations: raise "
                             "LMSERVE_FAILALLOC_MAX_N" % (name, max_n))
        self.assertGreater(counts["503"], 0, "no 503 at all for %s: %r" % (name, counts))
        FIGURES.append("failalloc: %s: %d loop-thread allocations, each failed once (stride %d): "
                       "%d x 200, %d x 503, %d x closed; next request always 200"
                       % (name, last - 1, stride, counts["200"], counts["503"], counts["closed"]))
        return counts

    def test_1_completion(self):
        self.sweep("completion")

    def test_2_stream(self):
        self.sweep("stream")

    def test_3_chat(self):
        self.sweep("chat")

    def test_4_tokenize(self):
        self.sweep("tokenize")

    def test_9_clean_exit(self):
        """Shut down cleanly after all that (under ASan: no leak)."""
        rc = self.srv.stop()
        self.assertEqual(rc, 0, self.srv.stderr[-3000:])


if __name__ == "__main__":
    unittest.main()
