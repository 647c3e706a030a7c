#!/usr/bin/env bash
# bench-engine.sh -- decode speed of the engine on random-weight models shaped like
# stories15M and stories110M, in F32 (llama2.c checkpoint) and Q8_0 (GGUF).
#
# Models are generated once into build/bench-models/ (the weights' values do not
# change the speed).  For each model: single-stream decode tok/s (256 tokens after an
# 8-token prompt, median of 3 runs) and batched decode tok/s at batch 1/4/16/64
# (every sequence advanced by one token per model_forward call).  First, bench/membw
# measures the machine's memory read rate (512 MiB, 2 threads): single-stream decoding
# reads every weight once per token, so rate / weight bytes is its ceiling (the
# "bound" column; approximate: part of a small model can stay in the last-level
# cache), and one core's FMA rate (--fma), the arithmetic ceiling at the clock the
# VM runs at during this run (it moves by ~20 % here; the batched kernels move with it).
# Environment: LMSERVE_BUILD (default build/release), BENCH_THREADS (default 2),
# BENCH_MODELS (default "s15m-f32 s15m-q8_0 s110m-f32 s110m-q8_0").
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LMSERVE_BUILD:-build/release}
M=build/bench-models
THREADS=${BENCH_THREADS:-2}
MODELS=${BENCH_MODELS:-"s15m-f32 s15m-q8_0 s110m-f32 s110m-q8_0"}
gen=$B/bench/gen_model
bf=$B/bench/bench_forward
for t in "$gen" "$bf"; do
  [ -x "$t" ] || { echo "bench-engine: $t is not built (run make bench)" >&2; exit 1; }
done
mkdir -p "$M"

# shellcheck source=scripts/shapes.sh
. scripts/shapes.sh

# Run at a higher priority when allowed (the machine is shared); else as is.
NICE=()
if nice -n -5 true 2>/dev/null; then NICE=(nice -n -5); fi

model_args() { # name -> the bench_forward arguments (generating the file if needed)
  local name=$1 shape type file
  shape=${name%%-*}; type=${name#*-}
  local sargs
  sargs=$(shape_args "$shape") || return 1
  if [ "$type" = f32 ]; then
    file=$M/$name.bin
    if [ ! -s "$file" ] || [ ! -s "$file.tokenizer.bin" ]; then
      echo "generating $file" >&2
      # shellcheck disable=SC2086
      nice "$gen" --out "$file" --format llama2c $sargs >&2
    fi
    echo "--model $file --tokenizer $file.tokenizer.bin"
  else
    file=$M/$name.gguf
    if [ ! -s "$file" ]; then
      echo "generating $file" >&2
      # shellcheck disable=SC2086
      nice "$gen" --out "$file" --format gguf --type "$type" $sargs >&2
    fi
    echo "--model $file"
  fi
}

echo "load before: $(uptime)"
bw_line=$("${NICE[@]}" "$B/bench/membw" --fma --threads "$THREADS" 512)
echo "$bw_line"
bw=$(sed -n 's/^read.*: *\([0-9.]*\) GB\/s.*/\1/p' <<<"$bw_line")
rows=()
cmds=()
for name in $MODELS; do
  args=$(model_args "$name")
  cmd="${NICE[*]} $bf $args --threads $THREADS --gen 256 --prompt 8 --runs 3 --batch 1,4,16,64 --steps 32"
  cmds+=("$cmd")
  # shellcheck disable=SC2086
  out=$($cmd 2>&1) || { echo "$out"; echo "bench-engine: $name failed" >&2; exit 1; }
  echo "$out" | sed 's/^/  /'
  single=$(sed -n 's/^single stream: \([0-9.]*\) tok\/s.*/\1/p' <<<"$out")
  b=()
  for n in 1 4 16 64; do
    b+=("$(sed -n "s/^batch *$n: \([0-9.]*\) tok\/s aggregate.*/\1/p" <<<"$out")")
  done
  mb=$(sed -n 's/.*, \([0-9.]*\) MB of weights.*/\1/p' <<<"$out")
  bound=$(awk -v bw="$bw" -v mb="$mb" 'BEGIN { if (mb > 0 && bw > 0) printf "%.0f", bw * 1000 / mb; else print "?" }')
  rows+=("$(printf '%-12s %10s %10s %10s %10s %10s %10s' "$name" "$single" "$bound" "${b[0]}" "${b[1]}" "${b[2]}" "${b[3]}")")
done
echo "load after: $(uptime)"
echo
echo "engine decode tokens/s ($THREADS threads; batch columns are aggregate over the batch)"
printf '%-12s %10s %10s %10s %10s %10s %10s\n' model single bound batch1 batch4 batch16 batch64
for r in "${rows[@]}"; do echo "$r"; done
echo
echo "targets (issue 2, single stream): s110m-f32 >= 67 (goal 108), s110m-q8_0 >= 160, s15m-f32 >= 600"
echo "bound = memory read rate ($bw GB/s) / weight bytes: the single-stream ceiling"
echo "commands:"
echo "  ${NICE[*]} $B/bench/membw --fma --threads $THREADS 512"
for c in "${cmds[@]}"; do echo "  $c"; done
