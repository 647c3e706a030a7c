"""Security findings of issue 28, each reproduced against the real server.

  - framing (request smuggling): duplicate Content-Length, Content-Length with
    Transfer-Encoding, a transfer coding other than chunked, Transfer-Encoding in an
    HTTP/1.0 request, whitespace between a header's name and its colon: 400 or 501, and
    the connection closes (a request pipelined behind it is never answered);
  - log injection: a URL that decodes to a newline and an escape sequence cannot
    forge a log line or put a control byte on the terminal; long values are cut;
  - an empty API key is refused at startup, not taken as "no authentication";
  - a server on loopback answers only Host names that are loopback (DNS rebinding),
    unless --allowed-hosts names more; a POST carrying a foreign Origin is refused
    unless --cors-origin allows it.

Run alone: TESTS_ONLY=test_security make test
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, binary, model_path, require_model, slow  # noqa: E402

BODY = b'{"content": "Once upon a time"}'


def exchange(port, data, wait=3.0):
    """Send data on a fresh connection and read until the server closes it or `wait`
    seconds pass; (statuses of the answers, closed by the server?, raw bytes)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(wait * slow)
    out, closed = b"", False
    try:
        s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                closed = True
                break
            out += b
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        s.close()
    return [int(x) for x in re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)], closed, out


def tokenize_request(headers, body=BODY, version=b"HTTP/1.1"):
    return b"POST /tokenize " + version + b"\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body


def chunked(body):
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


NEXT = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # pipelined behind each case

