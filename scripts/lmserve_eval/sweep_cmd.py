"""sweep -- a grid of sampler settings, K seeded samples per prompt per setting,
metrics per setting and an HTML report with plots."""

import argparse
import csv
import importlib.util
import io
import itertools
import json
import os
import sys

from . import metrics, report
from .client import EvalError
from .common import (add_sampler_defaults, add_server_options, check_server, describe_error,
                     fail, make_client, positive_int, runner_kwargs)
from .phases import (PhaseFailed, check_config, load_prompts, lookup_score, run_phase,
                     score_pairs, write_atomic)
from .runner import Job

HELP = "grid over sampler settings: diversity/quality metrics and an HTML report"
DESCRIPTION = """\
For every combination of the grid values (a "setting") and every prompt, draw K
samples with seeds SEED, SEED+1, ..., SEED+K-1 (the same seeds in every setting,
so a sweep is reproducible and settings are compared on equal draws).  Then score
each distinct sample through the server's echo (prompt + sample, echo, logprobs,
max_tokens 0) and write to OUT:

  generations.jsonl   every sample (resumable, like `run`)
  scores.jsonl        the log-probability of every distinct sample (resumable)
  metrics.json, metrics.csv   one row per setting
  index.html + diversity_vs_quality.png, ttr_vs_quality.png   the report
  sweep.json          what this folder was made for (a rerun must match it)

Metrics per setting (words = lower-cased runs of letters/digits/apostrophes):
  ttr            type-token ratio of each sample, averaged over samples
  distinct_1/2   distinct n-grams / n-grams, pooled over all samples of the setting
  repeated_ngram_rate  share of a sample's N-grams (--rep-n) that repeat an earlier
                 one in the same sample, averaged
  mean_tokens    completion tokens per sample (the server's count); mean_words
  mean_logprob   the model's mean per-token log-probability of the samples given
                 their prompts (pooled over all scored tokens); perplexity = exp(-it)
  variation      per prompt, (distinct samples - 1) / (K - 1), averaged: 0 = every
                 sample identical (greedy)

Interrupted sweeps continue where they stopped when rerun with the same options."""


def add_parser(sub):
    p = sub.add_parser("sweep", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="?", help="prompts, JSONL ({\"id\", \"prompt\"} per line)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; in addition to the file)")
    p.add_argument("-o", "--out", required=True, help="report folder (created; resumable)")
    p.add_argument("-k", "--samples", type=positive_int, default=4,
                   help="samples per prompt per setting (default: 4)")
    p.add_argument("--seed", type=int, default=1, help="first seed (default: 1)")
    p.add_argument("--max-tokens", type=positive_int, default=48,
                   help="tokens per sample (default: 48)")
    p.add_argument("--rep-n", type=positive_int, default=3,
                   help="n of the repeated n-gram rate (default: 3)")
    p.add_argument("--title", default="lmserve sampling sweep", help="report title")
    add_sampler_defaults(p, multi=True)
    add_server_options(p)
    p.set_defaults(func=main)
    return p


GRID = (("temperature", "T"), ("top_k", "k"), ("top_p", "p"), ("repetition_penalty", "rp"),
        ("min_p", "minp"))


def build_settings(args):
    axes = []
    for field, _ in GRID:
        vals = getattr(args, field)
        if field == "temperature" and vals is None:
            vals = [0.0, 0.7, 1.0]
        if vals is None:
            continue
        if not vals:
            raise EvalError(f"--{field.replace('_', '-')}: no values")
        axes.append([(field, v) for v in vals])
    settings = []
    for combo in itertools.product(*axes):
        s = dict(combo)
        if s.get("temperature") == 0:
            # Greedy: the server takes the argmax before top-k/top-p/min-p would run,
            # so those values give identical text; keep one such setting.
            for f in ("top_k", "top_p", "min_p"):
                s.pop(f, None)
        if s not in settings:
            settings.append(s)
    return settings


def setting_label(s):
    parts = []
    for field, short in GRID:
        if field in s:
            v = s[field]
            parts.append(f"{short}={v:g}" if isinstance(v, float) else f"{short}={v}")
    return " ".join(parts)


def gen_id(si, pi, k):
    return f"s{si}:p{pi}:k{k}"


