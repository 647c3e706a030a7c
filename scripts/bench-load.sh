#!/usr/bin/env bash
# bench-load.sh -- the load benchmark of issue 9: lmserve under N concurrent streams.
#
# For each model shape (random F32 weights: the speed of a forward pass does not
# depend on their values; the llama2.c-format files scripts/bench-engine.sh generates
# into build/bench-models/ with bench/gen_model), start `lmserve serve` on a free
# loopback port, warm it with two short requests, then run bench/loadgen at each
# concurrency level (each client sends streaming requests of 128 tokens at
# temperature 0.8 back to back over a kept-alive connection; none starts after
# LOAD_DURATION seconds and the level ends at LOAD_MAX_TIME at the latest) and print
# one table per model.
# Not part of `make test`; `make bench` (scripts/bench.sh) runs it after bench-engine.sh.
#
# Environment (defaults in brackets):
#   LMSERVE_BIN [build/release/lmserve]   LMSERVE_BUILD [build/release]
#   LOAD_SHAPES ["15M 110M"]   LOAD_LEVELS ["1 4 16 64"]
#   LOAD_DURATION [15] seconds per level in which requests start; LOAD_MAX_TIME [2 x duration]
#   hard end of a level: requests still streaming then are cut and their tokens counted
#   LOAD_THREADS [2] server kernel threads   LOAD_NICE [-5] niceness of server and loadgen
#   LOAD_MAX_TOKENS [128]   LOAD_TEMPERATURE [0.8]   LOAD_JSON_DIR [none] keep loadgen's JSON here
#   LOAD_ENGINE [1] also print bench_forward's single-stream figure for the same model
#   LOAD_KV_TYPE [f32] the server's --kv-type (f16: half the KV memory and attention traffic)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LMSERVE_BUILD:-build/release}
BIN=${LMSERVE_BIN:-$BUILD/lmserve}
LOADGEN=$BUILD/bench/loadgen
GEN=$BUILD/bench/gen_model
BENCH_FWD=$BUILD/bench/bench_forward
MODEL_DIR=build/bench-models
SHAPES=${LOAD_SHAPES:-"15M 110M"}
LEVELS=${LOAD_LEVELS:-"1 4 16 64"}
DURATION=${LOAD_DURATION:-15}
MAX_TIME=${LOAD_MAX_TIME:-$((DURATION * 2))}
THREADS=${LOAD_THREADS:-2}
NICE=${LOAD_NICE:--5}
MAX_TOKENS=${LOAD_MAX_TOKENS:-128}
TEMPERATURE=${LOAD_TEMPERATURE:-0.8}
JSON_DIR=${LOAD_JSON_DIR:-}
ENGINE=${LOAD_ENGINE:-1}
KV_TYPE=${LOAD_KV_TYPE:-f32}

for f in "$BIN" "$LOADGEN" "$GEN"; do
  [ -x "$f" ] || { echo "bench-load: $f is missing (run make bench)" >&2; exit 1; }
done
# A negative niceness needs privileges; fall back to none rather than fail.
nice_cmd=(nice -n "$NICE")
if [ "$NICE" = 0 ] || [ -n "$(nice -n "$NICE" true 2>&1)" ]; then
  nice_cmd=()
fi

# shellcheck source=scripts/shapes.sh
. scripts/shapes.sh

# Value of a number (or null) field in loadgen's one-line JSON report.
jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }
# CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
cpu_s() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  st=${st##*) }
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / hz }' <<<"$st"
}
fmt() { [ "$1" = null ] || [ -z "$1" ] && printf '%s' - || printf '%.1f' "$1"; }

server_pid=
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmserve-load.XXXXXX")
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

