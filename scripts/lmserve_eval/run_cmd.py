"""run -- JSONL prompts in, JSONL results out, N at a time, resumable."""

import json
import sys

from .client import EvalError
from .common import (SAMPLER_FIELDS, add_sampler_defaults, add_server_options, check_server,
                     derive_seed, describe_error, fail, make_client, runner_kwargs)
from .runner import Job, Runner
from .store import JsonlStore, StoreError, read_jsonl

HELP = "generate a completion for every line of a JSONL prompts file"
DESCRIPTION = """\
Send every prompt of INPUT (JSONL: one object per line with "id", "prompt" and
optional request fields: max_tokens, temperature, top_p, top_k, min_p,
repetition_penalty, presence_penalty, frequency_penalty, seed, stop, n, logprobs,
logit_bias) to the server's /v1/completions and append one result line per prompt
to OUTPUT, in input order:

  {"id", "prompt", "params", "text", "finish_reason", "tokens" (completion tokens),
   "prompt_tokens", "latency" (seconds), "seed", "attempts"[, "logprobs", "choices"]}

A line the server rejects (4xx) becomes {"id", "prompt", "params", "error": {status,
message, type, param, code}}.  Other keys of an input line are copied to its result.
A line without "id" gets its line number.  Command-line sampling options are
defaults that a line's own fields override.  Without a seed, each line gets one
derived from --seed and its id, so reruns are reproducible.

Resumable: OUTPUT is append-only (fsync after every line); rerunning the same
command skips the ids already in OUTPUT, so an interrupted run continues where it
stopped without losing or repeating a line.  Remove error lines to retry them.

Exit status: 0 if every line succeeded, 1 if any failed or the server could not
be reached, 2 for bad usage or input, 130 if interrupted."""


def add_parser(sub):
    p = sub.add_parser("run", help=HELP, description=DESCRIPTION,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("input", help="prompts, JSONL")
    p.add_argument("-o", "--output", required=True, help="results, JSONL (appended to; resumable)")
    p.add_argument("--max-tokens", type=int, help="default max_tokens (server default if unset)")
    add_sampler_defaults(p)
    p.add_argument("--seed", type=int, default=0,
                   help="base for per-line seeds when a line has none (default: 0)")
    p.add_argument("--summary-json", help="also write the summary here as JSON")
    add_server_options(p)
    p.set_defaults(func=main)
    return p


def defaults_from_args(args):
    d = {}
    for opt, field in (("max_tokens", "max_tokens"), ("temperature", "temperature"),
                       ("top_p", "top_p"), ("top_k", "top_k"), ("min_p", "min_p"),
                       ("repetition_penalty", "repetition_penalty"),
                       ("presence_penalty", "presence_penalty"),
                       ("frequency_penalty", "frequency_penalty"), ("logprobs", "logprobs")):
        v = getattr(args, opt, None)
        if v is not None:
            d[field] = v
    if getattr(args, "stop", None):
        d["stop"] = args.stop if len(args.stop) > 1 else args.stop[0]
    if args.model:
        d["model"] = args.model
    return d


def build_jobs(lines, defaults, base_seed, path):
    jobs = []
    seen = set()
    for lineno, obj in lines:
        job_id = obj.get("id", lineno)
        if not isinstance(job_id, (str, int)) or isinstance(job_id, bool):
            raise StoreError(f"{path}:{lineno}: \"id\" must be a string or an integer")
        if job_id in seen:
            raise StoreError(f"{path}:{lineno}: id {job_id!r} appears twice")
        seen.add(job_id)
        prompt = obj.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise StoreError(f"{path}:{lineno}: \"prompt\" must be a string (or a list of token ids)")
        params = dict(defaults)
        extra = {}
        for k, v in obj.items():
            if k in ("id", "prompt"):
                continue
            if k in SAMPLER_FIELDS:
                params[k] = v
            else:
                extra[k] = v
        if "seed" not in params:
            params["seed"] = derive_seed(base_seed, job_id)
        body = {"prompt": prompt, **params}
        rec_extra = {"prompt": prompt, "params": params}
        for k, v in extra.items():
            rec_extra.setdefault(k, v)
        jobs.append(Job(job_id, body, rec_extra))
    return jobs


def main(args):
    try:
        lines = read_jsonl(args.input, "prompts")
        jobs = build_jobs(lines, defaults_from_args(args), args.seed, args.input)
    except StoreError as e:
        return fail(str(e), 2)
    if not jobs:
        return fail(f"{args.input}: no prompts", 2)
    client = make_client(args)
    try:
        check_server(client)
    except EvalError as e:
        return fail(describe_error(e))
    try:
        store = JsonlStore(args.output)
    except StoreError as e:
        return fail(str(e), 2)
    with store:
        if store.torn_bytes:
            print(f"lmserve-eval: {args.output}: cut a torn last line ({store.torn_bytes} bytes) "
                  "left by an interrupted run", file=sys.stderr)
        runner = Runner(client, **runner_kwargs(args))
        summary = runner.run(jobs, store, label="run")
    print(summary.text(), file=sys.stderr)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.as_dict(), f, indent=2)
            f.write("\n")
    if summary.interrupted:
        print(f"lmserve-eval: interrupted; rerun the same command to continue "
              f"({len(store.records)} of {len(jobs)} lines in {args.output})", file=sys.stderr)
        return 130
    if summary.aborted is not None:
        return fail(f"stopped: {describe_error(summary.aborted)}; "
                    f"{len(store.records)} of {len(jobs)} lines are in {args.output} "
                    "(rerun the same command to continue)")
    if summary.failed:
        return fail(f"{summary.failed} of {len(jobs)} lines failed (see the \"error\" lines in {args.output})")
    return 0
