#!/usr/bin/env bash
# bench-engine.sh -- decode speed of the engine on random-weight models of real shapes
# (scripts/shapes.sh: stories15M, stories110M, SmolLM-360M) in every weight type, and
# its share of the memory-bandwidth bound.
#
# Models are generated once into build/bench-models/ (the weights' values do not
# change the speed): NAME = SHAPE-TYPE, TYPE f32 (a llama2.c checkpoint) or any
# bench/gen_model --type (f16, bf16, q8_0, q4_0, q4_k_m, ...; the mixtures are made by
# `lmserve quantize`'s code from an F16 file).  For each model: single-stream decode
# tok/s (256 tokens after an 8-token prompt, median of 3 runs) and batched decode tok/s
# at batch 1/4/16/64 (every sequence advanced by one token per model_forward call).
# Just before each model, bench/membw measures the machine's memory read rate (2
# threads, a buffer as large as the model's weights but at least 256 MiB): single-stream
# decoding reads every weight once per token, so rate / weight bytes is its ceiling
# (the "bound" column) and single / bound its share ("share"; part of a small model can
# stay in the last-level cache, so small models may pass 100 %).  First, one core's FMA
# rate (membw --fma), the arithmetic ceiling at the clock the VM runs at during the run.
# Environment: LMSERVE_BUILD (default build/release), BENCH_THREADS (default 2),
# BENCH_MODELS (default below), BENCH_BATCH (default 1,4,16,64).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LMSERVE_BUILD:-build/release}
M=build/bench-models
THREADS=${BENCH_THREADS:-2}
MODELS=${BENCH_MODELS:-"s15m-f32 s15m-q8_0 s15m-q4_k_m s110m-f32 s110m-f16 s110m-bf16 s110m-q8_0 s110m-q4_k_m smol360m-f16 smol360m-bf16 smol360m-q8_0 smol360m-q4_k_m"}
BATCH=${BENCH_BATCH:-1,4,16,64}
gen=$B/bench/gen_model
bf=$B/bench/bench_forward
for t in "$gen" "$bf" "$B/bench/membw"; do
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
fma_line=$("${NICE[@]}" "$B/bench/membw" --fma --threads "$THREADS" 256 | sed -n 1p)
echo "$fma_line"
rows=()
cmds=()
for name in $MODELS; do
  args=$(model_args "$name")
  cmd="${NICE[*]} $bf $args --threads $THREADS --gen 256 --prompt 8 --runs 3 --batch $BATCH --steps 32"
  # the read rate now, over a buffer the size of this model's weights
  mb=$("$bf" $args --threads 1 --gen 1 --prompt 1 --runs 1 --batch 1 --steps 1 2>/dev/null |
       sed -n 's/.*, \([0-9.]*\) MB of weights.*/\1/p')
  bufmb=$(awk -v m="$mb" 'BEGIN { v = int(m / 1.048576) + 1; print v < 256 ? 256 : v }')
  bw_line=$("${NICE[@]}" "$B/bench/membw" --threads "$THREADS" "$bufmb" | tail -1)
  bw=$(sed -n 's/^read.*: *\([0-9.]*\) GB\/s.*/\1/p' <<<"$bw_line")
  cmds+=("$cmd   (read rate: ${NICE[*]} $B/bench/membw --threads $THREADS $bufmb)")
  # shellcheck disable=SC2086
  out=$($cmd 2>&1) || { echo "$out"; echo "bench-engine: $name failed" >&2; exit 1; }
  echo "  $bw_line"
  echo "$out" | sed 's/^/  /'
  single=$(sed -n 's/^single stream: \([0-9.]*\) tok\/s.*/\1/p' <<<"$out")
  b=()
  for n in 1 4 16 64; do
    b+=("$(sed -n "s/^batch *$n: \([0-9.]*\) tok\/s aggregate.*/\1/p" <<<"$out")")
  done
  bound=$(awk -v bw="$bw" -v mb="$mb" 'BEGIN { if (mb > 0 && bw > 0) printf "%.1f", bw * 1000 / mb; else print "?" }')
  share=$(awk -v s="$single" -v b="$bound" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * s / b; else print "?" }')
  rows+=("$(printf '%-16s %8s %6s %9s %8s %6s %9s %9s %9s %9s' "$name" "$mb" "$bw" "$single" "$bound" "$share" \
    "${b[0]:--}" "${b[1]:--}" "${b[2]:--}" "${b[3]:--}")")
done
echo "load after: $(uptime)"
echo
echo "engine decode tokens/s ($THREADS threads; batch columns are aggregate over the batch)"
printf '%-16s %8s %6s %9s %8s %6s %9s %9s %9s %9s\n' model MB GB/s single bound share batch1 batch4 batch16 batch64
for r in "${rows[@]}"; do echo "$r"; done
echo
echo "MB = weight bytes (10^6); GB/s = memory read rate measured just before the model (membw, a"
echo "buffer of the weights' size); bound = GB/s / MB: the single-stream ceiling; share = single / bound"
echo "commands:"
echo "  ${NICE[*]} $B/bench/membw --fma --threads $THREADS 256"
for c in "${cmds[@]}"; do echo "  $c"; done
