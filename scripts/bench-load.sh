#!/usr/bin/env bash
# bench-load.sh -- lmserve under N concurrent streams, per model shape: aggregate tokens/s,
# time to first token, per-stream rate, the start (time to ready, RSS), and where the
# first token's time goes on the server (the timeline of lmserve's log lines).
#
# For each shape (random F32 weights as GGUF: the speed of a forward pass does not depend
# on their values; generated once into build/bench-models/ by bench/gen_model),
# scripts/serve-load.sh starts `lmserve serve` on a loopback port, times it to its first
# /health 200, warms it with two short requests, then runs bench/loadgen at each
# concurrency level (each client sends streaming requests of 128 tokens at temperature
# 0.8 back to back over a kept-alive connection; none starts after LOAD_DURATION seconds
# and the level ends at LOAD_MAX_TIME at the latest), and prints two tables per shape.
# Not part of `make test`; `make bench` (scripts/bench.sh) runs it after bench-engine.sh.
#
# Environment (defaults in brackets):
#   LMSERVE_BIN [build/release/lmserve]   LMSERVE_BUILD [build/release]
#   LOAD_SHAPES ["15M 110M 360M"]   LOAD_LEVELS ["1 4 16 64"]
#   LOAD_DURATION [15] seconds per level in which requests start; LOAD_MAX_TIME [2 x duration]
#   hard end of a level: requests still streaming then are cut and their tokens counted
#   LOAD_THREADS [2] server kernel threads   LOAD_NICE [-5] niceness of server and loadgen
#   LOAD_MAX_TOKENS [128]   LOAD_TEMPERATURE [0.8]   LOAD_JSON_DIR [none] keep loadgen's JSON here
#   LOAD_ENGINE [1] also print bench_forward's single-stream figure for the same model
#   LOAD_KV_TYPE [f32] the server's --kv-type (f16: half the KV memory and attention traffic)
#   LOAD_PORT [18190]
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LMSERVE_BUILD:-build/release}
BIN=${LMSERVE_BIN:-$BUILD/lmserve}
LOADGEN=$BUILD/bench/loadgen
GEN=$BUILD/bench/gen_model
BENCH_FWD=$BUILD/bench/bench_forward
MODEL_DIR=build/bench-models
SHAPES=${LOAD_SHAPES:-"15M 110M 360M"}
LEVELS=${LOAD_LEVELS:-"1 4 16 64"}
DURATION=${LOAD_DURATION:-15}
MAX_TIME=${LOAD_MAX_TIME:-$((DURATION * 2))}
THREADS=${LOAD_THREADS:-2}
MAX_TOKENS=${LOAD_MAX_TOKENS:-128}
TEMPERATURE=${LOAD_TEMPERATURE:-0.8}
ENGINE=${LOAD_ENGINE:-1}
KV_TYPE=${LOAD_KV_TYPE:-f32}
PORT=${LOAD_PORT:-18190}
export LOADGEN LOAD_DURATION=$DURATION LOAD_MAX_TIME=$MAX_TIME LOAD_MAX_TOKENS=$MAX_TOKENS \
  LOAD_TEMPERATURE=$TEMPERATURE

for f in "$BIN" "$LOADGEN" "$GEN"; do
  [ -x "$f" ] || { echo "bench-load: $f is missing (run make bench)" >&2; exit 1; }
done
# shellcheck source=scripts/shapes.sh
. scripts/shapes.sh
model_name() { case $1 in 15M) echo s15m ;; 110M) echo s110m ;; 360M) echo smol360m ;; *) echo "$1" ;; esac; }
# value of key in a serve-load.sh line
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
fmt() { case $1 in - | '' | null) printf '%s' - ;; *) printf '%.1f' "$1" ;; esac; }

