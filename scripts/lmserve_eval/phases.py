"""phases -- building blocks shared by sweep and score: a resumable phase of
requests, echo scoring of (prompt, continuation) pairs, and the out-folder's
configuration check."""

import json
import os
import sys

from .client import EvalError, ServerError
from .runner import Job, Runner
from .scoring import ScoringError, continuation_logprobs, echo_request, score_id
from .store import JsonlStore


class PhaseFailed(EvalError):
    def __init__(self, message, cause=None):
        super().__init__(message)
        self.cause = cause

    def hint(self):
        """What to tell the user: rerunning helps unless the server rejected the request."""
        c = self.cause
        if isinstance(c, ServerError) and 400 <= c.status < 500 and c.status != 429:
            return "fix the options and rerun"
        return "rerun the same command to continue"


def run_phase(client, rkw, jobs, path, label, make_record=None):
    """Run jobs into the store at path; return {id: record}.  Raises PhaseFailed
    (with the server's message) if the phase could not finish."""
    kw = dict(rkw)
    kw["abort_on_error"] = True
    if make_record is not None:
        kw["make_record"] = make_record
    with JsonlStore(path) as store:
        if store.torn_bytes:
            print(f"lmserve-eval: {path}: cut a torn last line ({store.torn_bytes} bytes)",
                  file=sys.stderr)
        summary = Runner(client, **kw).run(jobs, store, label=label)
        records = {r["id"]: r for r in store.records}
    if summary.total - summary.skipped:
        print(summary.text(), file=sys.stderr)
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.aborted is not None:
        raise PhaseFailed(f"{label}: {summary.aborted}", summary.aborted)
    bad = [r for r in records.values() if "error" in r]
    if bad:
        raise PhaseFailed(f"{label}: {len(bad)} requests failed, e.g. id {bad[0]['id']!r}: "
                          f"{bad[0]['error'].get('message')}")
    return records


def score_record(job, resp, latency, attempts):
    prompt, cont = job.extra["_pair"]
    try:
        lps, toks = continuation_logprobs(resp, prompt, cont)
    except ScoringError as e:
        raise EvalError(f"cannot score through echo: {e} (does the server support "
                        "echo + logprobs with max_tokens 0?)") from None
    return {"id": job.id, "n_tokens": len(lps), "sum_logprob": sum(lps),
            "logprobs": lps, "tokens": toks,
            "latency": round(latency, 4)}


def score_pairs(client, rkw, pairs, path, label, model=None):
    """pairs: iterable of (prompt, continuation).  Returns {score_id: record}.
    Identical pairs are scored once; empty continuations are not sent (0 tokens)."""
    jobs = {}
    for prompt, cont in pairs:
        if not cont:
            continue
        sid = score_id(prompt, cont)
        if sid not in jobs:
            jobs[sid] = Job(sid, echo_request(prompt, cont, model), {"_pair": (prompt, cont)})
    return run_phase(client, rkw, list(jobs.values()), path, label, make_record=score_record)


def lookup_score(scores, prompt, cont):
    """The continuation's log-probs ([] for an empty continuation)."""
    if not cont:
        return []
    return scores[score_id(prompt, cont)]["logprobs"]


def check_config(out_dir, name, config, data_files=()):
    """The out folder remembers what it was made for; a rerun with other settings
    would mix incompatible results, so refuse it -- unless no result was written
    yet (e.g. the first attempt failed on a bad option)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    has_data = any(os.path.exists(os.path.join(out_dir, f)) and
                   os.path.getsize(os.path.join(out_dir, f)) > 0 for f in data_files)
    if os.path.exists(path) and has_data:
        with open(path, encoding="utf-8") as f:
            try:
                old = json.load(f)
            except ValueError:
                old = None
        if old is not None and old != json.loads(json.dumps(config)):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != json.loads(json.dumps(config)).get(k))
            raise EvalError(f"{out_dir} holds results of a different run (differs in: "
                            f"{', '.join(diff)}); use another --out folder or delete it")
        if old is not None:
            return
    write_atomic(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_prompts(path, extra_prompts):
    """Prompts for sweep: a JSONL file ({"id", "prompt"}) and/or --prompt strings."""
    from .store import read_jsonl
    out = []
    if path:
        for lineno, obj in read_jsonl(path, "prompts"):
            p = obj.get("prompt")
            if not isinstance(p, str):
                raise EvalError(f"{path}:{lineno}: \"prompt\" must be a string")
            out.append((str(obj.get("id", lineno)), p))
    for i, p in enumerate(extra_prompts or []):
        out.append((f"prompt{i + 1}", p))
    ids = [i for i, _ in out]
    if len(set(ids)) != len(ids):
        raise EvalError("prompt ids must be unique")
    return out
