"""Large request bodies do not stall other connections (issue 28, item 5).

Parsing a 1 MiB JSON body and tokenizing its text takes a few hundred milliseconds.
When that ran on the loop thread, every other connection waited meanwhile: a stream's
tokens stopped for 0.15-0.37 s per body.  The work now runs on a worker thread.

  - a streamed completion runs while 1 MiB bodies are posted beside it (tokenize with
    pieces, a completion whose prompt is too long for the context, a completion whose
    prompt is a list of token ids, detokenize): the gap between two of its chunks stays
    under 50 ms, and every post gets its right answer;
  - a client that leaves while its large body is being parsed costs nothing: the work
    ends by itself (it is bounded), the server answers the next request and keeps none.

Run alone: TESTS_ONLY=test_loop_stall make test
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, require_model, slow  # noqa: E402

FIGURES = []
GAP_LIMIT = 0.050 * slow
MIB = 1 << 20


def tearDownModule():
    if FIGURES:
        print("\n" + "\n".join(FIGURES), file=sys.stderr, flush=True)


def text_body(key, extra, size):
    """A JSON object whose `key` is a story-like text, padded to about `size` bytes."""
    words = "Once upon a time there was a little girl who liked to play in the park . "
    head = json.dumps(extra)[:-1] + (", " if extra else "") + '"%s": "' % key
    n = size - len(head) - 2
    return (head + (words * (n // len(words) + 1))[:n] + '"}').encode()


def ids_body(key, extra, size):
    """A JSON object whose `key` is a list of token ids, about `size` bytes."""
    head = json.dumps(extra)[:-1] + (", " if extra else "") + '"%s": [' % key
    n = (size - len(head) - 2) // 4
    return (head + ",".join(["403"] * n) + "]}").encode()


def post(port, path, body, timeout):
    """(status, body bytes) of one POST on its own connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (path.encode(), len(body)) + body)
        parts = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            parts.append(b)
    finally:
        s.close()
    out = b"".join(parts)
    head, _, data = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), data


STREAMS = r"""
import json, socket, sys, time
port, stop_file = int(sys.argv[1]), sys.argv[2]
body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1000, "stream": True,
                   "logit_bias": {"2": -100}, "seed": 1}).encode()
gaps, errors, chunks = [], [], 0
import os
while not os.path.exists(stop_file):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    last, tail = None, b""
    try:
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            t = time.monotonic()
            if last is not None:
                gaps.append((t, t - last))
            last, tail = t, tail[-200:] + b
            chunks += 1
            if chunks % 64 == 0 and os.path.exists(stop_file):
                break
    except OSError as e:
        errors.append(repr(e))
    s.close()
    if b"[DONE]" not in tail and not os.path.exists(stop_file):
        errors.append(tail[-200:].decode("utf-8", "replace"))
print(json.dumps({"gaps": gaps, "errors": errors, "chunks": chunks}))
"""


class Streams:
    """Streamed completions one after the other (short enough never to fill the context,
    whose crop recomputes it), read by a process of their own so that the test's own
    work cannot delay them; gaps are measured between chunks of the same stream, on the
    machine's monotonic clock."""

    def __init__(self, port, tmpdir):
        self.stop_file = os.path.join(tmpdir, "stop")
        self.proc = subprocess.Popen([sys.executable, "-c", STREAMS, str(port), self.stop_file],
                                     stdout=subprocess.PIPE)
        self.gaps, self.errors, self.chunks = [], [], 0

    def close(self):
        if self.proc.returncode is not None:
            return
        open(self.stop_file, "w").close()
        out, _ = self.proc.communicate(timeout=60 * slow)
        r = json.loads(out)
        self.gaps, self.errors, self.chunks = r["gaps"], r["errors"], r["chunks"]

    def within(self, t0, t1):
        """Sorted gaps that lie wholly in [t0, t1]."""
        return sorted(gap for t, gap in self.gaps if t0 <= t - gap and t <= t1)

    def overlapping(self, t0, t1):
        """Sorted gaps that overlap [t0, t1] (a stall that began before a post and ended
        after it counts)."""
        return sorted(gap for t, gap in self.gaps if t - gap < t1 and t > t0)


def pct(g, q):
    return g[min(len(g) - 1, int(len(g) * q))] * 1e3


