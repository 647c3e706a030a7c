#!/usr/bin/env bash
# side-by-side.sh -- lmserve side by side with llama.cpp (and llama2.c's run.c when given)
# on the same model files, on this machine, in interleaved rounds (the speed of a shared
# VM drifts by 10-20 % over minutes, so each round runs every program once, back to back,
# and the table shows the median and range over the rounds).  `make bench-compare`.
# (Not named bench-*.sh: `make bench` runs those, and this one needs llama.cpp.)
#
#   1. Decode, one stream, greedy, 128 tokens after a short prompt, 2 threads:
#        lmserve generate --model M.gguf --prompt "Once upon a time" --max-tokens 128 --temperature 0
#        llama-bench -m M.gguf -p 0 -n 128 -t 2 -r 1          (tg128: llama.cpp's own timing)
#        RUNC M.bin -z M.bin.tokenizer.bin -t 0 -n 132 -i "Once upon a time"   (F32 only)
#      on the bench models of `make bench` (random weights, real shapes; GGUF files for
#      lmserve and llama.cpp, the llama2.c checkpoint for run.c).
#   2. Load, per shape (15M, 110M, SmolLM-360M; F32 GGUF) and concurrency (1, 4, 16, 64):
#      scripts/serve-load.sh starts each server, times it to its first /health 200 and
#      reads its peak RSS, then runs bench/loadgen (streaming, 128 tokens at temperature
#      0.8, LOAD_DURATION seconds per level) at every level: `lmserve serve --parallel 64`
#      against `llama-server -np LLAMA_NP -c (LLAMA_NP x slot) -cb` (slot: the model's
#      context, at most 1024), lmserve then llama-server per shape in every round; plus
#      bench_forward --batch 16 on the same file in the same round (the engine's own rate).
#      The table: aggregate tok/s, TTFT p50/p99, per-stream tok/s, and lmserve's timeline of
#      the first token (queue, wait, fwd, out; steps) from its log lines.
#   3. Agreement: greedy 100-token completions of fixed prompts (scripts/compare-greedy.py)
#      from lmserve and llama-server (-ctk f32 -ctv f32 -fa off: F32 KV, no flash attention,
#      the same arithmetic as ours) on real models: $LMSERVE_MODELS/stories260K.gguf (20
#      story prompts) and models/default/model.gguf (10 KJV prompts); and, when llama-quantize
#      is there, stories260K quantized to Q8_0 by it: as is (its ffn_down, 172 columns, falls
#      back to F16, where both round the activations to F16) and with ffn_down kept F32 (Q8_0
#      arithmetic only).  Every llama-quantize type, its bytes against `lmserve quantize`'s
#      and the continuations on three models: scripts/quant-agree.sh (docs/QUANT.md).
#
# Environment (defaults in brackets):
#   LLAMA_CPP_BIN [build/ref/llama.cpp/build/bin] dir with llama-bench and llama-server
#                 (scripts/get-llama-cpp.sh builds them)
#   RUNC [none]   a built llama2.c run binary (gcc -Ofast -fopenmp -march=native run.c -lm)
#   COMPARE_MODELS ["s15m-f32 s15m-q8_0 s110m-f32 s110m-q8_0 s110m-q4_0 s110m-q4_k_m"]
#                  (bench/gen_model types; mixtures such as q4_k_m by lmserve quantize's code)
#   COMPARE_ROUNDS [3]
#   COMPARE_DECODE [1] run part 1   COMPARE_LOAD [1] run part 2   THREADS [2]
#   LOAD_SHAPES ["15M 110M 360M"]   LOAD_LEVELS ["1 4 16 64"]   LOAD_DURATION [15]   LLAMA_NP [16]
#   COMPARE_ROWS [none] keep part 2's raw rows (serve-load.sh lines) in this file
#   COMPARE_AGREE [1] run part 3   LMSERVE_MODELS [tests/data/models] folder with stories260K.gguf
set -euo pipefail
cd "$(dirname "$0")/.."

B=${LMSERVE_BUILD:-build/release}
LM=${LMSERVE_BIN:-$B/lmserve}
GEN=$B/bench/gen_model
LOADGEN=$B/bench/loadgen
LC=${LLAMA_CPP_BIN:-build/ref/llama.cpp/build/bin}
RUNC=${RUNC:-}
MODELS=${COMPARE_MODELS:-"s15m-f32 s15m-q8_0 s110m-f32 s110m-q8_0 s110m-q4_0 s110m-q4_k_m"}
ROUNDS=${COMPARE_ROUNDS:-3}
LOAD=${COMPARE_LOAD:-1}
AGREE=${COMPARE_AGREE:-1}
REAL=${LMSERVE_MODELS:-tests/data/models}
DURATION=${LOAD_DURATION:-15}
SHAPES=${LOAD_SHAPES:-"15M 110M 360M"}
LEVELS=${LOAD_LEVELS:-"1 4 16 64"}
LLAMA_NP=${LLAMA_NP:-16}
DECODE=${COMPARE_DECODE:-1}
BENCH_FWD=$B/bench/bench_forward
THREADS=${THREADS:-2}
M=build/bench-models
PROMPT="Once upon a time"
NTOK=128

