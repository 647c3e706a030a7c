"""cli -- argument parsing and dispatch for lmserve-eval."""

import argparse
import sys

from . import __version__, run_cmd, score_cmd, sweep_cmd

DESCRIPTION = """\
Batch evaluation client for lmserve: drives a running server over HTTP
(OpenAI-style /v1/completions) with many requests at once.

  run    generate completions for a JSONL prompts file (resumable)
  sweep  grid over temperature / top-k / top-p / repetition penalty, K seeded
         samples per prompt per setting; diversity and quality metrics; an HTML
         report with plots
  score  held-out texts: perplexity of the true continuation, and how sampled
         continuations compare with it

'lmserve-eval COMMAND --help' describes each command."""


def build_parser():
    p = argparse.ArgumentParser(prog="lmserve-eval", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lmserve-eval {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run_cmd.add_parser(sub)
    sweep_cmd.add_parser(sub)
    score_cmd.add_parser(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("lmserve-eval: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
