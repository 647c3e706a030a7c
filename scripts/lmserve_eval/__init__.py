"""lmserve_eval -- a batch evaluation client for lmserve (and other OpenAI-style
completion servers).

Modules, in data-flow order:
  client   HTTP with one keep-alive connection per thread, the server's errors as exceptions
  store    append-only JSONL results that survive a kill (fsync per line, torn tail repaired)
  runner   N concurrent requests, 503 retries after Retry-After, results in input order,
           progress bar and the end-of-run summary
  scoring  continuation log-probabilities from an echo + logprobs + max_tokens 0 answer
  metrics  pure text metrics (type-token ratio, distinct-n, repeated n-grams, percentiles)
  report   the sweep's HTML page and PNG plots
  cli      the `run`, `sweep` and `score` sub-commands
Standard library only; tqdm draws the progress bar when present and matplotlib the sweep's
plots (Debian: python3-tqdm, python3-matplotlib; pip: the extras [progress], [plots], [all]).
"""

__version__ = "0.1"
