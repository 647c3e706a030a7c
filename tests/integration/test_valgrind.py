"""The server under valgrind (memcheck) through a short mixed workload: completions,
streams, logprobs, n > 1, errors, a client that leaves mid-stream, then SIGTERM.
valgrind must report no errors and no leaked block (definite, indirect or possible).
Skipped in sanitizer builds (ASan and valgrind do not mix)."""
import json
import os
import re
import shutil
import signal
import socket
import unittest

from lmserve_testlib import Server, require_model, require_program

VALGRIND = shutil.which("valgrind")


# scripts/run-tests.sh does not start this suite in sanitizer builds and says so at the end.
@unittest.skipIf(os.environ.get("SANITIZE"), "sanitizer build: valgrind cannot run it")
class ValgrindClean(unittest.TestCase):
    def test_short_workload_has_no_errors_or_leaks(self):
        require_model()
        require_program(VALGRIND or "valgrind", "apt-get install valgrind; `make test` installs it")
        log = os.path.join(os.environ.get("LMSERVE_BUILD", "/tmp"), "test-logs", "valgrind-server.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        # --fair-sched=yes: valgrind runs one thread at a time, and its default lock let the
        # engine thread (busy with a 2000-token stream) keep the CPU for 25-140 s while the
        # loop thread waited to send the first event; with fair scheduling it takes < 1 s.
        wrapper = [VALGRIND, "--quiet", "--fair-sched=yes", "--leak-check=full", "--show-leak-kinds=definite,indirect,possible",
                   "--errors-for-leak-kinds=definite,indirect,possible", "--error-exitcode=99",
                   "--log-file=" + log]
        # `make test` builds this binary without AVX-512, which valgrind cannot decode.
        srv = Server(["--parallel", "4", "--threads", "2", "--no-log"], wrapper=wrapper, ready_timeout=120,
                     binary_path=os.environ.get("LMSERVE_VALGRIND_BIN"))
        try:
            st, body = srv.post_json("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 16,
                                                         "temperature": 0})
            self.assertEqual(st, 200)
            self.assertEqual(body["choices"][0]["text"],
                             ", there was a little girl named Lily. She loved to play")
            st, body = srv.post_json("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8,
                                                         "n": 2, "logprobs": 2, "seed": 3})
            self.assertEqual(st, 200)
            self.assertEqual(len(body["choices"]), 2)
            st, _ = srv.post_json("/v1/completions", {"prompt": "x", "top_p": 7})
            self.assertEqual(st, 400)
            st, _, chat = srv.stream("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                              "max_tokens": 6, "stream": True})
            self.assertEqual((st, chat[-1]), (200, "[DONE]"))
            st, _, events = srv.stream("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8,
                                                    "stream": True, "stream_options": {"include_usage": True}})
            self.assertEqual(st, 200)
            self.assertEqual(events[-1], "[DONE]")
            # A client that leaves in the middle of a long stream.
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=120)
            body = json.dumps({"prompt": "Once upon a time", "max_tokens": 2000, "stream": True,
                               "logit_bias": {"2": -100}}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            got = b""
            while b"data:" not in got:
                chunk = s.recv(4096)
                self.assertTrue(chunk, "stream ended before its first event")
                got += chunk
            s.close()
        finally:
            code = srv.stop(timeout=120)
        with open(log) as f:
            report = f.read()
        self.assertEqual(code, 0, "server exit code %s; valgrind log:\n%s" % (code, report[-3000:]))
        self.assertNotRegex(report, re.compile(r"(definitely|indirectly|possibly) lost: [1-9]"), report[-3000:])
        self.assertNotIn("Invalid read", report)
        self.assertNotIn("Invalid write", report)


if __name__ == "__main__":
    unittest.main()
