"""bench/loadgen against the real server with stories260K: its JSON report is sane and its
token count agrees with the server's own counter (a smoke test of the load benchmark;
no speed is asserted)."""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import REPO, Server, require_model, require_program, slow  # noqa: E402


def loadgen_bin():
    build = os.environ.get("LMSERVE_BUILD") or os.path.join(REPO, "build", "release")
    return os.path.join(build, "bench", "loadgen")


def run_loadgen(srv, *args):
    """Run loadgen with --json against srv; returns the parsed report."""
    p = subprocess.run([loadgen_bin(), "--url", srv.url, "--json", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120 * slow)
    lines = p.stdout.strip().splitlines()
    if len(lines) != 1:
        raise AssertionError("loadgen printed %r (stderr %r, rc %d)" % (p.stdout, p.stderr, p.returncode))
    return json.loads(lines[0])


def completion_tokens(srv):
    return srv.metrics()["lmserve_completion_tokens_total"]


class Loadgen(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        require_program(loadgen_bin(), "`make test-build` builds it")
        cls.srv = Server(["--parallel", "4", "--queue", "16", "--no-log",
                          "--max-tokens-limit", "100000"])

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "srv", None) is None:
            return
        rc = cls.srv.stop()
        if rc != 0:
            raise AssertionError("lmserve exited with %s:\n%s" % (rc, cls.srv.stderr[-4000:]))

    def test_timed_run_report_is_sane(self):
        """Concurrency 4 for 2 seconds at T=0.8: no errors, tokens counted from the usage
        chunks and equal to what the server says it generated, ordered percentiles."""
        before = completion_tokens(self.srv)
        r = run_loadgen(self.srv, "--concurrency", "4", "--duration", "2", "--max-tokens", "32",
                        "--temperature", "0.8", "--seed", "7")
        after = completion_tokens(self.srv)
        self.assertEqual(r["errors"], 0, r["first_error"])
        self.assertIsNone(r["first_error"])
        self.assertEqual(r["concurrency"], 4)
        self.assertTrue(r["keep_alive"])
        self.assertGreaterEqual(r["requests"], 4)
        self.assertEqual(r["token_source"], "usage")
        self.assertGreater(r["tokens"], 0)
        self.assertLessEqual(r["tokens"], 32 * r["requests"])
        self.assertEqual(r["tokens"], after - before)
        self.assertGreater(r["content_chunks"], 0)
        self.assertLessEqual(r["content_chunks"], r["tokens"])
        self.assertGreater(r["tokens_per_s"], 0)
        self.assertAlmostEqual(r["tokens_per_s"], r["tokens"] / r["duration_s"],
                               delta=0.01 * r["tokens_per_s"] + 1)
        self.assertGreaterEqual(r["duration_s"], 2.0)
        for a in ("ttft_ms", "latency_ms"):
            self.assertGreater(r[a + "_p50"], 0)
            self.assertLessEqual(r[a + "_p50"], r[a + "_p99"])
        self.assertLessEqual(r["ttft_ms_p50"], r["latency_ms_p50"])
        self.assertLessEqual(r["ttft_ms_p99"], r["latency_ms_p99"])
        self.assertGreater(r["stream_tokens_per_s_p50"], 0)

    def test_greedy_counts_are_exact(self):
        """One greedy request per client, new connection each: "Once upon a time" continues
        for 16 tokens without an end of text, so exactly 4 x 16 tokens; the same count from
        content chunks when no usage chunk is asked for."""
        common = ("--concurrency", "4", "--requests-per-client", "1", "--max-tokens", "16",
                  "--temperature", "0", "--prompt", "Once upon a time", "--duration", "60")
        r = run_loadgen(self.srv, *common, "--new-connection")
        self.assertEqual(r["errors"], 0, r["first_error"])
        self.assertFalse(r["keep_alive"])
        self.assertEqual(r["requests"], 4)
        self.assertEqual(r["tokens"], 64)
        self.assertEqual(r["token_source"], "usage")
        r = run_loadgen(self.srv, *common, "--no-usage")
        self.assertEqual(r["errors"], 0, r["first_error"])
        self.assertEqual(r["token_source"], "chunks")
        self.assertEqual(r["tokens"], 64)
        self.assertEqual(r["content_chunks"], 64)

    def test_max_time_abandons_requests_in_flight(self):
        """Requests far longer than --max-time (100000 greedy tokens; the context is
        cropped, so no end of text) are cut at 0.5 s: none completes, all four count as
        abandoned, the tokens they streamed are counted, and the report ends at the stop."""
        r = run_loadgen(self.srv, "--concurrency", "4", "--max-tokens", "100000",
                        "--temperature", "0", "--duration", "0.2", "--max-time", "0.5")
        self.assertEqual(r["errors"], 0, r["first_error"])
        self.assertEqual(r["requests"], 0)
        self.assertEqual(r["abandoned"], 4)
        self.assertGreater(r["tokens"], 0)
        self.assertEqual(r["tokens"], r["content_chunks"])
        self.assertEqual(r["token_source"], "usage+chunks")
        self.assertGreaterEqual(r["duration_s"], 0.5)
        self.assertLess(r["duration_s"], 1.5)
        self.assertIsNone(r["latency_ms_p50"])
        self.assertLessEqual(r["ttft_ms_p50"], r["ttft_ms_p99"])
        # The server drops the abandoned streams and serves the next request.
        status, body = self.srv.post_json("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        self.assertEqual(status, 200, body)

    def test_errors_are_counted(self):
        """A model id the server does not have: every request is a 404, counted, none ok."""
        r = run_loadgen(self.srv, "--concurrency", "2", "--requests-per-client", "3",
                        "--model", "no-such-model", "--max-tokens", "4")
        self.assertEqual(r["requests"], 0)
        self.assertEqual(r["errors"], 6)
        self.assertEqual(r["tokens"], 0)
        self.assertIn("HTTP 404", r["first_error"])
        self.assertIsNone(r["ttft_ms_p50"])


if __name__ == "__main__":
    unittest.main()
