"""Soak: many mixed requests through the real server (issues 11 and 21).

A seeded mix of completions (streamed and not, n > 1, logprobs, echo scoring),
chat, tokenize/detokenize, client errors (400/404/405), cancellations (a stream
dropped after its first event) and hang-ups (part of a request -- request line,
headers, part of the body -- or a whole request, then close; some with a reset)
runs with bounded concurrency (8 client threads) against the default connection
limits and idle timeout (60 s).  Checked: every answer has the expected status and
shape; no well-behaved client is ever reset or refused; after a warm-up, the
server's resident memory stays within 20 MiB (bound below); within 2 s of the end
its file descriptors are back to their count before the first request, its threads
to theirs; /metrics returns to idle with every request counted.  The RSS series is
printed ("soak: ... RSS KiB ...").

Size: LMSERVE_SOAK_REQUESTS (default 2000; 300 under SANITIZE, where ASan's
quarantine makes RSS meaningless: it is reported, not bounded).
`make soak` runs the full 10,000.
"""
import concurrent.futures
import http.client
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, require_model, slow  # noqa: E402

# Figures are collected and printed when the module ends (printing during a test
# would split unittest's "... ok" line, which run-tests.sh counts).
FIGURES = []


def figure(line):
    FIGURES.append(line)


def tearDownModule():
    print("\n" + "\n".join(FIGURES), file=sys.stderr, flush=True)


SANITIZED = bool(os.environ.get("SANITIZE"))
N = int(os.environ.get("LMSERVE_SOAK_REQUESTS") or (300 if SANITIZED else 2000))
WORKERS = 8
RSS_BOUND_KIB = 20 * 1024  # growth allowed after warm-up (release builds)
FDS_BACK_WITHIN = 2.0  # seconds after the last request (scaled by `slow`)
# what a well-behaved client must never see
RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)
PROMPTS = ["Once upon a time", "Lily and Ben", "The cat sat", "One day, a little", "Tom had a red ball",
           "caf\u00e9 \u4e2d\u6587 \U0001F600", " ", "a" * 300]


def proc_counts(pid):
    """RSS (KiB), threads, and open fds (and how many of them are sockets) of the server."""
    kinds = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            kinds.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            pass
    with open("/proc/%d/status" % pid) as f:
        st = dict(line.split(":", 1) for line in f)
    return {"rss": int(st["VmRSS"].split()[0]), "threads": int(st["Threads"]), "fds": len(kinds),
            "sockets": sum(k.startswith("socket:") for k in kinds)}


def fds_back(pid, count, within):
    """Seconds until the server has at most `count` fds (None if not within `within` s),
    and its counts then."""
    t0 = time.monotonic()
    while True:
        c = proc_counts(pid)
        if c["fds"] <= count:
            return time.monotonic() - t0, c
        if time.monotonic() - t0 > within:
            return None, c
        time.sleep(0.02)