echo "== load benchmark ($(date -u +%FT%TZ), $(nproc) CPUs, load average:$(uptime | sed 's/.*load average://'))"
echo "   each level: loadgen, requests start for ${DURATION}s, cut at ${MAX_TIME}s, streaming, max_tokens $MAX_TOKENS, temperature $TEMPERATURE,"
echo "   seeded, keep-alive; aggregate = generated tokens / wall time; TTFT = request -> first text chunk;"
echo "   stream tok/s = median of (tokens - 1) / (last chunk - first chunk); srv CPU = server CPU"
echo "   seconds (user + system) during the level; tok/CPU-s = tokens per server CPU second;"
echo "   done+cut = requests completed + requests cut at the hard end (their tokens count; a cut"
echo "   request without a token counts its wait as its TTFT, a lower bound)"
mkdir -p "$MODEL_DIR"
for shape in $SHAPES; do
  args=$(shape_args "$shape")
  # The engine benchmark's files (llama2.c F32 checkpoint + tokenizer), generated
  # the same way if that section has not run.
  name=s$(tr M m <<<"$shape")-f32
  model=$MODEL_DIR/$name.bin
  if [ ! -s "$model" ] || [ ! -s "$model.tokenizer.bin" ]; then
    echo "-- generating $model"
    # shellcheck disable=SC2086
    nice "$GEN" --out "$model" --format llama2c $args >/dev/null
  fi
  log=$tmp/server-$shape.log
  cmd=("$BIN" serve --model "$model" --tokenizer "$model.tokenizer.bin" --host 127.0.0.1 --port 0
       --parallel 64 --queue 256 --threads "$THREADS" --kv-type "$KV_TYPE")
  echo
  echo "== stories$shape shape ($args), F32 weights, $KV_TYPE KV cache, random weights: $model"
  if [ "$ENGINE" = 1 ] && [ -x "$BENCH_FWD" ]; then
    # The single-stream engine figure under the same load, for the concurrency-1 row.
    single=$("${nice_cmd[@]}" "$BENCH_FWD" --model "$model" --tokenizer "$model.tokenizer.bin" \
             --threads "$THREADS" --kv-type "$KV_TYPE" --gen "$MAX_TOKENS" --prompt 8 --runs 3 --batch 1 --steps 1 2>&1 |
             sed -n 's/^single stream: //p') || true
    echo "   engine single stream (bench_forward, greedy, no HTTP): ${single:-failed}"
  fi
  echo "   server: ${nice_cmd[*]} ${cmd[*]}"
  "${nice_cmd[@]}" "${cmd[@]}" 2>"$log" >/dev/null &
  server_pid=$!
  url=
  for _ in $(seq 300); do
    url=$(sed -n 's/.*lmserve: listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.2
  done
  if [ -z "$url" ]; then
    echo "bench-load: the server did not start:" >&2; tail -20 "$log" >&2; exit 1
  fi
  # Warm-up: page the weights in, start the threads.
  "$LOADGEN" --url "$url" --concurrency 1 --requests-per-client 2 --max-tokens 16 --json >/dev/null || true
  echo "   loadgen: ${nice_cmd[*]} $LOADGEN --url $url --concurrency N --max-tokens $MAX_TOKENS --temperature $TEMPERATURE --duration $DURATION --max-time $MAX_TIME --seed 1 --json"
  printf '   %11s %9s %11s %11s %11s %12s %8s %6s %8s %9s\n' concurrency "tok/s" "TTFT p50 ms" \
    "TTFT p99 ms" "lat p50 ms" "stream tok/s" "done+cut" errors "srv CPU" "tok/CPU-s"
  for c in $LEVELS; do
    cpu0=$(cpu_s "$server_pid")
    out=$("${nice_cmd[@]}" "$LOADGEN" --url "$url" --concurrency "$c" --max-tokens "$MAX_TOKENS" \
          --temperature "$TEMPERATURE" --duration "$DURATION" --max-time "$MAX_TIME" --seed 1 --json) || true
    [ -n "$JSON_DIR" ] && { mkdir -p "$JSON_DIR"; echo "$out" >"$JSON_DIR/load-$shape-c$c.json"; }
    cpu1=$(cpu_s "$server_pid")
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.1f", b - a }')
    tokens=$(jget "$out" tokens)
    per_cpu=$(awk -v t="${tokens:-0}" -v c="$cpu" 'BEGIN { if (c > 0) printf "%.0f", t / c; else print "-" }')
    printf '   %11s %9s %11s %11s %11s %12s %8s %6s %7ss %9s\n' "$c" \
      "$(fmt "$(jget "$out" tokens_per_s)")" "$(fmt "$(jget "$out" ttft_ms_p50)")" \
      "$(fmt "$(jget "$out" ttft_ms_p99)")" "$(fmt "$(jget "$out" latency_ms_p50)")" \
      "$(fmt "$(jget "$out" stream_tokens_per_s_p50)")" "$(jget "$out" requests)+$(jget "$out" abandoned)" "$(jget "$out" errors)" \
      "$cpu" "$per_cpu"
    err=$(sed -n 's/.*"first_error":"\(.*\)"}$/\1/p' <<<"$out")
    if [ -n "$err" ]; then echo "      first error: $err"; fi
  done
  stop_server
done
echo
echo "load average after:$(uptime | sed 's/.*load average://')"
