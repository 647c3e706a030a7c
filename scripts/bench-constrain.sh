#!/usr/bin/env bash
# bench-constrain.sh -- the per-token cost of constrained decoding (a JSON Schema, any
# JSON object, a choice, a GBNF grammar) beside one decode step, for two shapes:
#   15M:  a random-weight stories15M-shaped llama2.c checkpoint with the Llama 2
#         tokenizer (tests/data/models/tokenizer.bin, 32,000 tokens: stories15M's own);
#   360M: a random-weight SmolLM-360M-shaped GGUF (dim 960, 32 layers, 15 heads, 5 kv
#         heads, vocab 49,152; F32 and Q8_0), its constraints run on SmolLM's real
#         vocabulary (tests/data/fixtures/tokenizers/smollm-135m-derived) through a
#         tiny generated Hugging Face folder that carries it.
# Models go to build/bench-models/ (generated once).  See bench/bench_constrain.c for
# what is timed.  Environment: LMSERVE_BUILD, BENCH_THREADS (default 2),
# CONSTRAIN_SHAPES (default "15M 360M").
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LMSERVE_BUILD:-build/release}
M=build/bench-models
THREADS=${BENCH_THREADS:-2}
SHAPES=${CONSTRAIN_SHAPES:-"15M 360M"}
gen=$B/bench/gen_model
bc=$B/bench/bench_constrain
for t in "$gen" "$bc"; do
  [ -x "$t" ] || { echo "bench-constrain: $t is not built (run make bench)" >&2; exit 1; }
done
data=${LMSERVE_MODELS:-tests/data/models}
fixtures=${LMSERVE_FIXTURES:-tests/data/fixtures}
mkdir -p "$M"
# shellcheck source=scripts/shapes.sh
. scripts/shapes.sh

# A one-layer Hugging Face llama folder (zero weights) whose only use is its tokenizer.
smol_vocab() {
  local dir=$M/smollm-vocab
  if [ ! -s "$dir/model.safetensors" ]; then
    mkdir -p "$dir"
    cp "$fixtures/tokenizers/smollm-135m-derived/tokenizer.json" "$dir/"
    python3 - "$dir" <<'PY'
import json, struct, sys
d = sys.argv[1]
V, D, H, L = 49152, 64, 128, 1
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V,
           "hidden_size": D, "intermediate_size": H, "num_hidden_layers": L,
           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}, open(d + "/config.json", "w"))
shapes = {"model.embed_tokens.weight": [V, D], "model.norm.weight": [D]}
for l in range(L):
    p = "model.layers.%d." % l
    shapes.update({p + "input_layernorm.weight": [D], p + "post_attention_layernorm.weight": [D],
                   p + "self_attn.q_proj.weight": [D, D], p + "self_attn.k_proj.weight": [D, D],
                   p + "self_attn.v_proj.weight": [D, D], p + "self_attn.o_proj.weight": [D, D],
                   p + "mlp.gate_proj.weight": [H, D], p + "mlp.up_proj.weight": [H, D],
                   p + "mlp.down_proj.weight": [D, H]})
header, off = {}, 0
for name, shape in shapes.items():
    n = 4
    for s in shape:
        n *= s
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}
    off += n
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(d + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    f.truncate(8 + len(h) + off)
PY
  fi
  echo "$dir"
}

NICE=()
if nice -n -5 true 2>/dev/null; then NICE=(nice -n -5); fi
echo "load before: $(uptime)"
for shape in $SHAPES; do
  case $shape in
    15M)
      file=$M/s15m-f32.bin
      if [ ! -s "$file" ]; then
        echo "generating $file" >&2
        # shellcheck disable=SC2046
        nice "$gen" --out "$file" --format llama2c $(shape_args s15m) >&2
      fi
      echo "== 15M shape, F32, Llama 2 vocabulary (32,000)"
      "${NICE[@]}" "$bc" --model "$file" --tokenizer "$data/tokenizer.bin" --threads "$THREADS" ;;
    360M)
      vdir=$(smol_vocab)
      for type in f32 q8_0; do
        file=$M/s360m-$type.gguf
        if [ ! -s "$file" ]; then
          echo "generating $file" >&2
          # shellcheck disable=SC2046
          nice "$gen" --out "$file" --format gguf --type "$type" $(shape_args smol360m) >&2
        fi
        echo "== SmolLM-360M shape, ${type^^}, SmolLM vocabulary (49,152)"
        "${NICE[@]}" "$bc" --model "$file" --vocab-model "$vdir" --threads "$THREADS" --steps 16
      done ;;
    *) echo "bench-constrain: unknown shape $shape (15M or 360M)" >&2; exit 2 ;;
  esac
done
echo "load after: $(uptime)"
