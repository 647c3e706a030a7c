"""score -- held-out texts: perplexity of the true continuation, and how sampled
continuations compare with it."""

import argparse
import json
import os
import re
import sys

from . import metrics, report
from .client import EvalError
from .common import (add_sampler_defaults, add_server_options, check_server, describe_error,
                     fail, make_client, positive_int, runner_kwargs)
from .phases import PhaseFailed, check_config, lookup_score, run_phase, score_pairs, write_atomic
from .runner import Job
from .store import StoreError, read_jsonl

HELP = "held-out texts: perplexity of the true continuation vs sampled continuations"
DESCRIPTION = """\
Each text of TEXTS is split into a prefix and its true continuation: at a word
boundary after --prefix-fraction of its words (or --prefix-words words), the
continuation keeping its leading space.  TEXTS is JSONL ({"id", "text"}, or
{"id", "prefix", "continuation"} to give the split yourself) or plain text with
texts separated by blank lines.

1. The true continuation is scored with one echo request (prefix + continuation,
   echo, logprobs, max_tokens 0): its mean log-prob per token given the prefix,
   and perplexity = exp(-mean), per text and pooled over all texts.
2. K continuations are sampled from each prefix (seeds SEED..SEED+K-1; max_tokens
   = the true continuation's token count unless --max-tokens) and scored the same way.
3. Both sides are compared: log-prob/token, perplexity, length (tokens, words),
   type-token ratio, distinct-1/2 (pooled over texts; for samples, over the k-th
   samples of every text, averaged over k, so both sides pool one text per prefix),
   repeated n-gram rate.

Writes OUT/truth.jsonl, samples.jsonl, sample_scores.jsonl (resumable),
results.jsonl (per text), summary.json and index.html, and prints the comparison."""


def add_parser(sub):
    p = sub.add_parser("score", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", help="held-out texts: JSONL or plain text (blank-line separated)")
    p.add_argument("-o", "--out", required=True, help="output folder (created; resumable)")
    p.add_argument("--prefix-fraction", type=float, default=0.5,
                   help="share of the words that go into the prefix (default: 0.5)")
    p.add_argument("--prefix-words", type=positive_int,
                   help="put exactly this many words in the prefix (overrides --prefix-fraction)")
    p.add_argument("-k", "--samples", type=int, default=4,
                   help="sampled continuations per text; 0 = only score the truth (default: 4)")
    p.add_argument("--seed", type=int, default=1, help="first seed (default: 1)")
    p.add_argument("--max-tokens", type=positive_int,
                   help="tokens per sample (default: as many as the true continuation has)")
    p.add_argument("--rep-n", type=positive_int, default=3,
                   help="n of the repeated n-gram rate (default: 3)")
    add_sampler_defaults(p)
    add_server_options(p)
    p.set_defaults(func=main)
    return p


_WORD_SPAN = re.compile(r"\S+")


def split_text(text, fraction=0.5, n_words=None):
    """(prefix, continuation) at a word boundary; the continuation starts with the
    whitespace before its first word.  None if the text has fewer than 2 words."""
    spans = [m.span() for m in _WORD_SPAN.finditer(text)]
    if len(spans) < 2:
        return None
    m = n_words if n_words is not None else round(fraction * len(spans))
    m = max(1, min(len(spans) - 1, m))
    cut = spans[m - 1][1]
    return text[:cut].lstrip(), text[cut:].rstrip()


def load_texts(path, fraction, n_words):
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except OSError as e:
        raise EvalError(f"cannot read {path}: {e.strerror}") from None
    items = []
    if raw.lstrip().startswith("{"):
        for lineno, obj in read_jsonl(path, "texts"):
            tid = str(obj.get("id", lineno))
            if isinstance(obj.get("prefix"), str) and isinstance(obj.get("continuation"), str):
                items.append((tid, obj["prefix"], obj["continuation"]))
                continue
            if not isinstance(obj.get("text"), str):
                raise EvalError(f"{path}:{lineno}: needs \"text\" (or \"prefix\" and \"continuation\")")
            sp = split_text(obj["text"], fraction, n_words)
            if sp is None:
                raise EvalError(f"{path}:{lineno}: a text needs at least two words")
            items.append((tid, *sp))
    else:
        for i, block in enumerate(b for b in re.split(r"\n\s*\n", raw) if b.strip()):
            text = " ".join(block.split())
            sp = split_text(text, fraction, n_words)
            if sp is None:
                continue
            items.append((f"text{i + 1}", *sp))
    ids = [t[0] for t in items]
    if len(set(ids)) != len(ids):
        raise EvalError(f"{path}: text ids must be unique")
    return items


def sampler_fields(args):
    d = {}
    for f in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
              "presence_penalty", "frequency_penalty"):
        v = getattr(args, f)
        if v is not None:
            d[f] = v
    if args.stop:
        d["stop"] = args.stop if len(args.stop) > 1 else args.stop[0]
    if args.model:
        d["model"] = args.model
    return d


