"""client -- talk to an lmserve (or any OpenAI-style) server over HTTP.

One http.client connection per thread, kept alive between requests and opened
again when the server has closed it.  Every answer that is not 2xx becomes a
ServerError carrying the server's own message (OpenAI error shape
{"error": {"message", "type", "param", "code"}}); a server that cannot be
reached at all becomes Unreachable.  Nothing here retries except a single
reconnect of a stale keep-alive connection; retry policy lives in runner.
"""

import email.utils
import http.client
import json
import socket
import threading
import time
import urllib.parse


class EvalError(Exception):
    """Base of every error lmserve-eval reports to the user."""


class Unreachable(EvalError):
    """The server could not be reached (refused, unknown host, timeout, reset)."""

    def __init__(self, url, reason):
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the server at {url}: {reason}")


class ServerError(EvalError):
    """The server answered with a non-2xx status."""

    def __init__(self, status, message, err_type=None, param=None, code=None,
                 retry_after=None, path=""):
        self.status = status
        self.message = message
        self.type = err_type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.path = path
        detail = f"server answered {status}"
        if path:
            detail += f" to {path}"
        detail += f": {message}"
        extra = [f"{k}={v}" for k, v in (("param", param), ("code", code)) if v]
        if extra:
            detail += f" ({', '.join(extra)})"
        super().__init__(detail)

    def as_record(self):
        """The error as it is written into a results line."""
        return {"status": self.status, "message": self.message, "type": self.type,
                "param": self.param, "code": self.code}


def parse_retry_after(value, now=None):
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date),
    or None if absent or unreadable.  Never negative."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _error_from_body(status, body, headers, path):
    retry_after = parse_retry_after(headers.get("Retry-After"))
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        e = doc["error"]
        return ServerError(status, str(e.get("message") or "(no message)"), e.get("type"),
                           e.get("param"), e.get("code"), retry_after, path)
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return ServerError(status, doc["error"], retry_after=retry_after, path=path)
    msg = text[:300] if text else http.client.responses.get(status, "error")
    return ServerError(status, msg, retry_after=retry_after, path=path)


class Client:
    """Thread-safe: each thread gets its own keep-alive connection."""

    def __init__(self, base_url, api_key=None, timeout=300.0):
        if "://" not in base_url:
            base_url = "http://" + base_url
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise EvalError(f"not an http(s) URL: {base_url!r}")
        self.url = base_url.rstrip("/")
        self.scheme = u.scheme
        self.host = u.hostname
        try:
            self.port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError as e:
            raise EvalError(f"bad port in URL {base_url!r}: {e}") from None
        self.prefix = u.path.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self, fresh=False):
        c = getattr(self._local, "conn", None)
        if c is not None and not fresh:
            return c, True
        if c is not None:
            c.close()
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        c = cls(self.host, self.port, timeout=self.timeout)
        self._local.conn = c
        return c, False

    def close(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def request(self, method, path, payload=None):
        """Send one request; return (status, headers, body bytes).  Raises Unreachable."""
        headers = {"Accept": "application/json", "User-Agent": "lmserve-eval"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        full = self.prefix + path
        for attempt in (0, 1):
            conn, reused = self._conn(fresh=attempt > 0)
            try:
                conn.request(method, full, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, resp.headers, data
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, http.client.BadStatusLine) as e:
                # A kept-alive connection the server had already closed: open a new one once.
                self.close()
                if reused and attempt == 0:
                    continue
                raise Unreachable(self.url, _reason(e)) from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise Unreachable(self.url, _reason(e)) from None
        raise AssertionError("unreachable")

    def call(self, method, path, payload=None):
        """Request and decode the JSON answer; raise ServerError for non-2xx."""
        status, headers, data = self.request(method, path, payload)
        if not 200 <= status < 300:
            raise _error_from_body(status, data, headers, f"{method} {path}")
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            raise ServerError(status, f"answer is not JSON: {data[:200]!r}",
                              path=f"{method} {path}") from None

    def completion(self, body):
        return self.call("POST", "/v1/completions", body)

    def models(self):
        return self.call("GET", "/v1/models")


def _reason(e):
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is `lmserve serve` running there?)"
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror or e})"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    text = str(e) or type(e).__name__
    return text


def preflight(client):
    """Check that the server answers before a run starts.  Returns the model id it
    serves (None if it has no /v1/models).  Raises Unreachable or ServerError
    (for 401/403, a wrong key)."""
    try:
        doc = client.models()
    except ServerError as e:
        if e.status in (401, 403):
            raise
        return None  # a server without /v1/models; the completions will tell
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0].get("id")
    return None