class StreamBesideLargeBodies(unittest.TestCase):
    def test_stream_gap_under_50ms_while_1mib_bodies_are_posted(self):
        """The loop thread's longest callback stays short (its own CPU clock, so a busy
        machine cannot blur it: parsing one of these bodies on it took 150+ ms), and a
        stream's gap between two chunks stays under 50 ms while the bodies are posted.
        The VM is shared: when the same streams without posts (2 s before, and as long as
        the posting took after it) already have gaps over 50 ms, other processes hold the
        cores and a 50 ms gap says nothing about this server; then only the loop-callback
        bound is asserted, and the figures say so.  Before the work moved off the loop
        thread, the loop spent 150+ ms of CPU per body and streams stopped for seconds."""
        require_model()
        srv = Server(["--no-log", "--parallel", "4"])
        self.addCleanup(srv.stop)
        size = MIB - 4096  # under the default --body-limit (1 MiB) with its headers
        cases = [
            ("/tokenize", text_body("content", {"with_pieces": True}, size), 200),
            ("/v1/completions", text_body("prompt", {"max_tokens": 1, "context_overflow": "stop"}, size), 400),
            ("/v1/completions", ids_body("prompt", {"max_tokens": 1, "context_overflow": "stop"}, size), 400),
            ("/detokenize", ids_body("tokens", {}, size), 200),
            ("/v1/chat/completions", text_body("content", {}, size), 400),          # no messages
        ]
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        st = Streams(srv.port, tmp)
        self.addCleanup(st.close)
        deadline = time.monotonic() + 10 * slow
        while srv.metrics().get("lmserve_completion_tokens_total", 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        b0 = time.monotonic()
        time.sleep(2.0)
        b1 = t0 = time.monotonic()
        results = []
        for _ in range(2):
            for path, b, want in cases:
                ts = time.monotonic()
                status, data = post(srv.port, path, b, 60 * slow)
                results.append((path, status, want, time.monotonic() - ts, data[:200]))
        t1 = time.monotonic()
        time.sleep(min(t1 - t0, 20 * slow))  # the baseline's second half: as long as the posting
        t2 = time.monotonic()
        st.close()
        busy_max = srv.metrics()["lmserve_loop_busy_max_seconds"]

        for path, status, want, took, data in results:
            self.assertEqual(status, want, "%s: %r" % (path, data))
        tok = [r for r in results if r[0] == "/tokenize"]
        self.assertTrue(all(r[4].startswith(b'{"tokens":[1,403,') for r in tok), tok[0][4])
        self.assertEqual(st.errors, [], "a stream failed")
        base, during = sorted(st.within(b0, b1) + st.within(t1, t2)), st.overlapping(t0, t1)
        self.assertGreater(len(base), 20, "too few stream chunks without posts")
        # timings under a sanitizer say nothing of the release server: the loop bound only
        quiet = not os.environ.get("SANITIZE") and base[-1] < GAP_LIMIT
        FIGURES.append(
            "loop stall: %d bodies of %d bytes posted in %.2f s (each %.0f-%.0f ms) beside streams; "
            "longest loop callback %.1f ms CPU; stream gaps without posts: %d, median %.1f p99 %.1f max %.1f ms; "
            "while posting: %d, median %.1f p99 %.1f max %.1f ms (%s); load %s"
            % (len(results), size, t1 - t0, min(r[3] for r in results) * 1e3, max(r[3] for r in results) * 1e3,
               busy_max * 1e3, len(base), pct(base, .5), pct(base, .99), base[-1] * 1e3,
               len(during), pct(during or [0], .5), pct(during or [0], .99), (during or [0])[-1] * 1e3,
               "limit 50 ms" if quiet else "not held to 50 ms: a sanitizer build, or the streams' gaps exceed "
               "it without any post (other processes hold the cores); the loop-callback bound is checked",
               " ".join("%.1f" % x for x in os.getloadavg())))
        # a stream starved while posting has few chunks and so few gaps to measure
        self.assertGreater(len(during), 50, "too few stream chunks while posting: " + FIGURES[-1])
        self.assertLess(busy_max, 0.020 * slow, FIGURES[-1])
        if quiet:
            self.assertLess(during[-1], GAP_LIMIT, FIGURES[-1])


class LeavingDuringTheWork(unittest.TestCase):
    def test_client_that_leaves_while_its_body_is_parsed(self):
        require_model()
        srv = Server(["--no-log"])
        self.addCleanup(srv.stop)
        body = text_body("content", {"with_pieces": True}, MIB - 4096)
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.02)
            s.close()
        status, data = srv.post_json("/tokenize", {"content": "Once upon a time"})
        self.assertEqual(status, 200, data)
        self.assertEqual(data["tokens"], [1, 403, 407, 261, 378])
        # the abandoned ones end (answered into a closed socket: 200, or 499 when the
        # server sees the close first), nothing is left in flight; each parse takes a
        # while on a busy machine (the worker threads yield to everything else)
        deadline = time.monotonic() + 120 * slow
        ended, polls = 0, 0
        while time.monotonic() < deadline:
            m = srv.metrics()
            ended = (m.get('lmserve_requests_total{status="200"}', 0) + m.get('lmserve_requests_total{status="499"}', 0)
                     - polls)  # each earlier /metrics is a 200 too
            polls += 1
            if ended >= 6:  # the 5 abandoned ones and the /tokenize above (/metrics counts after it answers)
                break
            time.sleep(0.1)
        self.assertEqual(ended, 6, "abandoned requests not ended")
        self.assertEqual(srv.stop(), 0, srv.stderr)


if __name__ == "__main__":
    unittest.main()
