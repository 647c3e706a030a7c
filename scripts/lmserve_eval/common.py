"""common -- option groups and helpers shared by the sub-commands."""

import argparse
import os
import sys
import zlib

from .client import Client, EvalError, ServerError, Unreachable, preflight

# Request fields a prompts line (or a command-line default) may set.
SAMPLER_FIELDS = {
    "max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "min_p": float,
    "repetition_penalty": float, "presence_penalty": float, "frequency_penalty": float,
    "seed": int, "stop": None, "n": int, "logprobs": int, "echo": bool, "logit_bias": None,
    "model": str,
}


def derive_seed(base, job_id):
    """A per-line seed that depends only on the base seed and the line's id (not on
    order or on which lines a resumed run still has to do): 31 bits of CRC-32."""
    return zlib.crc32(f"{base}:{job_id}".encode("utf-8")) & 0x7FFFFFFF


def float_list(s):
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def int_list(s):
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_server_options(p):
    g = p.add_argument_group("server")
    g.add_argument("--url", default=os.environ.get("LMSERVE_URL", "http://127.0.0.1:8080"),
                   help="server base URL (default: $LMSERVE_URL or http://127.0.0.1:8080)")
    g.add_argument("--api-key", default=os.environ.get("LMSERVE_API_KEY"),
                   help="sent as 'Authorization: Bearer KEY' (default: $LMSERVE_API_KEY)")
    g.add_argument("--model", help="model id to ask for (default: the server's)")
    g.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for one answer (default: 300)")
    g = p.add_argument_group("concurrency and retries")
    g.add_argument("-j", "--concurrency", type=positive_int, default=4,
                   help="requests in flight at once (default: 4)")
    g.add_argument("--retries", type=int, default=30,
                   help="times to retry a 503/429 after its Retry-After (default: 30)")
    g.add_argument("--connect-retries", type=int, default=3,
                   help="times to retry a lost connection or a 5xx, with back-off (default: 3)")
    g.add_argument("--max-retry-wait", type=float, default=60.0,
                   help="cap on one Retry-After wait, seconds (default: 60)")
    g.add_argument("--rate", type=float, default=None,
                   help="start at most RATE requests per second (default: no limit)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_sampler_defaults(p, multi=False):
    """Sampler options: one value each (run, score) or comma-separated grids (sweep)."""
    g = p.add_argument_group("sampling" + (" grid (comma-separated values; every combination is a setting)" if multi else ""))
    fl = float_list if multi else float
    il = int_list if multi else int
    g.add_argument("--temperature", type=fl, help="0 = greedy" + (" (default: 0,0.7,1)" if multi else ""))
    dflt = " (default: not sent, the server's default)"
    g.add_argument("--top-k", type=il, help="0 = off" + dflt)
    g.add_argument("--top-p", type=fl, help="in (0, 1]" + dflt)
    g.add_argument("--repetition-penalty", type=fl, help="1 = off" + dflt)
    g.add_argument("--min-p", type=fl, help="0 = off" + dflt)
    if not multi:
        g.add_argument("--presence-penalty", type=float)
        g.add_argument("--frequency-penalty", type=float)
        g.add_argument("--stop", action="append", help="a stop string (repeatable, up to 4)")
        g.add_argument("--logprobs", type=int, help="0-5: return per-token log-probs in the results")
    return g


def make_client(args):
    return Client(args.url, api_key=args.api_key, timeout=args.timeout)


def check_server(client):
    """Preflight; returns the server's model id or None.  Raises EvalError."""
    return preflight(client)


def runner_kwargs(args):
    return dict(concurrency=args.concurrency, retries=args.retries,
                connect_retries=args.connect_retries, max_wait=args.max_retry_wait,
                rate=args.rate, progress=not args.no_progress)


def fail(msg, code=1):
    print(f"lmserve-eval: {msg}", file=sys.stderr)
    return code


def describe_error(e):
    if isinstance(e, ServerError):
        return str(e)
    if isinstance(e, Unreachable):
        return str(e)
    if isinstance(e, EvalError):
        return str(e)
    return f"{type(e).__name__}: {e}"
