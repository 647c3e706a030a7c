"""nginx (Debian's) in front of two lmserve processes on loopback, configured from
docker/nginx.conf: streaming passes through unbuffered and load spreads over both."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from lmserve_testlib import REPO as ROOT, Server, require_model, require_program

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_served(srv):
    return sum(v for k, v in srv.metrics().items() if k.startswith("lmserve_requests_total"))


class NginxInFront(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_model()
        require_program(NGINX, "apt-get install nginx-light; `make test` installs it")
        # class cleanups run even when setUpClass fails half-way (tearDownClass would not)
        cls.tmp = tempfile.mkdtemp(prefix="lmserve-nginx-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.backends = []
        cls.addClassCleanup(cls.stop_backends)
        for _ in range(2):
            cls.backends.append(Server(["--parallel", "4"]))
        with open(os.path.join(ROOT, "docker/nginx.conf")) as f:
            site = f.read()
        servers = "".join(f"    server 127.0.0.1:{srv.port};\n" for srv in cls.backends)
        site, n = re.subn(r"    server lmserve:8080[^\n]*\n", servers, site)
        assert n == 1, "docker/nginx.conf no longer has the 'server lmserve:8080' line this test replaces"
        cls.port = free_port()
        assert "listen 8080;" in site, "docker/nginx.conf no longer has the 'listen 8080;' line this test replaces"
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{cls.port};")
        conf = os.path.join(cls.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write("worker_processes 1;\n"
                    f"pid {cls.tmp}/nginx.pid;\n"
                    f"error_log {cls.tmp}/error.log warn;\n"
                    "events { worker_connections 256; }\n"
                    "http {\n"
                    f"  access_log {cls.tmp}/access.log;\n"
                    f"  client_body_temp_path {cls.tmp}/body;\n"
                    f"  proxy_temp_path {cls.tmp}/proxy;\n"
                    f"  fastcgi_temp_path {cls.tmp}/fastcgi;\n"
                    f"  uwsgi_temp_path {cls.tmp}/uwsgi;\n"
                    f"  scgi_temp_path {cls.tmp}/scgi;\n"
                    + site + "\n}\n")
        cls.nginx = subprocess.Popen([NGINX, "-p", cls.tmp, "-c", conf, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cls.addClassCleanup(cls.stop_nginx)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=1).close()
                break
            except OSError:
                if cls.nginx.poll() is not None or time.time() > deadline:
                    cls.nginx.kill()
                    raise AssertionError("nginx did not listen on %d (exit %s):\n%s" % (
                        cls.port, cls.nginx.wait(), cls.nginx.stderr.read().decode(errors="replace")))
                time.sleep(0.05)

    @classmethod
    def stop_nginx(cls):
        if cls.nginx.poll() is None:
            cls.nginx.send_signal(signal.SIGQUIT)
        cls.nginx.wait(10)
        cls.nginx.stderr.close()

    @classmethod
    def stop_backends(cls):
        codes = [srv.stop() for srv in cls.backends]
        assert all(rc == 0 for rc in codes), "backend exit codes %s" % codes

    def post(self, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.addCleanup(c.close)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        return c, c.getresponse()

    def test_greedy_through_nginx(self):
        _, r = self.post({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0})
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(r.read())["choices"][0]["text"],
                         ", there was a little girl named Lily. She loved to play")

    def test_stream_arrives_unbuffered(self):
        # A long stream: its first event must reach the client long before the last one.
        t0 = time.monotonic()
        _, r = self.post({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 1.0,
                          "seed": 7, "stream": True, "logit_bias": {"2": -100}})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type").split(";")[0], "text/event-stream")
        first = None
        events = []
        buf = b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            if first is None:
                first = time.monotonic() - t0
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                events.append(ev.decode())
        total = time.monotonic() - t0
        self.assertEqual(events[-1], "data: [DONE]")
        text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]
                       if json.loads(e[6:])["choices"])
        self.assertGreater(len(text), 100)
        self.assertLess(first, total / 2, f"first bytes after {first:.3f}s of {total:.3f}s: buffered?")

    def test_load_spreads_over_both_backends(self):
        before = [requests_served(srv) for srv in self.backends]
        import concurrent.futures as cf

        def one(i):
            c, r = self.post({"prompt": "Once upon a time", "max_tokens": 32, "seed": i})
            r.read()
            return r.status

        with cf.ThreadPoolExecutor(8) as ex:
            statuses = list(ex.map(one, range(16)))
        self.assertEqual(statuses, [200] * 16)
        after = [requests_served(srv) for srv in self.backends]
        served = [a - b for a, b in zip(after, before)]
        self.assertTrue(all(s >= 1 for s in served), f"per-backend requests: {served}")


if __name__ == "__main__":
    unittest.main()