echo "== load benchmark ($(date -u +%FT%TZ), $(nproc) CPUs, load average:$(uptime | sed 's/.*load average://'))"
echo "   each level: loadgen, requests start for ${DURATION}s, cut at ${MAX_TIME}s, streaming, max_tokens $MAX_TOKENS, temperature $TEMPERATURE,"
echo "   seeded, keep-alive; aggregate = generated tokens / wall time; TTFT = request sent -> first text chunk"
echo "   (client side); stream tok/s = median of (tokens - 1) / (last chunk - first chunk); srv CPU = server"
echo "   CPU seconds (user + system) during the level; tok/CPU-s = tokens per server CPU second;"
echo "   done+cut = requests completed + requests cut at the hard end (their tokens count; a cut"
echo "   request without a token counts its wait as its TTFT, a lower bound)."
echo "   start: exec -> first /health 200; RSS: the server's peak resident memory (VmHWM) at ready / over the run."
echo "   timeline (server side, from its log lines, p50/p99 ms): in = arrival -> queued (body, validation,"
echo "   tokenizing), queue = queued -> a slot, wait = slot -> the first model_forward with its tokens begins,"
echo "   fwd = that forward -> first token (all of its prompt chunks), out = first token -> first bytes taken"
echo "   by the connection; steps = engine steps begun from queued to the first token"
mkdir -p "$MODEL_DIR"
for shape in $SHAPES; do
  args=$(shape_args "$shape")
  name=$(model_name "$shape")-f32
  model=$MODEL_DIR/$name.gguf
  if [ ! -s "$model" ]; then
    echo "-- generating $model"
    # shellcheck disable=SC2086
    nice "$GEN" --out "$model" --format gguf --type f32 $args >/dev/null
  fi
  cmd=("$BIN" serve --model "$model" --host 127.0.0.1 --port "$PORT" --parallel 64 --queue 256
       --threads "$THREADS" --kv-type "$KV_TYPE")
  echo
  echo "== $shape shape ($args), F32 weights, $KV_TYPE KV cache, random weights: $model"
  if [ "$ENGINE" = 1 ] && [ -x "$BENCH_FWD" ]; then
    single=$("$BENCH_FWD" --model "$model" --threads "$THREADS" --kv-type "$KV_TYPE" --gen "$MAX_TOKENS" \
             --prompt 8 --runs 3 --batch 16 --steps 32 2>&1) || true
    echo "   engine (bench_forward, greedy, no HTTP): single stream $(sed -n 's/^single stream: //p' <<<"$single");" \
         "batch 16: $(sed -n 's/^batch *16: //p' <<<"$single")"
  fi
  echo "   server: ${cmd[*]}"
  echo "   loadgen: $LOADGEN --url http://127.0.0.1:$PORT --concurrency N --max-tokens $MAX_TOKENS --temperature $TEMPERATURE --duration $DURATION --max-time $MAX_TIME --seed 1 --json"
  out=$(LOAD_JSON_DIR=${LOAD_JSON_DIR:-} scripts/serve-load.sh "lmserve-$shape" "$PORT" "$LEVELS" -- "${cmd[@]}") || {
    echo "bench-load: $shape failed" >&2; exit 1; }
  st=$(grep '^start ' <<<"$out"); en=$(grep '^end ' <<<"$out")
  echo "   start: $(kv load_s "$st") s to ready, RSS $(kv rss_ready_mb "$st") MB at ready, peak $(kv rss_peak_mb "$en") MB over the run"
  printf '   %11s %9s %11s %11s %11s %12s %8s %6s %8s %9s\n' concurrency "tok/s" "TTFT p50 ms" \
    "TTFT p99 ms" "lat p50 ms" "stream tok/s" "done+cut" errors "srv CPU" "tok/CPU-s"
  while read -r l; do
    tps=$(kv tok_s "$l") cpu=$(kv cpu_s "$l")
    printf '   %11s %9s %11s %11s %11s %12s %8s %6s %7ss %9s\n' "$(kv c "$l")" "$(fmt "$tps")" \
      "$(fmt "$(kv ttft_p50 "$l")")" "$(fmt "$(kv ttft_p99 "$l")")" "$(fmt "$(kv lat_p50 "$l")")" \
      "$(fmt "$(kv stream_p50 "$l")")" "$(kv requests "$l")+$(kv cut "$l")" "$(kv errors "$l")" "$cpu" \
      "$(awk -v t="$(kv tokens "$l")" -v c="$cpu" 'BEGIN { if (t != "-" && c > 0) printf "%.0f", t / c; else print "-" }')"
  done < <(grep '^level ' <<<"$out")
  printf '   %11s %13s %13s %13s %13s %13s %9s\n' timeline "in p50/p99" "queue p50/p99" "wait p50/p99" \
    "fwd p50/p99" "out p50/p99" "steps"
  while read -r l; do
    pair() { printf '%s/%s' "$(fmt "$(kv "$1_p50" "$l")")" "$(fmt "$(kv "$1_p99" "$l")")"; }
    printf '   %11s %13s %13s %13s %13s %13s %9s\n' "c=$(kv c "$l")" "$(pair in)" "$(pair queue)" "$(pair wait)" \
      "$(pair fwd)" "$(pair out)" "$(kv steps_p50 "$l")/$(kv steps_p99 "$l")"
  done < <(grep '^level ' <<<"$out")
done
echo
echo "load average after:$(uptime | sed 's/.*load average://')"
