"""The container image built from docker/Dockerfile, run with podman (scripts/test-container.sh
builds it and runs this file; not part of `make test`).

Environment: LMSERVE_IMAGE (the tag to test), LMSERVE_VERSION_EXPECTED (what scripts/version.sh
printed for the build), LMSERVE_IMAGE_SIZE (bytes, from podman image inspect), CONTAINERS_CONF.
Every request goes to 127.0.0.1 (ports published on loopback, or compose's port)."""
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = os.environ.get("LMSERVE_IMAGE", "lmserve:test")
VERSION = os.environ.get("LMSERVE_VERSION_EXPECTED", "")
SIZE = int(os.environ.get("LMSERVE_IMAGE_SIZE", "0"))
SIZE_BUDGET = 120_000_000  # bytes: Debian slim (~75 MB) + three libraries + binary + model
MODEL_ID = "lmserve-kjv-1.8M"  # general.name of models/default/model.gguf


def podman(*args, check=True, timeout=180):
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("podman %s failed (%d):\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r


def request(port, method, path, body=None, timeout=60):
    """(status, headers dict with lower-case names, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def sse_events(raw):
    """The payloads of the data: lines of an event stream ("[DONE]" kept as a string)."""
    out = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: "):
            p = line[6:]
            out.append(p if p == "[DONE]" else json.loads(p))
    return out


def wait_ready(port, what, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            status, _, body = request(port, "GET", "/health", timeout=5)
            if status == 200:
                return json.loads(body)
            last = status
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError("%s: /health not 200 after %d s (last: %s)" % (what, timeout, last))


def published_port(name):
    out = podman("port", name, "8080/tcp").stdout.strip().splitlines()[0]
    return int(out.rsplit(":", 1)[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_container(name, *args):
    podman("rm", "-f", name, check=False)
    podman("run", "-d", "--name", name, "-p", "127.0.0.1::8080", IMAGE, *args)
    port = published_port(name)
    wait_ready(port, name)
    return port


class BuildContext(unittest.TestCase):
    """.dockerignore: the build context holds what `make build/lmserve` and the runtime stage
    need (sources, Makefile, VERSION, scripts/version.sh, web/, models/default) and nothing
    else -- not .git, build outputs, the tests' 200 MB of data, benchmarks or docs.  What the
    context really holds is seen by building it: COPY . into a throwaway image and list it."""

    CONTEXT_BUDGET = 12_000_000  # bytes: ~1 MB of sources + the 3.6 MB default model
    NEEDED = ["Makefile", "VERSION", "scripts/version.sh", "cli/main.c", "model/model.h",
              "model/tokenizers/chat_template.c", "server/http.c", "sampler/sampler.h", "train/train.h",
              "web/web.mk", "models/default/model.gguf", "docker/Dockerfile"]
    LEFT_OUT = [".git/", "build/", "tests/", ".ci/", "bench/", "fuzz/", "docs/", "eval-out/", "fuzz-corpus/"]

    def test_context_has_what_the_build_needs_and_nothing_else(self):
        tag = "lmserve-context:test"
        with open(os.path.join(REPO, "build", "context.Containerfile"), "w") as f:
            f.write("FROM docker.io/library/debian:bookworm-slim\nCOPY . /ctx\n")
        try:
            podman("build", "--pull=never", "--network=host", "-f", f.name, "-t", tag, REPO, timeout=300)
            r = podman("run", "--rm", "--entrypoint", "find", tag, "/ctx", "-type", "f", "-printf", "%s %P\\n")
        finally:
            podman("rmi", "-f", tag, check=False)
            os.unlink(f.name)
        files = {}
        for line in r.stdout.splitlines():
            size, path = line.split(" ", 1)
            files[path] = int(size)
        total = sum(files.values())
        print("\nbuild context: %d files, %d bytes" % (len(files), total))
        for need in self.NEEDED:
            self.assertIn(need, files, "the build needs %s" % need)
        for prefix in self.LEFT_OUT:
            self.assertEqual([p for p in files if p.startswith(prefix)][:5], [], "%s is in the context" % prefix)
        self.assertEqual([p for p in files if p.startswith("models/") and not p.startswith("models/default/")], [])
        self.assertEqual([p for p in files if "__pycache__" in p or "node_modules" in p or ".egg-info/" in p
                          or p.startswith("scripts/build/")][:5], [])
        self.assertLess(total, self.CONTEXT_BUDGET, "build context is %d bytes" % total)


class Image(unittest.TestCase):
    """One container of the image, as `docker run -p 8080:8080 lmserve` starts it."""

    name = "lmserve-test-image"

    @classmethod
    def setUpClass(cls):
        cls.port = run_container(cls.name)

    @classmethod
    def tearDownClass(cls):
        podman("rm", "-f", "-t", "2", cls.name, check=False)

    def test_image_is_small(self):
        self.assertGreater(SIZE, 0, "LMSERVE_IMAGE_SIZE not set")
        self.assertLess(SIZE, SIZE_BUDGET, "image is %d bytes" % SIZE)
        # no HTTP client or compiler came along: the runtime stage installs three libraries
        r = podman("run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
                   "command -v curl gcc make || true; dpkg-query -W libmicrohttpd12 libjansson4 libuv1")
        self.assertNotIn("/curl", r.stdout)
        self.assertNotIn("/gcc", r.stdout)
        self.assertEqual(len(r.stdout.strip().splitlines()), 3, r.stdout)

    def test_health_version_and_server_header(self):
        status, headers, body = request(self.port, "GET", "/health")
        self.assertEqual(status, 200)
        h = json.loads(body)
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["version"], VERSION)
        self.assertEqual(headers.get("server"), "lmserve/" + VERSION)
        r = podman("exec", self.name, "lmserve", "--version")
        self.assertEqual(r.stdout.strip(), "lmserve " + VERSION)

    def test_serves_the_default_model_under_its_own_name(self):
        status, _, body = request(self.port, "GET", "/v1/models")
        self.assertEqual(status, 200)
        card = json.loads(body)["data"][0]
        self.assertEqual(card["id"], MODEL_ID)
        self.assertEqual(card["sample_prompt"], "In the beginning")

    def test_completion_and_the_same_text_streamed(self):
        req = {"prompt": "In the beginning", "max_tokens": 12, "temperature": 0}
        status, _, body = request(self.port, "POST", "/v1/completions", req)
        self.assertEqual(status, 200, body)
        j = json.loads(body)
        self.assertEqual(j["model"], MODEL_ID)
        self.assertEqual(j["usage"]["completion_tokens"], 12)
        self.assertEqual(j["choices"][0]["finish_reason"], "length")
        text = j["choices"][0]["text"]
        self.assertTrue(text.strip(), j)
        status, headers, raw = request(self.port, "POST", "/v1/completions", dict(req, stream=True))
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        ev = sse_events(raw)
        self.assertEqual(ev[-1], "[DONE]")
        chunks = ev[:-1]
        self.assertGreaterEqual(len(chunks), 2, "one event per piece of text")
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks), text)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")

    def test_healthcheck(self):
        info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
        hc = info.get("Healthcheck") or info["Config"].get("Healthcheck")
        self.assertEqual(hc["Test"], ["CMD", "lmserve", "health", "--port", "8080"])
        r = podman("healthcheck", "run", self.name, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        state = json.loads(podman("inspect", self.name).stdout)[0]["State"]
        health = state.get("Health") or state.get("Healthcheck")
        self.assertEqual(health["Status"], "healthy")
        # the check fails where no server answers
        r = podman("exec", self.name, "lmserve", "health", "--port", "9", check=False)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)

    def test_runs_as_a_non_root_user(self):
        self.assertEqual(json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]["User"], "lmserve")
        self.assertEqual(podman("exec", self.name, "id", "-u").stdout.strip(), "10001")
        status = podman("exec", self.name, "cat", "/proc/1/status").stdout
        uid = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
        self.assertEqual(uid, ["10001"] * 4, "the server (pid 1) runs as lmserve")
        comm = podman("exec", self.name, "cat", "/proc/1/comm").stdout.strip()
        self.assertEqual(comm, "lmserve")


class Drain(unittest.TestCase):
    """podman stop sends SIGTERM: a stream in flight finishes, then the server exits 0."""

    name = "lmserve-test-drain"

    def tearDown(self):
        podman("rm", "-f", "-t", "2", self.name, check=False)

    def test_sigterm_lets_the_stream_finish_and_exits_0(self):
        port = run_container(self.name)
        n = 600
        got = {}
        first = threading.Event()

        def stream():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request("POST", "/v1/completions", body=json.dumps(
                {"prompt": "In the beginning", "max_tokens": n, "temperature": 0.8, "seed": 7, "stream": True,
                 "stream_options": {"include_usage": True},
                 # past the default model's 128-token window, "shift" keeps a token's cost flat: the
                 # stream lasts a second or two, well inside the server's 10 s drain deadline
                 # ("slide", the default, recomputes the whole window for every token past it)
                 "context_overflow": "shift"}), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            buf = b""
            while True:
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
                if not chunk:
                    break
                buf += chunk
                first.set()
            got["raw"] = buf
            c.close()

        t = threading.Thread(target=stream)
        t.start()
        self.assertTrue(first.wait(30), "no first event")
        t_stop = time.time()
        r = podman("stop", "-t", "30", self.name)
        stop_s = time.time() - t_stop
        t.join(60)
        self.assertFalse(t.is_alive())
        ev = sse_events(got["raw"])
        self.assertEqual(ev[-1], "[DONE]")
        self.assertIn("usage", ev[-2], "the stream ended early: %s" % (ev[-3:],))
        usage = ev[-2]["usage"]
        self.assertEqual(usage["completion_tokens"], n, "the stream in flight ran to its end")
        finish = [e["choices"][0]["finish_reason"] for e in ev[:-2] if e["choices"]]
        self.assertEqual(finish[-1], "length")
        state = json.loads(podman("inspect", self.name).stdout)[0]["State"]
        self.assertEqual(state["ExitCode"], 0, state)
        self.assertLess(stop_s, 30, "stopped by SIGTERM, not by the kill after the grace period")
        logs = podman("logs", self.name).stderr + podman("logs", self.name).stdout
        self.assertIn("lmserve: stopped", logs)


class Compose(unittest.TestCase):
    """docker/compose.yaml as written: two lmserve replicas behind nginx, run by podman-compose
    (containers find each other by the service name through the network's DNS)."""

    project = "lmservetest"

    @classmethod
    def compose(cls, *args, check=True):
        env = dict(os.environ, LMSERVE_PORT=str(cls.port))
        r = subprocess.run(["podman-compose", "-p", cls.project, "-f", os.path.join(REPO, "docker", "compose.yaml"),
                            *args], capture_output=True, text=True, timeout=300, env=env)
        if check and r.returncode != 0:
            raise AssertionError("podman-compose %s failed:\n%s%s" % (" ".join(args), r.stdout, r.stderr))
        return r

    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.compose("down", check=False)
        cls.compose("up", "-d")
        wait_ready(cls.port, "nginx in front of the replicas", timeout=90)

    @classmethod
    def tearDownClass(cls):
        cls.compose("down", check=False)

    def names(self, service):
        out = podman("ps", "-a", "--filter", "label=io.podman.compose.project=" + self.project,
                     "--format", "{{.Names}}").stdout.split()
        return sorted(n for n in out if "_%s_" % service in n)

    def test_two_replicas_behind_nginx_share_the_load_and_stream(self):
        replicas = self.names("lmserve")
        self.assertEqual(len(replicas), 2, replicas)
        self.assertEqual(len(self.names("nginx")), 1)
        req = {"prompt": "In the beginning", "max_tokens": 48, "temperature": 0.8}

        def one(i):
            status, _, body = request(self.port, "POST", "/v1/completions", dict(req, seed=i))
            return status, json.loads(body)

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            results = list(ex.map(one, range(16)))
        for status, j in results:
            self.assertEqual(status, 200, j)
            self.assertEqual(j["usage"]["completion_tokens"], 48)
        served = [podman("logs", n).stderr.count("POST /v1/completions 200") for n in replicas]
        self.assertEqual(sum(served), 16, served)
        self.assertTrue(all(s > 0 for s in served), "least_conn spreads concurrent requests: %s" % served)
        status, headers, raw = request(self.port, "POST", "/v1/completions", dict(req, stream=True))
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        ev = sse_events(raw)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertGreater(len(ev), 10)

    def test_zz_one_replica_down_the_other_answers(self):
        replicas = self.names("lmserve")
        podman("stop", "-t", "10", replicas[0])
        try:
            t0 = time.time()
            for i in range(6):
                status, _, body = request(self.port, "POST", "/v1/completions",
                                          {"prompt": "In the beginning", "max_tokens": 4, "seed": i})
                self.assertEqual(status, 200, body)
            # nginx gives up on the gone replica after proxy_connect_timeout (2 s), not 60 s
            self.assertLess(time.time() - t0, 20)
        finally:
            podman("start", replicas[0], check=False)


if __name__ == "__main__":
    unittest.main()
