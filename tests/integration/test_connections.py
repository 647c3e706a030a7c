"""Connections that end early are released at once (issue 21, item 1).

A client that sends part of a request -- part of the request line, part of the
headers, or the headers and part of the body -- and then closes must not leave the
server's end of the socket in CLOSE-WAIT until the idle timeout (--timeout, 60 s by
default): behind a proxy every client shares one address, and a few hundred such
clients used to fill the per-address limit and lock everyone out.

Checked with the kernel's own view: /proc/net/tcp (and tcp6) lists every socket on
the server's port with its state; /proc/PID/fd counts the server's descriptors.

  - 500 such clients one after the other, then: no CLOSE-WAIT socket on the server's
    port within 1 s, the server's descriptors back to their count before, and a
    normal completion from the same address answered at once;
  - 300 such clients in flight together (all connected and sent, then all closed);
  - clients that close in the later states: a complete request parked waiting for the
    engine, a stream after its first event, a request followed by a half-close.

Run alone: TESTS_ONLY=test_connections make test
"""
import json
import os
import socket
import struct
import sys
import time
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lmserve_testlib import Server, require_model, slow  # noqa: E402

FIGURES = []


def tearDownModule():
    print("\n" + "\n".join(FIGURES), file=sys.stderr, flush=True)


TCP_CLOSE_WAIT = 8  # include/net/tcp_states.h

