#!/usr/bin/env bash
# quant-agree.sh -- lmserve quantize and lmserve's quantized kernels against llama.cpp, per type.
#
# For every source model and every file type: the source is quantized by llama-quantize and by
# `lmserve quantize`; the two files are compared byte for byte (cmp); then llama.cpp's file is
# served by lmserve and by llama-server (-ctk f32 -ctv f32 -fa off: F32 KV cache, no flash
# attention, lmserve's arithmetic) and scripts/compare-greedy.py compares the greedy
# continuations of fixed prompts and the chosen tokens' logprobs (up to the first difference).
# One line per (model, type): bytes, continuations identical / prompts, largest logprob difference,
# and how many first generated tokens agree within 1e-4 (see compare-greedy.py).
#
# Models: tests/data/models/stories260K.gguf (F32, rows of 64 and 172: the K-quants fall back),
# models/default/model.gguf (F16, rows of 192 and 512) and a small KJV model whose rows are all
# multiples of 256 (dim 256, hidden 768, untied classifier: build/agree/kjv256.gguf, trained on
# first use by `lmserve train` with AGREE_256_TRAIN, a few minutes on 2 cores; a random-weight
# model would not do: its greedy tokens have probability ~1, so every logprob is 0).
#
# Environment: LLAMA_CPP_BIN [build/ref/llama.cpp/build/bin] (llama-quantize, llama-server);
#   LLAMA_CPP_LIBS [none] a directory put first on LD_LIBRARY_PATH for llama-server (e.g. a
#   ggml built without AVX512-FP16, whose F16 products accumulate in floats like lmserve's);
#   AGREE_TYPES [all of llama-quantize's; "source" serves the unquantized file]; AGREE_MODELS [the three above, as FILE:PROMPTSET];
#   AGREE_LLAMA_ARGS [none] more llama-server options (e.g. "-ub 1": one token per ubatch, so
#   llama.cpp computes every row as it computes one decoded token -- lmserve's arithmetic for
#   every row; with its default batching a prompt's rows go through its batched kernels);
#   AGREE_TOKENS [100]; THREADS [1] for the servers (the outputs do not depend on it; one thread
#   keeps llama-server's spinning workers from crawling on a busy machine); COMPARE_PORT [18193].
set -euo pipefail
cd "$(dirname "$0")/.."

B=${LMSERVE_BUILD:-build/release}
LM=${LMSERVE_BIN:-$B/lmserve}
LC=${LLAMA_CPP_BIN:-build/ref/llama.cpp/build/bin}
TYPES=${AGREE_TYPES:-"Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"}
NTOK=${AGREE_TOKENS:-100}
THREADS=${THREADS:-1}
port=${COMPARE_PORT:-18193}
port2=$((port + 1))
G256=${AGREE_256:-build/agree/kjv256.gguf}
G256_TRAIN=${AGREE_256_TRAIN:-"--dim 256 --layers 2 --heads 4 --hidden 768 --ctx 128 --steps 300 --batch 2 --lr 3e-3 --warmup 30 --seed 1337 --threads 1 --untied --eval-every 0 --eval-tokens 4096"}
MODELS=${AGREE_MODELS:-"tests/data/models/stories260K.gguf:stories models/default/model.gguf:kjv $G256:kjv"}

for f in "$LM" "$LC/llama-quantize" "$LC/llama-server"; do
  [ -x "$f" ] || { echo "quant-agree: $f is missing" >&2; exit 1; }
