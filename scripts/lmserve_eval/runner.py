"""runner -- N concurrent requests, results written in input order, resumable.

A job is (id, body, extra): `body` is sent to /v1/completions, `extra` is merged
into the result line.  Worker threads (each with its own keep-alive connection)
take jobs from a queue; the main thread writes finished results to the store
strictly in job order (a reorder buffer holds results that finish early), so the
results file is always a prefix of the pending jobs: an interrupted run leaves
no holes and a rerun appends exactly the rest.

Retries: 503 and 429 are retried after the server's Retry-After (1 s if absent,
capped by max_wait), up to `retries` times; a lost connection or another 5xx
is retried with exponential back-off up to `connect_retries` times.  A 4xx is
the server's verdict on that line: it is written as an error line (and not
retried by a rerun) unless `abort_on_error` is set.  401/403/404/405 concern
every line, so they always abort.  When a job cannot be completed (server gone)
the run stops taking new jobs, writes what is done, and reports the error.
"""

import queue
import random
import sys
import threading
import time

from .client import ServerError, Unreachable
from . import metrics

_ABORT_STATUSES = (401, 403, 404, 405)


class RunAborted(Exception):
    def __init__(self, cause):
        self.cause = cause
        super().__init__(str(cause))


class Summary:
    def __init__(self, label):
        self.label = label
        self.total = 0          # jobs asked for
        self.skipped = 0        # already in the results file
        self.ok = 0
        self.failed = 0
        self.retries_503 = 0
        self.retries_conn = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latencies = []
        self.wall = 0.0
        self.aborted = None     # the error that stopped the run, if any
        self.interrupted = False

    def as_dict(self):
        lat = self.latencies
        tps = self.completion_tokens / self.wall if self.wall > 0 else None
        return {
            "label": self.label, "jobs": self.total, "skipped_already_done": self.skipped,
            "requests": self.ok + self.failed, "ok": self.ok, "failed": self.failed,
            "retries_after_503": self.retries_503, "retries_after_connection_error": self.retries_conn,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "wall_seconds": round(self.wall, 3),
            "completion_tokens_per_second": round(tps, 1) if tps is not None else None,
            "latency_p50": _r(metrics.percentile(lat, 50)),
            "latency_p95": _r(metrics.percentile(lat, 95)),
            "latency_p99": _r(metrics.percentile(lat, 99)),
            "aborted": str(self.aborted) if self.aborted else None,
            "interrupted": self.interrupted,
        }

    def text(self):
        d = self.as_dict()
        lines = [f"{self.label}: {d['requests']} requests ({d['ok']} ok, {d['failed']} failed)"
                 + (f", {self.skipped} already done" if self.skipped else "")
                 + (f", {d['jobs'] - self.skipped - d['requests']} not run" if d['jobs'] - self.skipped - d['requests'] else "")]
        if self.retries_503 or self.retries_conn:
            lines.append(f"  retries: {self.retries_503} after 503/429, "
                         f"{self.retries_conn} after connection errors")
        tps = d["completion_tokens_per_second"]
        lines.append(f"  tokens: {self.prompt_tokens} prompt, {self.completion_tokens} completion"
                     f" in {self.wall:.2f} s" + (f" = {tps:.1f} completion tokens/s" if tps else ""))
        if self.latencies:
            lines.append(f"  latency: p50 {_ms(d['latency_p50'])}  p95 {_ms(d['latency_p95'])}"
                         f"  p99 {_ms(d['latency_p99'])}")
        return "\n".join(lines)


def _r(x):
    return None if x is None else round(x, 4)


def _ms(s):
    return "-" if s is None else f"{s * 1000:.1f} ms"


class Job:
    __slots__ = ("id", "body", "extra")

    def __init__(self, job_id, body, extra=None):
        self.id = job_id
        self.body = body
        self.extra = extra or {}