BODY = json.dumps({"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}).encode()


def headers(content_length):
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % content_length)


# What an interrupted client may have sent before it closed.
PARTIAL = [
    b"",                                                    # connected, nothing sent
    b"GET / HT",                                            # part of a request line
    b"POST /v1/compl",
    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",   # part of the headers
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",         # headers without their blank line
    headers(100),                                           # headers, no body yet
    headers(100) + b'{"pro',                                # headers and part of the body
    headers(len(BODY)) + BODY[:-1],                         # all but the last body byte
]


TCP_LISTEN = 10


def socket_states(port):
    """{state: count} of the TCP sockets whose local port is `port`.  The check must be
    able to fail: /proc/net/tcp (the server listens on 127.0.0.1) has to be readable and
    has to show the server's listening socket, or this raises instead of answering {}."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, st = fields[1], int(fields[3], 16)
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        out[st] = out.get(st, 0) + 1
        except FileNotFoundError:
            if name == "/proc/net/tcp":
                raise AssertionError("/proc/net/tcp is missing: the socket states cannot be checked")
        except OSError as e:  # unreadable
            raise AssertionError("%s cannot be read (%s): the socket states cannot be checked" % (name, e))
    if not out.get(TCP_LISTEN):
        raise AssertionError("the server's listening socket (port %d) is not in /proc/net/tcp: "
                             "the socket states cannot be checked" % port)
    return out


def close_wait(port):
    return socket_states(port).get(TCP_CLOSE_WAIT, 0)


def open_sockets(pid):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def wait_released(srv, sockets_before, within):
    """Seconds until the server's port has no CLOSE-WAIT socket and the server holds no
    more sockets than before (None if that did not happen within `within` s), and the
    CLOSE-WAIT count at the end."""
    t0 = time.monotonic()
    while True:
        cw = close_wait(srv.port)
        if cw == 0 and open_sockets(srv.proc.pid) <= sockets_before:
            return time.monotonic() - t0, 0
        if time.monotonic() - t0 > within:
            return None, cw
        time.sleep(0.02)


def read_answer(s):
    """Read one answer with a Content-Length body from s."""
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(65536)
        if not b:
            return data
        data += b
    head, body = data.split(b"\r\n\r\n", 1)
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(body) < n:
        b = s.recv(65536)
        if not b:
            break
        body += b
    return head + b"\r\n\r\n" + body


def connect(port, src="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


class Released(unittest.TestCase):
    """Default limits (--max-connections, --max-connections-per-ip, --timeout 60); a
    fresh server for each test, so one test's leftovers cannot fail another."""

    def setUp(self):
        require_model()
        self.srv = Server(["--no-log", "--parallel", "16"])
        self.addCleanup(self.stop_server)
        # the server is quiet: no socket but the listening one
        got, cw = wait_released(self.srv, 1, 5 * slow)
        self.assertIsNotNone(got, "server not idle before the test (%d CLOSE-WAIT)" % cw)
        self.before = open_sockets(self.srv.proc.pid)

    def stop_server(self):
        rc = self.srv.stop()
        self.assertEqual(rc, 0, "server exit code %s\n%s" % (rc, self.srv.stderr[-3000:]))

    def completion_at_once(self, src="127.0.0.1"):
        t0 = time.monotonic()
        s = connect(self.srv.port, src)
        try:
            s.sendall(headers(len(BODY)) + BODY)
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 10:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        finally:
            s.close()
        took = time.monotonic() - t0
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), "completion after the hang-ups: %r" % data[:300])
        self.assertLess(took, 1.0 * slow, "completion took %.3f s" % took)
        return took

    def test_500_partial_requests_one_after_another(self):
        t0 = time.monotonic()
        for i in range(500):
            s = connect(self.srv.port)
            if PARTIAL[i % len(PARTIAL)]:
                s.sendall(PARTIAL[i % len(PARTIAL)])
            s.close()
        sent = time.monotonic() - t0
        took, cw = wait_released(self.srv, self.before, 1.0 * slow)
        self.assertIsNotNone(took, "%d server sockets still in CLOSE-WAIT 1 s after 500 clients hung up "
                             "mid-request" % cw)
        c = self.completion_at_once()
        FIGURES.append("connections: 500 partial requests, one after another (%.2f s): all released %.0f ms "
                       "after the last close; completion from the same address %.0f ms"
                       % (sent, took * 1e3, c * 1e3))

    def test_300_partial_requests_in_flight_together(self):
        # all 300 connected first; then each sends its part and closes at once.
        # Three source addresses: 300 from one would pass the per-address limit,
        # which is not what this test is about.
        socks = []
        for i in range(300):
            socks.append(connect(self.srv.port, "127.0.0.%d" % (2 + i % 3)))
        for i, s in enumerate(socks):
            if PARTIAL[i % len(PARTIAL)]:
                s.sendall(PARTIAL[i % len(PARTIAL)])
            if i % 10 == 9:  # a few leave with a reset instead of a FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        took, cw = wait_released(self.srv, self.before, 1.0 * slow)
        self.assertIsNotNone(took, "%d server sockets still in CLOSE-WAIT 1 s after 300 clients in flight "
                             "hung up" % cw)
        c = self.completion_at_once("127.0.0.2")
        FIGURES.append("connections: 300 partial requests in flight together: all released %.0f ms after "
                       "the closes; completion from the same address %.0f ms" % (took * 1e3, c * 1e3))

    def test_closed_in_later_states(self):
        """Complete requests whose clients leave: a keep-alive connection closed after
        its answer, a short request sent with the FIN (answered, then closed), a
        stream after its first event, a parked long completion, a long request sent
        with the FIN."""
        long_body = json.dumps({"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 1.0,
                                "seed": 1, "logit_bias": {"2": -100}}).encode()
        stream_body = json.dumps({"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 1.0,
                                  "seed": 1, "logit_bias": {"2": -100}, "stream": True}).encode()
        tok_body = json.dumps({"content": "Once upon a time"}).encode()
        socks = []
        for i in range(50):
            kind = i // 10     # answered ones first: the long ones would queue them
            s = connect(self.srv.port)
            if kind == 0:      # answered on a keep-alive connection, then closed
                s.sendall(headers(len(BODY)) + BODY)
                self.assertTrue(read_answer(s).startswith(b"HTTP/1.1 200"))
            elif kind == 1:    # a short request and the FIN in one go; the answer is read
                s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(tok_body) + tok_body)
                s.shutdown(socket.SHUT_WR)
                self.assertTrue(read_answer(s).startswith(b"HTTP/1.1 200"))
            elif kind == 2:    # streaming: read the first event, then close
                s.sendall(headers(len(stream_body)) + stream_body)
                first = s.recv(4096)
                self.assertIn(b"200", first.split(b"\r\n", 1)[0])
            elif kind == 3:    # parked: a long non-streamed completion, then close
                s.sendall(headers(len(long_body)) + long_body)
            else:              # a long request and the FIN in one go
                s.sendall(headers(len(long_body)) + long_body)
                s.shutdown(socket.SHUT_WR)
            socks.append(s)
        time.sleep(0.1)
        for s in socks:
            s.close()
        took, cw = wait_released(self.srv, self.before, 1.0 * slow)
        self.assertIsNotNone(took, "%d server sockets still in CLOSE-WAIT 1 s after the clients left" % cw)
        # the abandoned generations were cancelled, not left running
        deadline = time.monotonic() + 2 * slow
        while True:
            m = self.srv.metrics()
            busy = m.get("lmserve_requests_running", 0) + m.get("lmserve_queue_length", 0)
            if busy == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(busy, 0, "abandoned requests still running 2 s after their clients left")
        c = self.completion_at_once()
        FIGURES.append("connections: 50 clients gone in later states (keep-alive, half-closed, streaming, "
                       "parked): released %.0f ms after the closes; completion %.0f ms"
                       % (took * 1e3, c * 1e3))


