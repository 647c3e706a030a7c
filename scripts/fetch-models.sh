#!/usr/bin/env bash
# fetch-models.sh DIR -- download the public test models (`make models`), check their sha256.
#
# The same four files the test suite uses (tests/data/models holds copies; provenance
# in tests/data/SOURCES.md; the sha256 values are the ones pinned publicly for these
# files), from their public homes.  Needs the internet.  To test against them instead
# of the repository's copies: make test LMSERVE_MODELS=$PWD/DIR
set -euo pipefail
dir=${1:-models}
mkdir -p "$dir"
tiny=https://huggingface.co/karpathy/tinyllamas/resolve/0bd21da7698eaf29a0d7de3992de8a46ef624add/stories260K
files=(
  "stories260K.bin|$tiny/stories260K.bin|b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"
  "tok512.bin|$tiny/tok512.bin|037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312"
  "tokenizer.bin|https://raw.githubusercontent.com/karpathy/llama2.c/350e04fe35433e6d2941dce5a1f53308f87058eb/tokenizer.bin|50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"
  "stories260K.gguf|https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf|270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
)
for entry in "${files[@]}"; do
  IFS='|' read -r name url sum <<<"$entry"
  out="$dir/$name"
  if [ -f "$out" ] && echo "$sum  $out" | sha256sum -c --quiet - 2>/dev/null; then
    echo "have $out"; continue
  fi
  echo "fetching $name"
  curl -fL --retry 3 -o "$out.part" "$url"
  if ! echo "$sum  $out.part" | sha256sum -c --quiet -; then
    echo "fetch-models: $name: sha256 mismatch, file discarded" >&2
    rm -f "$out.part"; exit 1
  fi
  mv "$out.part" "$out"
done
echo "models in $dir; run the tests with: make test LMSERVE_MODELS=$PWD/$dir"