SMUGGLING = {
    "two Content-Length, different": (tokenize_request(
        b"Content-Length: %d\r\nContent-Length: 0\r\n" % len(BODY)), 400),
    "two Content-Length, equal": (tokenize_request(
        b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(BODY), len(BODY))), 400),
    "Content-Length and chunked": (tokenize_request(
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunked(BODY)), 400),
    "Transfer-Encoding gzip, chunked": (tokenize_request(
        b"Transfer-Encoding: gzip, chunked\r\n", chunked(BODY)), 501),
    "Transfer-Encoding identity": (tokenize_request(
        b"Transfer-Encoding: identity\r\n"), 501),
    "two Transfer-Encoding lines": (tokenize_request(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked(BODY)), 501),
    "Transfer-Encoding in HTTP/1.0": (tokenize_request(
        b"Transfer-Encoding: chunked\r\n", chunked(BODY), b"HTTP/1.0"), 400),
    "space before the colon (Transfer-Encoding)": (tokenize_request(
        b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n" % len(BODY)), 400),
    "space before the colon (Content-Length)": (tokenize_request(
        b"Content-Length : %d\r\n" % len(BODY)), 400),
}


class Framing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        cls.srv = Server(["--no-log"])

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.stderr[-3000:]

    def test_smuggling_payloads_are_refused_and_the_connection_closed(self):
        for name, (req, status) in SMUGGLING.items():
            with self.subTest(name):
                statuses, closed, out = exchange(self.srv.port, req + NEXT)
                self.assertEqual(statuses, [status], "%s: answers %r" % (name, out[:400]))
                self.assertTrue(closed, "%s: the connection stayed open" % name)
                body = json.loads(out.split(b"\r\n\r\n", 1)[1].split(b"\r\n0\r\n")[0]
                                  if b"chunked" in out.split(b"\r\n\r\n", 1)[0].lower()
                                  else out.split(b"\r\n\r\n", 1)[1])
                self.assertIn("error", body)

    def test_well_framed_requests_still_work(self):
        for name, req in {
            "Content-Length": tokenize_request(b"Content-Length: %d\r\n" % len(BODY)),
            "chunked": tokenize_request(b"Transfer-Encoding: chunked\r\n", chunked(BODY)),
            "Chunked (any case)": tokenize_request(b"Transfer-Encoding: Chunked\r\n", chunked(BODY)),
        }.items():
            with self.subTest(name):
                statuses, _, out = exchange(self.srv.port, req + NEXT, wait=1.0)
                self.assertEqual(statuses, [200, 200], "%s: %r" % (name, out[:400]))


class Logs(unittest.TestCase):
    def check_log(self, srv, headers=b""):
        self.addCleanup(srv.stop)
        forged = b"/x%0almserve:%20model%20FORGED%1b%5b31m"
        long_url = b"/" + b"%0a" * 3000
        exchange(srv.port, b"GET " + forged + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n", 1)
        exchange(srv.port, b"GET " + long_url + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n", 1)
        exchange(srv.port, b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
                 + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 1)
        self.assertIsNotNone(srv.wait_for_log(r"lmserve: POST /v1/completions 400", 5))
        srv.stop()
        log = srv.stderr
        self.assertNotIn("\x1b", log, "a raw escape byte reached the log")
        for line in log.splitlines():
            self.assertFalse(line.startswith("lmserve: model FORGED"), "forged log line: %r" % line)
            self.assertLess(len(line), 600, "log line of %d characters" % len(line))
        self.assertIn(r"/x\x0almserve: model FORGED\x1b[31m", log)
        return log

    def test_no_key(self):
        require_model()
        log = self.check_log(Server([]))
        self.assertRegex(log, r"lmserve: GET /x\\x0almserve: model FORGED\\x1b\[31m 404 ")

    def test_with_key_401_is_logged_escaped(self):
        require_model()
        log = self.check_log(Server(["--api-key", "k"]))
        self.assertRegex(log, r"lmserve: GET /x\\x0almserve: model FORGED\\x1b\[31m (401|404) ")


class EmptyKey(unittest.TestCase):
    def start(self, args, env=None):
        e = dict(os.environ)
        e.pop("LMSERVE_API_KEY", None)
        e.update(env or {})
        return subprocess.run([binary(), "serve", "--model", model_path(), "--port", "0"] + args,
                              env=e, capture_output=True, text=True, timeout=30 * slow)

    def test_empty_api_key_is_refused(self):
        require_model()
        for args, env in (([ "--api-key", ""], None), (["--api-key="], None),
                          ([], {"LMSERVE_API_KEY": ""}),
                          (["--api-key", ""], {"LMSERVE_API_KEY": "from-env"})):
            with self.subTest(args=args, env=env):
                p = self.start(args, env)
                self.assertNotEqual(p.returncode, 0, "started with an empty key: %s" % p.stderr[-500:])
                self.assertIn("empty", p.stderr)
                self.assertNotIn("listening on", p.stderr)


def post_text_plain(port, host, origin=None, path=b"/v1/completions"):
    body = b'{"prompt": "Once upon a time", "max_tokens": 2, "temperature": 0}'
    h = b"Host: " + host.encode() + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
    if origin:
        h += b"Origin: " + origin.encode() + b"\r\n"
    statuses, _, out = exchange(port, b"POST " + path + b" HTTP/1.1\r\n" + h + b"Connection: close\r\n\r\n"
                                + body, 10)
    return statuses[0] if statuses else None, out


def get(port, host, path=b"/v1/models"):
    statuses, _, out = exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: " + host.encode()
                                + b"\r\nConnection: close\r\n\r\n", 10)
    return statuses[0] if statuses else None, out


class Loopback(unittest.TestCase):
    """The default server listens on 127.0.0.1."""

    @classmethod
    def setUpClass(cls):
        require_model()
        cls.srv = Server(["--no-log"])

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.stderr[-3000:]

    def test_foreign_host_is_refused(self):
        p = self.srv.port
        for host in ("attacker.example", "attacker.example:%d" % p, "10.0.0.1:%d" % p, "localhost.attacker.example",
                     "127.0.0.1.nip.io:%d" % p):
            with self.subTest(host):
                status, out = get(p, host)
                self.assertEqual(status, 403, out[:300])
                self.assertEqual(json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"], "host_not_allowed")
                status, out = post_text_plain(p, host)
                self.assertEqual(status, 403, out[:300])

    def test_loopback_hosts_are_served(self):
        p = self.srv.port
        for host in ("127.0.0.1:%d" % p, "localhost:%d" % p, "LOCALHOST", "127.1.2.3:%d" % p, "[::1]:%d" % p,
                     "app.localhost:%d" % p):
            with self.subTest(host):
                self.assertEqual(get(p, host)[0], 200)

    def test_cross_site_text_plain_post_is_refused(self):
        p = self.srv.port
        host = "127.0.0.1:%d" % p
        for origin in ("https://attacker.example", "http://127.0.0.1:1", "null", "http://localhost:%d" % p):
            with self.subTest(origin):
                status, out = post_text_plain(p, host, origin)
                self.assertEqual(status, 403, out[:300])
                self.assertEqual(json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"], "cross_origin")
        status, out = post_text_plain(p, host, origin="https://attacker.example", path=b"/tokenize")
        self.assertEqual(status, 403, out[:300])

    def test_same_origin_and_no_origin_are_served(self):
        p = self.srv.port
        host = "127.0.0.1:%d" % p
        self.assertEqual(post_text_plain(p, host)[0], 200)                          # curl, SDKs: no Origin
        self.assertEqual(post_text_plain(p, host, "http://127.0.0.1:%d" % p)[0], 200)  # the playground
        # a GET with a foreign Origin changes nothing and the browser will not show it
        # the answer without CORS headers: served
        status, out = exchange(p, b"GET /v1/models HTTP/1.1\r\nHost: " + host.encode()
                               + b"\r\nOrigin: https://attacker.example\r\nConnection: close\r\n\r\n", 10)[0:3:2]
        self.assertEqual(status, [200], out[:300])


class Widened(unittest.TestCase):
    def test_allowed_hosts_and_cors_origin(self):
        require_model()
        srv = Server(["--no-log", "--allowed-hosts", "lm.example,.corp.example",
                      "--cors-origin", "https://app.example"])
        self.addCleanup(srv.stop)
        p = srv.port
        self.assertEqual(get(p, "lm.example")[0], 200)
        self.assertEqual(get(p, "LM.example:%d" % p)[0], 200)
        self.assertEqual(get(p, "a.corp.example")[0], 200)
        self.assertEqual(get(p, "corp.example")[0], 200)
        self.assertEqual(get(p, "127.0.0.1:%d" % p)[0], 200)  # loopback names stay allowed
        self.assertEqual(get(p, "attacker.example")[0], 403)
        self.assertEqual(get(p, "xcorp.example")[0], 403)
        self.assertEqual(post_text_plain(p, "lm.example", "https://app.example")[0], 200)
        self.assertEqual(post_text_plain(p, "lm.example", "https://other.example")[0], 403)

    def test_any_host_and_any_origin(self):
        require_model()
        srv = Server(["--no-log", "--allowed-hosts", "*", "--cors-origin", "*"])
        self.addCleanup(srv.stop)
        p = srv.port
        self.assertEqual(get(p, "attacker.example")[0], 200)
        self.assertEqual(post_text_plain(p, "attacker.example", "https://attacker.example")[0], 200)

    def test_not_loopback_no_host_check_by_default(self):
        require_model()
        srv = Server(["--no-log"], start=False)
        srv.host = "0.0.0.0"
        srv.start()
        srv.host = "127.0.0.1"
        self.addCleanup(srv.stop)
        self.assertEqual(get(srv.port, "lm.example")[0], 200)
        # the Origin check still holds
        self.assertEqual(post_text_plain(srv.port, "lm.example", "https://attacker.example")[0], 403)


if __name__ == "__main__":
    unittest.main()