# What a client that hangs up may have sent first (then it closes).
def partial_requests(body):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return [b"", b"POST /v1/compl", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc", head,
            head + body[:len(body) // 2], head + body]


class Soak(unittest.TestCase):
    def test_soak(self):
        require_model()
        # --cache-mb 4: the prefix cache keeps finished requests' KV entries up to its budget
        # (64 MiB by default); a small one is filled and evicted all through the soak, so RSS
        # growth past it would be a leak
        srv = Server(["--parallel", "8", "--queue", "256", "--no-log", "--max-tokens-limit", "256",
                      "--cache-mb", "4"])
        try:
            self.run_soak(srv)
        finally:
            rc = srv.stop()
        self.assertEqual(rc, 0, srv.stderr[-3000:])

    # ---- one request of each kind; returns a short tag for the tally ----------------------

    def one(self, srv, i):
        """One request; returns its kind, or "reset: ..." if a well-behaved request was
        reset or refused."""
        rnd = random.Random(1000 + i)  # each request reproducible on its own
        kind = rnd.choices(["plain", "stream", "chat", "multi", "echo", "tok", "error", "cancel", "hangup"],
                           [25, 20, 10, 10, 5, 10, 10, 5, 10])[0]
        try:
            self.one_kind(srv, i, rnd, kind)
        except RESETS as e:
            return "reset: %s %r" % (kind, e)
        return kind

    def one_kind(self, srv, i, rnd, kind):
        prompt = rnd.choice(PROMPTS)
        if kind == "hangup":  # a hostile or unlucky client: part of a request, then close
            body = json.dumps({"prompt": prompt, "max_tokens": 64, "seed": i}).encode()
            s = socket.create_connection((srv.host, srv.port), timeout=30 * slow)
            try:
                part = rnd.choice(partial_requests(body))
                if part:
                    s.sendall(part)
                if rnd.random() < 0.2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except RESETS:
                pass  # the server may close first (it has an answer for a bad request)
            s.close()
            return
        if kind == "plain":
            mt = rnd.randint(0, 16)
            status, r = srv.post_json("/v1/completions", {
                "prompt": prompt, "max_tokens": mt, "temperature": rnd.choice([0, 0.8, 1.2]),
                "top_k": rnd.choice([0, 10]), "top_p": rnd.choice([1, 0.9]), "seed": i,
                "stop": rnd.choice([None, "\n", ["the", "."]])})
            self.assertEqual(status, 200, r)
            self.assertEqual(len(r["choices"]), 1)
            self.assertLessEqual(r["usage"]["completion_tokens"], mt)
        elif kind == "stream":
            status, _, ev = srv.stream("/v1/completions", {
                "prompt": prompt, "max_tokens": rnd.randint(1, 24), "stream": True, "seed": i,
                "stream_options": {"include_usage": True}})
            self.assertEqual(status, 200, ev)
            self.assertEqual(ev[-1], "[DONE]")
            self.assertEqual(ev[-2]["choices"], [])
        elif kind == "chat":
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": rnd.randint(1, 12),
                    "seed": i}
            if rnd.random() < 0.5:
                body["stream"] = True
                status, _, ev = srv.stream("/v1/chat/completions", body)
                self.assertEqual(status, 200, ev)
                self.assertEqual(ev[-1], "[DONE]")
            else:
                status, r = srv.post_json("/v1/chat/completions", body)
                self.assertEqual(status, 200, r)
                self.assertEqual(r["object"], "chat.completion")
        elif kind == "multi":
            n = rnd.randint(2, 3)
            status, r = srv.post_json("/v1/completions", {
                "prompt": prompt, "max_tokens": 8, "n": n, "logprobs": rnd.randint(0, 5), "seed": i})
            self.assertEqual(status, 200, r)
            self.assertEqual(sorted(c["index"] for c in r["choices"]), list(range(n)))
            for c in r["choices"]:
                self.assertEqual(len(c["logprobs"]["tokens"]), len(c["logprobs"]["token_logprobs"]))
        elif kind == "echo":
            status, r = srv.post_json("/v1/completions", {
                "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1})
            self.assertEqual(status, 200, r)
            self.assertEqual(r["choices"][0]["text"], prompt)
        elif kind == "tok":
            status, t = srv.post_json("/tokenize", {"content": prompt})
            self.assertEqual(status, 200, t)
            status, d = srv.post_json("/detokenize", {"tokens": t["tokens"]})
            self.assertEqual(status, 200, d)
        elif kind == "error":
            case = rnd.randint(0, 4)
            if case == 0:
                status, _, _ = srv.request("POST", "/v1/completions", '{"prompt": "x", ', timeout=30)
                self.assertEqual(status, 400)
            elif case == 1:
                status, r = srv.post_json("/v1/completions", {"prompt": prompt, "top_p": 2})
                self.assertEqual((status, r["error"]["param"]), (400, "top_p"))
            elif case == 2:
                status, r = srv.post_json("/v1/completions", {"prompt": prompt, "model": "nope"})
                self.assertEqual(status, 404)
            elif case == 3:
                status, _, _ = srv.request("GET", "/v1/nothing-here")
                self.assertEqual(status, 404)
            else:
                status, _, _ = srv.request("DELETE", "/v1/completions")
                self.assertEqual(status, 405)
        else:  # cancel: read the first event of a long stream, then drop the connection
            body = json.dumps({"prompt": prompt, "max_tokens": 256, "stream": True, "seed": i}).encode()
            s = socket.create_connection((srv.host, srv.port), timeout=30 * slow)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            got = b""
            while b"data: " not in got:
                b = s.recv(4096)
                if not b:
                    break
                got += b
            s.close()
            self.assertIn(b"data: ", got)

    def run_soak(self, srv):
        pid = srv.proc.pid
        warm = max(50, N // 10)
        tally, samples, resets = {}, [], []
        lock = threading.Lock()
        start = proc_counts(pid)  # before any request: the listening socket and the loop's own
        t0 = time.time()

        def batch(lo, hi):
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
                for k in ex.map(lambda i: self.one(srv, i), range(lo, hi)):
                    with lock:
                        if k.startswith("reset"):
                            resets.append(k)
                            k = "reset"
                        tally[k] = tally.get(k, 0) + 1

        batch(0, warm)
        self.wait_idle(srv)
        c0 = proc_counts(pid)
        samples.append(c0["rss"])
        step = max(1, (N - warm) // 8)
        for lo in range(warm, N, step):
            batch(lo, min(N, lo + step))
            samples.append(proc_counts(pid)["rss"])
        took = time.time() - t0
        back, c1 = fds_back(pid, start["fds"], FDS_BACK_WITHIN * slow)
        m = self.wait_idle(srv)
        answered = sum(v for k, v in m.items() if k.startswith("lmserve_requests_total"))
        figure("soak: %d requests in %.1fs (%s); RSS KiB after warm-up %d -> end %d (%+d), series %s; "
               "fds %d at start, %d after warm-up, back to %d %s after the end; threads %d -> %d; "
               "well-behaved clients reset: %d" % (
                   N, took, ", ".join("%s %d" % kv for kv in sorted(tally.items())), c0["rss"], c1["rss"],
                   c1["rss"] - c0["rss"], samples, start["fds"], c0["fds"], c1["fds"],
                   "in %.0f ms" % (1e3 * back) if back is not None else "NOT within %.0f s" % (FDS_BACK_WITHIN * slow),
                   c0["threads"], c1["threads"], len(resets)))
        self.assertEqual(sum(tally.values()), N)
        self.assertEqual(resets, [], "well-behaved clients were reset or refused")
        self.assertIsNotNone(back, "file descriptors not back to their start count (%d) within %.0f s of the "
                             "end: %d (%d sockets)" % (start["fds"], FDS_BACK_WITHIN * slow, c1["fds"],
                                                        c1["sockets"]))
        self.assertEqual(c1["threads"], c0["threads"], "threads leaked")
        # every request but the hang-ups, and every /metrics poll, is counted once
        self.assertGreaterEqual(answered, N - tally.get("hangup", 0))
        if not SANITIZED:
            self.assertLess(c1["rss"] - c0["rss"], RSS_BOUND_KIB, "RSS grew after warm-up: %s" % samples)

    def wait_idle(self, srv, wait=30.0):
        deadline = time.time() + wait * slow
        while True:
            m = srv.metrics()
            if m.get("lmserve_requests_running", 0) == 0 and m.get("lmserve_queue_length", 0) == 0 \
                    and m.get("lmserve_sequences_running", 0) == 0:
                return m
            self.assertLess(time.time(), deadline, "metrics not idle: %r" % m)
            time.sleep(0.1)


if __name__ == "__main__":
    unittest.main()
