#!/usr/bin/env bash
# bench-context.sh -- generation past the window: --context-overflow slide against shift.
#
# On the 15M shape (random F32 weights, the llama2.c file scripts/bench-load.sh uses), for
# each window (--ctx 64 and 256): one server per policy, both up at once, and bench/loadgen
# at 1 and 16 concurrent streams, the two policies taking turns (slide, shift, slide, ...)
# for CONTEXT_ROUNDS rounds, so the machine's drift hits both alike.  Every request's
# prompt nearly fills the window (a few tokens short: what tokenizes to at most ctx), so
# all but those first few generated tokens are past it: under slide each one costs a
# forward pass over the whole window (recomputed in --prefill-chunk chunks under
# --step-budget, logits for the last position only); under shift the window drops to its
# last half when full, then grows one position per token.  Reported per cell: the median
# over the rounds of aggregate tokens/s (and the slowest and fastest round), time to first
# token p50, and slide's share of shift's rate.
#
# The random model's text repeats a token at ordinary temperatures, and a window that
# repeats one token is cheap under slide (all but the last position stay valid in the
# cache), so requests sample at temperature 50: near-uniform text, no such reuse -- the
# cost of ordinary text.  The forward pass costs the same whatever the weights say.
#
# Not part of `make test`; `make bench` (scripts/bench.sh) runs it.
# Environment (defaults in brackets): LMSERVE_BIN, LMSERVE_BUILD, CONTEXT_CTXS ["64 256"],
#   CONTEXT_LEVELS ["1 16"], CONTEXT_ROUNDS [3], CONTEXT_DURATION [8] seconds in which requests
#   start, cut at twice that; CONTEXT_MAX_TOKENS [64]; CONTEXT_THREADS [2].
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LMSERVE_BUILD:-build/release}
BIN=${LMSERVE_BIN:-$BUILD/lmserve}
LOADGEN=$BUILD/bench/loadgen
GEN=$BUILD/bench/gen_model
MODEL_DIR=build/bench-models
CTXS=${CONTEXT_CTXS:-"64 256"}
LEVELS=${CONTEXT_LEVELS:-"1 16"}
ROUNDS=${CONTEXT_ROUNDS:-3}
DURATION=${CONTEXT_DURATION:-8}
MAX_TOKENS=${CONTEXT_MAX_TOKENS:-64}
THREADS=${CONTEXT_THREADS:-2}
TEMPERATURE=50

for f in "$BIN" "$LOADGEN" "$GEN"; do
  [ -x "$f" ] || { echo "bench-context: $f is missing (run make bench)" >&2; exit 1; }
done
# shellcheck source=scripts/shapes.sh
. scripts/shapes.sh

jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmserve-context.XXXXXX")
pids=()
stop_servers() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_servers; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

model=$MODEL_DIR/s15m-f32.bin
mkdir -p "$MODEL_DIR"
if [ ! -s "$model" ] || [ ! -s "$model.tokenizer.bin" ]; then
  echo "-- generating $model"
  # shellcheck disable=SC2046
  nice "$GEN" --out "$model" --format llama2c $(shape_args 15M) >/dev/null
fi