def completion_record(job, resp, latency, attempts):
    """The result line for a completion answer."""
    choices = resp.get("choices") or [{}]
    c0 = choices[0]
    usage = resp.get("usage") or {}
    rec = {"id": job.id}
    rec.update(job.extra)
    rec.update({
        "text": c0.get("text", ""),
        "finish_reason": c0.get("finish_reason"),
        "tokens": usage.get("completion_tokens"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "latency": round(latency, 4),
        "seed": job.body.get("seed"),
        "attempts": attempts,
    })
    if c0.get("logprobs") is not None:
        rec["logprobs"] = c0["logprobs"]
    if len(choices) > 1:
        rec["choices"] = [{"text": c.get("text", ""), "finish_reason": c.get("finish_reason"),
                           **({"logprobs": c["logprobs"]} if c.get("logprobs") is not None else {})}
                          for c in choices]
    return rec


class Runner:
    def __init__(self, client, concurrency=4, retries=30, connect_retries=3, max_wait=60.0,
                 rate=None, progress=True, abort_on_error=False, make_record=completion_record):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.client = client
        self.concurrency = concurrency
        self.retries = retries
        self.connect_retries = connect_retries
        self.max_wait = max_wait
        self.rate = rate
        self.progress = progress
        self.abort_on_error = abort_on_error
        self.make_record = make_record
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next_start = 0.0

    # -- one request with its retries (worker thread) --
    def _pace(self):
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 1.0 / self.rate
        if start > now:
            time.sleep(start - now)

    def _call(self, job, summary):
        n503 = nconn = 0
        attempts = 0
        while True:
            if self._stop.is_set():
                return None
            self._pace()
            attempts += 1
            t0 = time.monotonic()
            try:
                resp = self.client.completion(job.body)
                return resp, time.monotonic() - t0, attempts
            except ServerError as e:
                if e.status in (503, 429) and n503 < self.retries:
                    n503 += 1
                    with self._lock:
                        summary.retries_503 += 1
                    wait = e.retry_after if e.retry_after is not None else 1.0
                    self._sleep(min(wait, self.max_wait) + random.uniform(0, 0.05))
                    continue
                if e.status >= 500 and e.status != 503 and nconn < self.connect_retries:
                    nconn += 1
                    with self._lock:
                        summary.retries_conn += 1
                    self._sleep(min(0.25 * 2 ** nconn, self.max_wait))
                    continue
                raise
            except Unreachable:
                if nconn < self.connect_retries:
                    nconn += 1
                    with self._lock:
                        summary.retries_conn += 1
                    self._sleep(min(0.25 * 2 ** nconn, self.max_wait))
                    continue
                raise

    def _sleep(self, seconds):
        self._stop.wait(seconds)

    def _worker(self, jobs_q, results_q, summary):
        try:
            while not self._stop.is_set():
                try:
                    idx, job = jobs_q.get_nowait()
                except queue.Empty:
                    return
                try:
                    got = self._call(job, summary)
                except ServerError as e:
                    fatal = e.status in _ABORT_STATUSES or e.status >= 500 or self.abort_on_error
                    results_q.put((idx, None, e, fatal))
                    if fatal:
                        return
                    continue
                except Unreachable as e:
                    results_q.put((idx, None, e, True))
                    return
                except Exception as e:  # a bug or an unreadable answer: report, do not hang
                    results_q.put((idx, None, e, True))
                    return
                if got is None:
                    return
                resp, latency, attempts = got
                try:
                    rec = self.make_record(job, resp, latency, attempts)
                except Exception as e:
                    results_q.put((idx, None, e, True))
                    return
                results_q.put((idx, (rec, resp, latency), None, False))
        finally:
            self.client.close()

    # -- the whole batch (main thread) --
    def run(self, jobs, store, label="run"):
        """Run the jobs whose id is not yet in store; append results in job order.
        Returns a Summary; never raises for server trouble (see summary.aborted)."""
        summary = Summary(label)
        summary.total = len(jobs)
        done = store.done_ids()
        pending = [j for j in jobs if j.id not in done]
        summary.skipped = len(jobs) - len(pending)
        if not pending:
            return summary
        self._stop.clear()
        jobs_q = queue.Queue()
        for i, j in enumerate(pending):
            jobs_q.put((i, j))
        results_q = queue.Queue()
        threads = [threading.Thread(target=self._worker, args=(jobs_q, results_q, summary),
                                    daemon=True, name=f"lmserve-eval-{k}")
                   for k in range(min(self.concurrency, len(pending)))]
        bar = _progress_bar(len(pending), label, self.progress)
        t_start = time.monotonic()
        for t in threads:
            t.start()
        buffered = {}
        next_idx = 0
        try:
            while next_idx < len(pending):
                if self._stop.is_set() and not any(t.is_alive() for t in threads) and results_q.empty():
                    break
                try:
                    idx, ok, err, fatal = results_q.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and results_q.empty():
                        break
                    continue
                if err is not None and fatal:
                    if summary.aborted is None:
                        summary.aborted = err
                    self._stop.set()
                    continue
                buffered[idx] = (ok, err)
                while next_idx in buffered:
                    ok_, err_ = buffered.pop(next_idx)
                    job = pending[next_idx]
                    if ok_ is not None:
                        rec, resp, latency = ok_
                        usage = resp.get("usage") or {}
                        summary.ok += 1
                        summary.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                        summary.completion_tokens += int(usage.get("completion_tokens") or 0)
                        summary.latencies.append(latency)
                    else:
                        rec = {"id": job.id}
                        rec.update(job.extra)
                        rec["error"] = err_.as_record() if isinstance(err_, ServerError) else {"message": str(err_)}
                        summary.failed += 1
                        if summary.failed <= 5:
                            print(f"lmserve-eval: {label}: id {job.id!r}: {err_}", file=sys.stderr)
                        elif summary.failed == 6:
                            print(f"lmserve-eval: {label}: more lines failed (not shown)", file=sys.stderr)
                    store.append(rec)
                    next_idx += 1
                    if bar is not None:
                        bar.update(1)
        except KeyboardInterrupt:
            summary.interrupted = True
            self._stop.set()
        finally:
            self._stop.set()
            summary.wall = time.monotonic() - t_start
            if bar is not None:
                bar.close()
        # Results that finished after a gap are recomputed by the next run; workers are
        # daemon threads blocked at most one request long.
        return summary


def _progress_bar(total, label, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (logs stay clean).
    return tqdm(total=total, desc=label, unit="req", file=sys.stderr, dynamic_ncols=True,
                leave=False, disable=None)