def compute_metrics(settings, prompts, samples, gens, scores, rep_n):
    rows = []
    for si, s in enumerate(settings):
        texts, toks, lps, var = [], [], [], []
        finish_stop = 0
        for pi, (_, ptext) in enumerate(prompts):
            per_prompt = []
            for k in range(samples):
                g = gens[gen_id(si, pi, k)]
                texts.append(g["text"])
                per_prompt.append(g["text"])
                toks.append(g.get("tokens"))
                lps.append(lookup_score(scores, ptext, g["text"]))
                finish_stop += g.get("finish_reason") == "stop"
            var.append(metrics.variation(per_prompt))
        row = {"setting": si, "number": si + 1, "label": setting_label(s), **s}
        row.update(metrics.text_stats(texts, rep_n))
        mlp = metrics.pooled_logprob(lps)
        row.update({
            "mean_tokens": metrics.mean(toks),
            "mean_logprob": mlp,
            "perplexity": metrics.perplexity(mlp),
            "scored_tokens": sum(len(x) for x in lps),
            "variation": metrics.mean(var),
            "stop_rate": finish_stop / len(texts) if texts else None,
        })
        rows.append(row)
    return rows


CSV_COLUMNS = ["setting", "number", "label", "temperature", "top_k", "top_p", "repetition_penalty", "min_p",
               "texts", "ttr", "distinct_1", "distinct_2", "repeated_ngram_rate", "mean_words",
               "mean_tokens", "mean_logprob", "perplexity", "scored_tokens", "variation", "stop_rate"]


def metrics_csv(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def main(args):
    try:
        prompts = load_prompts(args.prompts, args.prompt)
        if not prompts:
            return fail("no prompts: give a JSONL file and/or --prompt TEXT", 2)
        settings = build_settings(args)
    except EvalError as e:
        return fail(str(e), 2)
    if importlib.util.find_spec("matplotlib") is None:
        return fail("sweep draws its plots with matplotlib, which this Python lacks: "
                    "apt-get install python3-matplotlib, or pip install 'lmserve-eval[plots]'", 2)
    client = make_client(args)
    try:
        server_model = check_server(client)
    except EvalError as e:
        return fail(describe_error(e))
    config = {"kind": "sweep", "prompts": [list(p) for p in prompts], "settings": settings,
              "samples": args.samples, "seed": args.seed, "max_tokens": args.max_tokens,
              "model": args.model}
    try:
        check_config(args.out, "sweep.json", config, ("generations.jsonl", "scores.jsonl"))
    except EvalError as e:
        return fail(str(e), 2)
    rkw = runner_kwargs(args)
    jobs = []
    for si, s in enumerate(settings):
        for pi, (pid, ptext) in enumerate(prompts):
            for k in range(args.samples):
                body = {"prompt": ptext, "max_tokens": args.max_tokens, "seed": args.seed + k, **s}
                if args.model:
                    body["model"] = args.model
                jobs.append(Job(gen_id(si, pi, k), body,
                                {"setting": si, "prompt_id": pid, "sample": k, "params": s}))
    print(f"lmserve-eval: sweep: {len(settings)} settings x {len(prompts)} prompts x "
          f"{args.samples} samples = {len(jobs)} generations", file=sys.stderr)
    try:
        gens = run_phase(client, rkw, jobs, os.path.join(args.out, "generations.jsonl"), "generate")
        pairs = [(prompts[pi][1], gens[gen_id(si, pi, k)]["text"])
                 for si in range(len(settings)) for pi in range(len(prompts))
                 for k in range(args.samples)]
        scores = score_pairs(client, rkw, pairs, os.path.join(args.out, "scores.jsonl"), "score",
                             args.model)
    except PhaseFailed as e:
        return fail(f"sweep stopped: {e}; {e.hint()}")
    except EvalError as e:
        return fail(describe_error(e))
    except KeyboardInterrupt:
        print("lmserve-eval: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    rows = compute_metrics(settings, prompts, args.samples, gens, scores, args.rep_n)
    write_atomic(os.path.join(args.out, "metrics.json"),
                 json.dumps({"settings": rows}, indent=2) + "\n")
    write_atomic(os.path.join(args.out, "metrics.csv"), metrics_csv(rows))
    examples = {}
    for si in range(len(settings)):
        examples[si] = [(prompts[0][1], gens[gen_id(si, 0, k)]["text"])
                        for k in range(min(args.samples, 3))]
    meta = {"title": args.title, "url": args.url, "model": args.model or server_model,
            "prompts": len(prompts), "samples": args.samples, "seeds": f"{args.seed}..{args.seed + args.samples - 1}",
            "max_tokens": args.max_tokens, "rep_n": args.rep_n}
    try:
        files = report.write_sweep_report(args.out, meta, rows, examples)
    except Exception as e:  # plotting must not lose the measured numbers, which are written
        return fail(f"could not write the report: {type(e).__name__}: {e}")
    print(report.sweep_table(rows), file=sys.stderr)
    print(f"lmserve-eval: report: {os.path.join(args.out, 'index.html')} "
          f"({', '.join(files)})", file=sys.stderr)
    return 0
