# shapes.sh -- sourced by the benchmark scripts: the bench models' shapes, one place.
# shape_args NAME -> bench/gen_model shape options; NAME is s15m or 15M (stories15M-like),
# s110m or 110M (stories110M-like), smol360m or 360M (SmolLM-360M-like: dim 960, 32 layers,
# 15 heads over 5 KV heads, vocabulary 49152, tied classifier).
shape_args() {
  case $1 in
    s15m | 15M)   echo "--dim 288 --hidden 768 --layers 6 --heads 6 --kv-heads 6 --vocab 32000 --ctx 256" ;;
    s110m | 110M) echo "--dim 768 --hidden 2048 --layers 12 --heads 12 --kv-heads 12 --vocab 32000 --ctx 1024" ;;
    smol360m | 360M) echo "--dim 960 --hidden 2560 --layers 32 --heads 15 --kv-heads 5 --vocab 49152 --ctx 2048" ;;
    *) echo "unknown model shape $1 (s15m/15M, s110m/110M or smol360m/360M)" >&2; return 1 ;;
  esac
}
