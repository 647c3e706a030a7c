"""Unit tests for lmserve-eval's runner with a fake client (no server, no sockets):
results in job order whatever order they finish in, 503 retries after Retry-After,
4xx lines recorded, a lost server stops the run with a clean prefix, resumption."""

import contextlib
import io
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

from lmserve_eval.client import ServerError, Unreachable  # noqa: E402
from lmserve_eval.runner import Job, Runner  # noqa: E402
from lmserve_eval.store import JsonlStore  # noqa: E402


class FakeClient:
    """body["delay"] seconds of work; body["fail"] = list of statuses to answer first
    (per job, in order), then success."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}
        self.retry_after = 0.05

    def completion(self, body):
        jid = body["prompt"]
        with self.lock:
            n = self.calls.get(jid, 0)
            self.calls[jid] = n + 1
        plan = body.get("fail", [])
        if n < len(plan):
            status = plan[n]
            if status == "down":
                raise Unreachable("http://fake", "connection refused")
            raise ServerError(status, f"fake {status}", param="top_p" if status == 400 else None,
                              retry_after=self.retry_after if status == 503 else None)
        time.sleep(body.get("delay", 0))
        return {"choices": [{"text": f"<{jid}>", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3}}

    def close(self):
        pass


class RunnerTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.tmp.name, "out.jsonl")
        self.client = FakeClient()
        self.stderr = ""

    def tearDown(self):
        self.tmp.cleanup()

    def run_jobs(self, bodies, **kw):
        jobs = [Job(b["prompt"], b) for b in bodies]
        kw.setdefault("progress", False)
        err = io.StringIO()
        with JsonlStore(self.path) as store, contextlib.redirect_stderr(err):
            summary = Runner(self.client, **kw).run(jobs, store)
        self.stderr = err.getvalue()
        return summary, list(store.records)

    def test_order_kept_when_later_jobs_finish_first(self):
        # Early jobs are slow, late ones fast: completion order is roughly reversed.
        bodies = [{"prompt": f"j{i}", "delay": 0.02 * (8 - i)} for i in range(8)]
        summary, recs = self.run_jobs(bodies, concurrency=8)
        self.assertEqual([r["id"] for r in recs], [f"j{i}" for i in range(8)])
        self.assertEqual([r["text"] for r in recs], [f"<j{i}>" for i in range(8)])
        self.assertEqual(summary.ok, 8)
        self.assertEqual(summary.completion_tokens, 24)
        self.assertEqual(len(summary.latencies), 8)

    def test_503_retried_after_retry_after(self):
        self.client.retry_after = 0.1
        bodies = [{"prompt": "a", "fail": [503, 503]}, {"prompt": "b"}]
        t0 = time.monotonic()
        summary, recs = self.run_jobs(bodies, concurrency=2)
        self.assertGreaterEqual(time.monotonic() - t0, 0.2)  # two waits of Retry-After
        self.assertEqual(summary.retries_503, 2)
        self.assertEqual([r["attempts"] for r in recs], [3, 1])
        self.assertEqual(summary.failed, 0)

    def test_503_beyond_the_retry_limit_stops_the_run(self):
        bodies = [{"prompt": "a", "fail": [503] * 5}]
        summary, recs = self.run_jobs(bodies, retries=2)
        self.assertEqual(recs, [])
        self.assertIsInstance(summary.aborted, ServerError)
        self.assertEqual(summary.aborted.status, 503)

    def test_4xx_line_recorded_and_the_run_goes_on(self):
        bodies = [{"prompt": "a"}, {"prompt": "b", "fail": [400]}, {"prompt": "c"}]
        summary, recs = self.run_jobs(bodies, concurrency=2)
        self.assertEqual([r["id"] for r in recs], ["a", "b", "c"])
        self.assertEqual(recs[1]["error"]["status"], 400)
        self.assertEqual(recs[1]["error"]["param"], "top_p")
        self.assertEqual((summary.ok, summary.failed), (2, 1))
        self.assertIsNone(summary.aborted)
        self.assertIn("id 'b': server answered 400: fake 400 (param=top_p)", self.stderr)

    def test_4xx_aborts_when_asked(self):
        bodies = [{"prompt": "a", "fail": [400]}, {"prompt": "b", "delay": 0.05}]
        summary, recs = self.run_jobs(bodies, concurrency=1, abort_on_error=True)
        self.assertEqual(recs, [])
        self.assertEqual(summary.aborted.status, 400)

    def test_lost_server_stops_with_a_clean_prefix_and_resumes(self):
        bodies = [{"prompt": f"j{i}", "delay": 0.01} for i in range(6)]
        bodies[3]["fail"] = ["down"] * 10
        summary, recs = self.run_jobs(bodies, concurrency=1, connect_retries=1)
        self.assertIsInstance(summary.aborted, Unreachable)
        self.assertEqual([r["id"] for r in recs], ["j0", "j1", "j2"])
        self.assertEqual(summary.retries_conn, 1)
        # The server is back: a rerun does exactly the rest.
        bodies[3]["fail"] = []
        summary, recs = self.run_jobs(bodies, concurrency=3)
        self.assertEqual(summary.skipped, 3)
        self.assertEqual(summary.ok, 3)
        self.assertEqual([r["id"] for r in recs], [f"j{i}" for i in range(6)])
        self.assertEqual(self.client.calls["j0"], 1)  # never asked twice

    def test_rate_limit_spaces_request_starts(self):
        bodies = [{"prompt": f"j{i}"} for i in range(5)]
        t0 = time.monotonic()
        self.run_jobs(bodies, concurrency=5, rate=50)
        self.assertGreaterEqual(time.monotonic() - t0, 4 / 50)


if __name__ == "__main__":
    unittest.main()