for f in "$LM" "$GEN" "$LOADGEN"; do
  [ -x "$f" ] || { echo "side-by-side: $f is missing (run make bench first)" >&2; exit 1; }
done
for t in llama-bench llama-server; do
  [ -x "$LC/$t" ] || { echo "side-by-side: $LC/$t is missing (run scripts/get-llama-cpp.sh, or set LLAMA_CPP_BIN)" >&2; exit 1; }
done
[ -z "$RUNC" ] || [ -x "$RUNC" ] || { echo "side-by-side: RUNC=$RUNC is not executable" >&2; exit 1; }

# shellcheck source=scripts/shapes.sh
. scripts/shapes.sh
ensure_model() { # name (e.g. s15m-f32) -> generates M/name.gguf (and M/name.bin for F32 with RUNC) if missing
  local name=$1 shape=${1%%-*} type=${1#*-} args
  args=$(shape_args "$shape")
  mkdir -p "$M"
  if [ ! -s "$M/$name.gguf" ]; then
    echo "-- generating $M/$name.gguf" >&2
    # shellcheck disable=SC2086
    nice "$GEN" --out "$M/$name.gguf" --format gguf --type "$type" $args >/dev/null
  fi
  if [ -n "$RUNC" ] && [ "$type" = f32 ] && { [ ! -s "$M/$name.bin" ] || [ ! -s "$M/$name.bin.tokenizer.bin" ]; }; then
    echo "-- generating $M/$name.bin" >&2
    # shellcheck disable=SC2086
    nice "$GEN" --out "$M/$name.bin" --format llama2c $args >/dev/null
  fi
}
gguf_ctx() { # shape -> tokens per llama-server slot: the model's context, at most 1024
  local c
  c=$(shape_args "$1" | sed -n 's/.*--ctx \([0-9]*\).*/\1/p')
  [ "$c" -gt 1024 ] && c=1024
  echo "$c"
}
median_range() { # numbers on stdin -> "median (min-max)"
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "-"; exit }
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f (%.1f-%.1f)", m, v[1], v[NR] }'
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmserve-compare.XXXXXX")
server_pid=
stop_server() { # every server started since the last call
  local p
  for p in $server_pid; do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  server_pid=
}
trap 'stop_server; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

echo "== side by side ($(date -u +%FT%TZ), $(nproc) CPUs, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), load average:$(uptime | sed 's/.*load average://'))"
echo "   llama.cpp: $LC ($("$LC/llama-server" --version 2>&1 | sed -n 's/^version: //p' | head -1))"
[ -n "$RUNC" ] && echo "   run.c: $RUNC"
port=${COMPARE_PORT:-18093}
port2=$((port + 1))
if [ "$DECODE" = 1 ]; then
echo
echo "-- decode, one stream, greedy, $NTOK tokens, $THREADS threads: tok/s median (min-max) over $ROUNDS interleaved rounds"
for name in $MODELS; do ensure_model "$name"; done
for name in $MODELS; do : >"$tmp/$name.lm"; : >"$tmp/$name.lc"; : >"$tmp/$name.rc"; done
for r in $(seq "$ROUNDS"); do
  for name in $MODELS; do
    g=$M/$name.gguf
    "$LM" generate --model "$g" --prompt "$PROMPT" --max-tokens $NTOK --temperature 0 --threads "$THREADS" \
      2>&1 >/dev/null | sed -n 's/.*achieved tok\/s: \([0-9.]*\).*/\1/p' >>"$tmp/$name.lm"
    "$LC/llama-bench" -m "$g" -p 0 -n $NTOK -t "$THREADS" -r 1 -o csv 2>/dev/null |
      awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /avg_ts/) c = i; next }
               c { gsub(/"/, "", $c); print $c }' >>"$tmp/$name.lc"
    if [ -n "$RUNC" ] && [ -s "$M/$name.bin" ] && [ "${name#*-}" = f32 ]; then
      "$RUNC" "$M/$name.bin" -z "$M/$name.bin.tokenizer.bin" -t 0 -n $((NTOK + 4)) -i "$PROMPT" 2>&1 >/dev/null |
        sed -n 's/.*achieved tok\/s: \([0-9.]*\).*/\1/p' >>"$tmp/$name.rc"
    fi
  done
done
printf '   %-12s %24s %24s %24s %10s\n' model lmserve llama.cpp run.c "lm/llama"
for name in $MODELS; do
  lm=$(median_range <"$tmp/$name.lm"); lc=$(median_range <"$tmp/$name.lc"); rc=$(median_range <"$tmp/$name.rc")
  ratio=$(awk -v a="${lm%% *}" -v b="${lc%% *}" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-" }')
  printf '   %-12s %24s %24s %24s %10s\n' "$name" "$lm" "$lc" "$rc" "$ratio"
done
echo "   lmserve:   $LM generate --model $M/NAME.gguf --prompt \"$PROMPT\" --max-tokens $NTOK --temperature 0 --threads $THREADS"
echo "   llama.cpp: $LC/llama-bench -m $M/NAME.gguf -p 0 -n $NTOK -t $THREADS -r 1"
[ -n "$RUNC" ] && echo "   run.c:     $RUNC $M/NAME.bin -z $M/NAME.bin.tokenizer.bin -t 0 -n $((NTOK + 4)) -i \"$PROMPT\""
fi

start_server() { # label port cmd... -> starts it, waits until /health answers
  local label=$1 p=$2; shift 2
  "$@" >"$tmp/$label.log" 2>&1 &
  server_pid="$server_pid $!"
  for _ in $(seq 300); do
    if curl -fs "http://127.0.0.1:$p/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$!" 2>/dev/null || break
    sleep 0.2
  done
  echo "side-by-side: $label did not start:" >&2; tail -20 "$tmp/$label.log" >&2; exit 1
}

if [ "$LOAD" = 1 ]; then
# One row of serve-load.sh output per (round, shape, server): medians over the rounds.
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
med() { sort -g | awk '$1 != "-" && $1 != "" { v[++n] = $1 } END {
  if (!n) { printf "-"; exit } m = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2; printf "%.1f", m }'; }
# median of key over the lines of label (and level c, when given)
col() { local lab=$1 key=$2 c=${3:-} pat
  if [ -n "$c" ]; then pat="^level label=$lab c=$c "; else pat="^(start|end) label=$lab "; fi
  grep -E "$pat" "$tmp/load.rows" | while read -r l; do kv "$key" "$l"; done | med; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-" }'; }
model_name() { case $1 in 15M) echo s15m ;; 110M) echo s110m ;; 360M) echo smol360m ;; *) echo "$1" ;; esac; }
: >"$tmp/load.rows"
echo
echo "-- load: per shape (F32 GGUF), concurrency $LEVELS, bench/loadgen: streaming, $NTOK tokens at T 0.8, requests start for"
echo "   ${DURATION} s; medians over $ROUNDS interleaved rounds (each round: per shape, lmserve then llama-server, all levels)."
echo "   start = exec -> first /health 200; RSS = peak resident memory at ready / over the run (VmHWM)"
for r in $(seq "$ROUNDS"); do
  for shape in $SHAPES; do
    name=$(model_name "$shape")-f32
    ensure_model "$name"
    g=$M/$name.gguf
    slot=$(gguf_ctx "$shape")
    lm_cmd=("$LM" serve --model "$g" --host 127.0.0.1 --port "$port" --parallel 64 --queue 256
            --threads "$THREADS" --kv-type f32)
    lc_cmd=("$LC/llama-server" -m "$g" -c $((slot * LLAMA_NP)) -np "$LLAMA_NP" -t "$THREADS" -tb "$THREADS" -cb
            --host 127.0.0.1 --port "$port")
    if [ "$r" = 1 ]; then
      echo "   $shape: lmserve:      ${lm_cmd[*]}"
      echo "   $shape: llama-server: ${lc_cmd[*]}"
    fi
    if [ -x "$BENCH_FWD" ]; then
      "$BENCH_FWD" --model "$g" --threads "$THREADS" --gen 8 --prompt 8 --runs 1 --batch 16 --steps $NTOK 2>/dev/null |
        sed -n "s/^batch *16: \([0-9.]*\) tok\/s.*/engine label=eng-$shape b16=\1/p" >>"$tmp/load.rows" || true
    fi
    for who in lm lc; do
      if [ $who = lm ]; then cmd=("${lm_cmd[@]}"); else cmd=("${lc_cmd[@]}"); fi
      LOAD_DURATION=$DURATION LOAD_MAX_TIME=$((DURATION * 2)) LOAD_MAX_TOKENS=$NTOK LOADGEN=$LOADGEN \
        scripts/serve-load.sh "$who-$shape" "$port" "$LEVELS" -- "${cmd[@]}" >>"$tmp/load.rows" ||
        echo "   round $r: $who $shape failed" >&2
    done
  done