# start NAME ARGS...: a server in the background (its pid kept for stop_servers, so not
# in a subshell); sets url.
start() {
  local name=$1 log=$tmp/$1.log
  shift
  url=
  "$BIN" serve --model "$model" --tokenizer "$model.tokenizer.bin" --host 127.0.0.1 --port 0 \
    --threads "$THREADS" --parallel 16 --queue 64 --no-log "$@" 2>"$log" >/dev/null &
  pids+=($!)
  for _ in $(seq 300); do
    url=$(sed -n 's/.*lmserve: listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$url" ] && break
    sleep 0.2
  done
  [ -n "$url" ] || { echo "bench-context: the $name server did not start:" >&2; tail -5 "$log" >&2; exit 1; }
}

# The longest run of "story" that tokenizes to at most ctx tokens (BOS included).
prompt_for() {
  local url=$1 ctx=$2
  python3 - "$url" "$ctx" <<'EOF'
import json, sys, urllib.request
url, ctx = sys.argv[1], int(sys.argv[2])
def count(k):
    req = urllib.request.Request(url + "/tokenize", json.dumps({"content": " ".join(["story"] * k)}).encode(),
                                 {"Content-Type": "application/json"})
    return len(json.load(urllib.request.urlopen(req))["tokens"])
k = 1
while count(k + 1) <= ctx:
    k += 1
print(count(k), " ".join(["story"] * k))
EOF
}

echo "== generation past the window: slide vs shift ($(date -u +%FT%TZ), $(nproc) CPUs, load average:$(uptime | sed 's/.*load average://'))"
echo "   15M shape ($(shape_args 15M)), F32, random weights: $model"
echo "   loadgen: streaming, max_tokens $MAX_TOKENS, temperature $TEMPERATURE, seeded; requests start for ${DURATION}s,"
echo "   cut at $((DURATION * 2))s; tok/s = generated tokens / wall time; $ROUNDS rounds, slide and shift in turn"
for ctx in $CTXS; do
  stop_servers
  start slide --ctx "$ctx" --context-overflow slide
  url_slide=$url
  start shift --ctx "$ctx" --context-overflow shift
  url_shift=$url
  read -r n_prompt prompt < <(prompt_for "$url_slide" "$ctx")
  for u in "$url_slide" "$url_shift"; do  # warm-up: page the weights in
    "$LOADGEN" --url "$u" --concurrency 1 --requests-per-client 1 --max-tokens 8 --json >/dev/null || true
  done
  echo
  echo "-- --ctx $ctx: prompts of $n_prompt tokens, so $((MAX_TOKENS - (ctx - n_prompt))) of each request's $MAX_TOKENS tokens come past the window"
  declare -A rates=() ttfts=()
  for r in $(seq "$ROUNDS"); do
    for c in $LEVELS; do
      for policy in slide shift; do
        url=$url_slide
        [ "$policy" = shift ] && url=$url_shift
        out=$("$LOADGEN" --url "$url" --concurrency "$c" --max-tokens "$MAX_TOKENS" --temperature "$TEMPERATURE" \
              --prompt "$prompt" --duration "$DURATION" --max-time $((DURATION * 2)) --seed "$r" --json) || true
        rates[$policy,$c]+="$(jget "$out" tokens_per_s) "
        ttfts[$policy,$c]+="$(jget "$out" ttft_ms_p50) "
        errs=$(jget "$out" errors)
        if [ "${errs:-0}" != 0 ]; then
          echo "   round $r $policy c=$c: $errs errors: $(sed -n 's/.*"first_error":"\(.*\)"}$/\1/p' <<<"$out")"
          sed 's/^/     server: /' "$tmp/$policy.log" | tail -5 # why it stopped answering, if it said
        fi
      done
    done
  done
  printf '   %11s %7s %22s %14s %16s\n' concurrency policy "tok/s median (min-max)" "TTFT p50 ms" "slide / shift"
  for c in $LEVELS; do
    for policy in slide shift; do
      line=$(python3 -c '
import statistics, sys
r = [float(x) for x in sys.argv[1].split() if x not in ("null", "")]
t = [float(x) for x in sys.argv[2].split() if x not in ("null", "")]
o = [float(x) for x in sys.argv[3].split() if x not in ("null", "")]
med = statistics.median(r) if r else float("nan")
share = "%.3f" % (med / statistics.median(o)) if sys.argv[4] == "slide" and r and o and statistics.median(o) > 0 else ""
print("%8.1f (%.1f-%.1f)|%.1f|%s" % (med, min(r or [0]), max(r or [0]), statistics.median(t) if t else float("nan"), share))
' "${rates[$policy,$c]}" "${ttfts[$policy,$c]}" "${rates[shift,$c]}" "$policy")
      IFS='|' read -r rate ttft share <<<"$line"
      printf '   %11s %7s %22s %14s %16s\n' "$c" "$policy" "$rate" "$ttft" "$share"
    done
  done
  unset rates ttfts
done
echo
echo "load average after:$(uptime | sed 's/.*load average://')"