class SocketStateCheck(unittest.TestCase):
    """The CLOSE-WAIT checks above cannot pass by seeing nothing."""

    def test_unreadable_proc_net_tcp_fails(self):
        real_open = open

        def refuse(name, *a, **k):
            if str(name).startswith("/proc/net/tcp"):
                raise PermissionError(13, "Permission denied", name)
            return real_open(name, *a, **k)
        with mock.patch("builtins.open", refuse):
            with self.assertRaises(AssertionError):
                socket_states(80)

    def test_a_port_nobody_listens_on_fails(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: in no LISTEN row
        try:
            with self.assertRaises(AssertionError):
                socket_states(port)
        finally:
            s.close()


class PerAddressLimit(unittest.TestCase):
    """With the default limits (--max-connections 512, --max-connections-per-ip
    --max-connections / 8), two addresses holding every connection they may cannot
    lock out a third (the per-address default used to be half the total)."""

    def test_two_addresses_cannot_hold_every_slot(self):
        require_model()
        srv = Server(["--no-log", "--parallel", "4"])
        self.addCleanup(srv.stop)
        held = {}
        socks = []
        for src in ("127.0.0.2", "127.0.0.3"):
            mine = []
            for _ in range(300):
                try:
                    s = connect(srv.port, src)
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
                except OSError:
                    break
                mine.append(s)
            socks += mine
            # the server closes what passes the per-address limit at once
            time.sleep(0.3 * slow)
            alive = []
            for s in mine:
                s.setblocking(False)
                try:
                    gone = s.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if not gone:
                    alive.append(s)
            held[src] = len(alive)
        self.addCleanup(lambda: [s.close() for s in socks])
        t0 = time.monotonic()
        s = connect(srv.port, "127.0.0.4")
        try:
            s.sendall(headers(len(BODY)) + BODY)
            answer = read_answer(s)
        except OSError as e:
            answer = repr(e).encode()
        finally:
            s.close()
        took = time.monotonic() - t0
        FIGURES.append("connections: two addresses held %s connections; a third address answered in %.0f ms"
                       % (held, took * 1e3))
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"),
                        "a third address was locked out while two held %s: %r" % (held, answer[:200]))
        self.assertEqual(held, {"127.0.0.2": 64, "127.0.0.3": 64}, "per-address default: 512 / 8")


if __name__ == "__main__":
    unittest.main()