done
for shape in $SHAPES; do
  echo
  b16=$(grep "^engine label=eng-$shape " "$tmp/load.rows" | while read -r l; do kv b16 "$l"; done | med)
  echo "   $shape: start lmserve $(col "lm-$shape" load_s) s / llama-server $(col "lc-$shape" load_s) s;" \
       "RSS at ready $(col "lm-$shape" rss_ready_mb) / $(col "lc-$shape" rss_ready_mb) MB," \
       "peak $(col "lm-$shape" rss_peak_mb) / $(col "lc-$shape" rss_peak_mb) MB; engine batch 16 (bench_forward --steps $NTOK): $b16 tok/s"
  printf '   %5s %9s %9s %7s | %9s %9s | %9s %9s | %8s %8s | %s\n' c "lm tok/s" "lc tok/s" "lm/lc" \
    "lm TTFT50" "lc TTFT50" "lm TTFT99" "lc TTFT99" "lm strm" "lc strm" "lm timeline p50: queue wait fwd out ms, steps p50/p99"
  for c in $LEVELS; do
    a=$(col "lm-$shape" tok_s "$c") b=$(col "lc-$shape" tok_s "$c")
    printf '   %5s %9s %9s %7s | %9s %9s | %9s %9s | %8s %8s | %s %s %s %s, %s/%s\n' "$c" "$a" "$b" "$(ratio "$a" "$b")" \
      "$(col "lm-$shape" ttft_p50 "$c")" "$(col "lc-$shape" ttft_p50 "$c")" \
      "$(col "lm-$shape" ttft_p99 "$c")" "$(col "lc-$shape" ttft_p99 "$c")" \
      "$(col "lm-$shape" stream_p50 "$c")" "$(col "lc-$shape" stream_p50 "$c")" \
      "$(col "lm-$shape" queue_p50 "$c")" "$(col "lm-$shape" wait_p50 "$c")" "$(col "lm-$shape" fwd_p50 "$c")" \
      "$(col "lm-$shape" out_p50 "$c")" "$(col "lm-$shape" steps_p50 "$c")" "$(col "lm-$shape" steps_p99 "$c")"
  done