def summarize(what, conts, lp_lists, token_counts, rep_n, distinct_sets=None):
    row = {"what": what}
    row.update(metrics.text_stats(conts, rep_n))
    if distinct_sets is not None:  # distinct-n averaged over comparable sets
        ws_sets = [[metrics.words(t) for t in s] for s in distinct_sets]
        row["distinct_1"] = metrics.mean(metrics.distinct_n(ws, 1) for ws in ws_sets)
        row["distinct_2"] = metrics.mean(metrics.distinct_n(ws, 2) for ws in ws_sets)
    mlp = metrics.pooled_logprob(lp_lists)
    row["mean_logprob"] = mlp
    row["perplexity"] = metrics.perplexity(mlp)
    row["mean_tokens"] = metrics.mean(token_counts)
    return row


def main(args):
    if not 0 < args.prefix_fraction < 1:
        return fail("--prefix-fraction must be in (0, 1)", 2)
    if args.samples < 0:
        return fail("--samples must be >= 0", 2)
    try:
        items = load_texts(args.texts, args.prefix_fraction, args.prefix_words)
    except (EvalError, StoreError) as e:
        return fail(str(e), 2)
    if not items:
        return fail(f"{args.texts}: no texts with at least two words", 2)
    client = make_client(args)
    try:
        server_model = check_server(client)
    except EvalError as e:
        return fail(describe_error(e))
    fields = sampler_fields(args)
    config = {"kind": "score", "texts": [list(t) for t in items], "samples": args.samples,
              "seed": args.seed, "max_tokens": args.max_tokens, "sampler": fields}
    try:
        check_config(args.out, "score.json", config, ("truth.jsonl", "samples.jsonl", "sample_scores.jsonl"))
    except EvalError as e:
        return fail(str(e), 2)
    rkw = runner_kwargs(args)
    out = args.out
    try:
        truth = score_pairs(client, rkw, [(p, c) for _, p, c in items],
                            os.path.join(out, "truth.jsonl"), "score truth", args.model)
        gens = {}
        if args.samples:
            jobs = []
            for tid, prefix, cont in items:
                n_true = len(lookup_score(truth, prefix, cont))
                mt = args.max_tokens or max(1, n_true)
                for k in range(args.samples):
                    body = {"prompt": prefix, "max_tokens": mt, "seed": args.seed + k, **fields}
                    jobs.append(Job(f"{tid}:k{k}", body, {"text_id": tid, "sample": k}))
            gens = run_phase(client, rkw, jobs, os.path.join(out, "samples.jsonl"), "sample")
        pairs = [(prefix, gens[f"{tid}:k{k}"]["text"]) for tid, prefix, _ in items
                 for k in range(args.samples)]
        sscores = score_pairs(client, rkw, pairs, os.path.join(out, "sample_scores.jsonl"),
                              "score samples", args.model)
    except PhaseFailed as e:
        return fail(f"score stopped: {e}; {e.hint()}")
    except EvalError as e:
        return fail(describe_error(e))
    except KeyboardInterrupt:
        print("lmserve-eval: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130

    per_text = []
    t_conts, t_lps, t_ntok = [], [], []
    s_conts, s_lps, s_ntok = [], [], []
    s_by_k = [[] for _ in range(args.samples)]
    for tid, prefix, cont in items:
        lps = lookup_score(truth, prefix, cont)
        t_conts.append(cont)
        t_lps.append(lps)
        t_ntok.append(len(lps))
        samples = [gens[f"{tid}:k{k}"]["text"] for k in range(args.samples)]
        slps = [lookup_score(sscores, prefix, s) for s in samples]
        for k, s in enumerate(samples):
            s_by_k[k].append(s)
        s_conts.extend(samples)
        s_lps.extend(slps)
        s_ntok.extend(len(x) for x in slps)
        tm = metrics.pooled_logprob([lps])
        sm = metrics.pooled_logprob(slps)
        per_text.append({
            "id": tid, "prefix": prefix, "continuation": cont,
            "true": {"tokens": len(lps), "mean_logprob": tm, "perplexity": metrics.perplexity(tm),
                     "words": len(metrics.words(cont))},
            "sampled": {"mean_logprob": sm, "perplexity": metrics.perplexity(sm),
                        "mean_tokens": metrics.mean(len(x) for x in slps),
                        "mean_words": metrics.mean(len(metrics.words(s)) for s in samples)},
            "samples": samples,
        })
    rows = [summarize("true continuation", t_conts, t_lps, t_ntok, args.rep_n)]
    if args.samples:
        rows.append(summarize("sampled", s_conts, s_lps, s_ntok, args.rep_n, distinct_sets=s_by_k))
    summary = {"texts": len(items), "samples_per_text": args.samples, "sampler": fields,
               "seeds": [args.seed + k for k in range(args.samples)],
               "model": args.model or server_model,
               "true": rows[0], "sampled": rows[1] if args.samples else None,
               "perplexity": rows[0]["perplexity"]}
    write_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    write_atomic(os.path.join(out, "results.jsonl"),
                 "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in per_text))
    meta = {"server": args.url, "model": summary["model"] or "?", "texts": len(items),
            "samples per text": args.samples, "sampler": json.dumps(fields) if fields else "server defaults"}
    report.write_score_report(out, meta, rows, per_text)
    print(report.score_table(rows), file=sys.stderr)
    ppl = rows[0]["perplexity"]
    print(f"lmserve-eval: perplexity of the true continuations: "
          f"{'-' if ppl is None else f'{ppl:.3f}'} ({sum(t_ntok)} tokens); "
          f"results in {out}", file=sys.stderr)
    return 0