done
if [[ " $MODELS " == *" $G256:"* ]] && [ ! -s "$G256" ]; then
  mkdir -p "$(dirname "$G256")"
  [ -s build/corpus/kjv.txt ] || scripts/make-corpus.sh build/corpus
  echo "-- training $G256 (lmserve train $G256_TRAIN)" >&2
  # shellcheck disable=SC2086
  nice "$LM" train --data build/corpus/kjv.txt --out "$G256" --ckpt "${G256%.gguf}.ckpt.gguf" $G256_TRAIN \
    --quiet >/dev/null
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lmserve-agree.XXXXXX")
server_pid=
stop_server() {
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
start_server() { # label port cmd...
  local label=$1 p=$2; shift 2
  "$@" >"$tmp/$label.log" 2>&1 &
  server_pid="$server_pid $!"
  for _ in $(seq 600); do
    if curl -fs "http://127.0.0.1:$p/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$!" 2>/dev/null || break
    sleep 0.2
  done
  echo "quant-agree: $label did not start:" >&2; tail -20 "$tmp/$label.log" >&2; exit 1
}

echo "== quant-agree ($(date -u +%FT%TZ), load average:$(uptime | sed 's/.*load average://'))"
echo "   llama.cpp: $LC ($("$LC/llama-server" --version 2>&1 | sed -n 's/^version: //p' | head -1))${LLAMA_CPP_LIBS:+, libraries from $LLAMA_CPP_LIBS}${AGREE_LLAMA_ARGS:+, llama-server $AGREE_LLAMA_ARGS}"
printf '%-22s %-7s %-34s %s\n' model type "bytes (llama-quantize vs lmserve)" "greedy $NTOK tokens on llama-quantize's file"
for pair in $MODELS; do
  f=${pair%:*} set=${pair##*:} base=$(basename "${pair%:*}" .gguf)
  for t in $TYPES; do
    if [ "$t" = source ]; then # the unquantized file itself
      start_server lmserve "$port" "$LM" serve --model "$f" --host 127.0.0.1 --port "$port" --threads "$THREADS"
      # shellcheck disable=SC2086
      start_server llama "$port2" env ${LLAMA_CPP_LIBS:+LD_LIBRARY_PATH="$LLAMA_CPP_LIBS"} \
        "$LC/llama-server" -m "$f" -np 1 -t "$THREADS" -ctk f32 -ctv f32 -fa off ${AGREE_LLAMA_ARGS:-} --host 127.0.0.1 --port "$port2"
      out=$(python3 scripts/compare-greedy.py "http://127.0.0.1:$port" "http://127.0.0.1:$port2" "$NTOK" "$set") || true
      printf '%-22s %-7s %-34s %s\n' "$base" "$t" "-" "$(tail -1 <<<"$out")"
      stop_server
      continue
    fi
    a=$tmp/$base-$t.lc.gguf b=$tmp/$base-$t.lm.gguf
    "$LC/llama-quantize" "$f" "$a" "$t" "$THREADS" >"$tmp/lq.log" 2>&1 ||
      { echo "$base $t: llama-quantize failed"; tail -5 "$tmp/lq.log"; continue; }
    "$LM" quantize "$f" "$b" --type "$t" --threads "$THREADS" --quiet ||
      { echo "$base $t: lmserve quantize failed"; continue; }
    if cmp -s "$a" "$b"; then bytes="identical ($(stat -c %s "$a") B)"
    else bytes="DIFFER: $(cmp "$a" "$b" 2>&1 | head -1 | sed 's/.*differ: //')"; fi
    start_server lmserve "$port" "$LM" serve --model "$a" --host 127.0.0.1 --port "$port" --threads "$THREADS"
    # shellcheck disable=SC2086
    start_server llama "$port2" env ${LLAMA_CPP_LIBS:+LD_LIBRARY_PATH="$LLAMA_CPP_LIBS"} \
      "$LC/llama-server" -m "$a" -np 1 -t "$THREADS" -ctk f32 -ctv f32 -fa off ${AGREE_LLAMA_ARGS:-} --host 127.0.0.1 --port "$port2"
    out=$(python3 scripts/compare-greedy.py "http://127.0.0.1:$port" "http://127.0.0.1:$port2" "$NTOK" "$set") || true
    printf '%-22s %-7s %-34s %s\n' "$base" "$t" "$bytes" "$(tail -1 <<<"$out")"
    stop_server
    rm -f "$a" "$b"
  done
done