done
echo "   loadgen: $LOADGEN --url http://127.0.0.1:$port --concurrency N --max-tokens $NTOK --temperature 0.8 --duration $DURATION --max-time $((DURATION * 2)) --seed 1 --json"
echo "   load average after:$(uptime | sed 's/.*load average://')"
if [ -n "${COMPARE_ROWS:-}" ]; then cp "$tmp/load.rows" "$COMPARE_ROWS"; fi
fi

[ "$AGREE" = 1 ] || exit 0
echo
echo "-- agreement: greedy 100-token completions, lmserve vs llama-server -ctk f32 -ctv f32 -fa off"
pairs=("$REAL/stories260K.gguf:stories" "models/default/model.gguf:kjv")
if [ -x "$LC/llama-quantize" ] && [ -s "$REAL/stories260K.gguf" ]; then
  "$LC/llama-quantize" "$REAL/stories260K.gguf" "$tmp/stories260K-q8_0.gguf" Q8_0 >/dev/null 2>&1 &&
    pairs+=("$tmp/stories260K-q8_0.gguf:stories")
  "$LC/llama-quantize" --tensor-type ffn_down=f32 "$REAL/stories260K.gguf" "$tmp/stories260K-q8_0-down-f32.gguf" \
    Q8_0 >/dev/null 2>&1 && pairs+=("$tmp/stories260K-q8_0-down-f32.gguf:stories")
fi
for pair in "${pairs[@]}"; do
  f=${pair%:*} set=${pair##*:}
  if [ ! -s "$f" ]; then echo "   $f: missing (set LMSERVE_MODELS, or make models)"; continue; fi
  start_server lmserve-agree "$port" "$LM" serve --model "$f" --host 127.0.0.1 --port "$port" --threads "$THREADS"
  start_server llama-agree "$port2" "$LC/llama-server" -m "$f" -np 1 -t "$THREADS" -ctk f32 -ctv f32 -fa off \
    --host 127.0.0.1 --port "$port2"
  out=$(python3 scripts/compare-greedy.py "http://127.0.0.1:$port" "http://127.0.0.1:$port2" 100 "$set") || true
  echo "   $f ($set prompts): $(tail -1 <<<"$out")"
  grep '^   differs' <<<"$out" | sed 's/^/  /' || true
  stop_server
done
