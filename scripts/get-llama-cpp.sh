#!/usr/bin/env bash
# get-llama-cpp.sh -- build llama.cpp's llama-bench, llama-server and llama-quantize for the side-by-side
# benchmark (scripts/side-by-side.sh, `make bench-compare`).  Not used by `make test`.
#
# Source, first that works:
#   1. LLAMA_CPP_SRC=DIR: an existing llama.cpp checkout;
#   2. git clone https://github.com/ggml-org/llama.cpp (LLAMA_CPP_REF, default: its default branch);
#   3. the npm package node-llama-cpp (LLAMA_CPP_NPM_VERSION, default 3.22.1), which ships the
#      llama.cpp source it binds as a git bundle (llama/gitRelease.bundle): this works on
#      machines that reach the npm registry but not GitHub.
# Built natively (-DGGML_NATIVE=ON, Release) into build/ref/llama.cpp/build/bin/.
# Needs git, cmake and a C++ compiler (Debian: apt-get install git cmake g++).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=build/ref/llama.cpp
NPM_VERSION=${LLAMA_CPP_NPM_VERSION:-3.22.1}
JOBS=${JOBS:-$(nproc)}

for t in git cmake c++; do
  command -v "$t" >/dev/null || { echo "get-llama-cpp: $t is missing (apt-get install git cmake g++)" >&2; exit 1; }
done
mkdir -p build/ref

if [ -n "${LLAMA_CPP_SRC:-}" ]; then
  src=$(cd "$LLAMA_CPP_SRC" && pwd)
  # side-by-side.sh looks in build/ref/llama.cpp/build/bin
  [ -e "$DEST" ] || ln -s "$src" "$DEST"
elif [ -d "$DEST/.git" ]; then
  src=$DEST
  echo "get-llama-cpp: using the checkout in $DEST ($(git -C "$DEST" log --oneline -1 | cut -c1-60))"
else
  src=$DEST
  if timeout 60 git clone -q --depth 1 ${LLAMA_CPP_REF:+--branch "$LLAMA_CPP_REF"} \
       https://github.com/ggml-org/llama.cpp "$DEST" 2>/dev/null; then
    echo "get-llama-cpp: cloned github.com/ggml-org/llama.cpp"
  else
    rm -rf "$DEST"
    command -v npm >/dev/null || { echo "get-llama-cpp: GitHub unreachable and npm missing" >&2; exit 1; }
    echo "get-llama-cpp: GitHub unreachable; taking the source from npm node-llama-cpp@$NPM_VERSION"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/llama-npm.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "node-llama-cpp@$NPM_VERSION" >/dev/null && tar xzf node-llama-cpp-*.tgz)
    bundle=$tmp/package/llama/gitRelease.bundle
    [ -s "$bundle" ] || { echo "get-llama-cpp: no llama/gitRelease.bundle in the npm package" >&2; exit 1; }
    git -c advice.detachedHead=false clone -q "$bundle" "$DEST"
    cp "$tmp/package/llama/llama.cpp.info.json" "$DEST/NPM-SOURCE.json" 2>/dev/null || true
  fi
fi

echo "get-llama-cpp: building llama-bench and llama-server in $src/build ($JOBS jobs)"
cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
cmake --build "$src/build" -j "$JOBS" --target llama-bench llama-server llama-quantize >/dev/null
for t in llama-bench llama-server llama-quantize; do
  [ -x "$src/build/bin/$t" ] || { echo "get-llama-cpp: $src/build/bin/$t was not built" >&2; exit 1; }
done
echo "get-llama-cpp: $src/build/bin/llama-bench and llama-server are ready"
