#!/usr/bin/env bash
# fuzz.sh -- build the libFuzzer targets in fuzz/ with clang (ASan + UBSan) and run
# each for FUZZ_SECONDS (default 60).  Used by `make fuzz`; CI runs it briefly.
#
# Seed corpora come from the real files in $LMSERVE_MODELS / $LMSERVE_FIXTURES and
# from tests/fuzz-seeds/<target>/; the growing corpus lives in build/fuzz/corpus/<target>.
# A crash stops the run with the reproducer path; turn it into a regression test by
# committing the input under tests/fuzz-regressions/<target>/ (replayed by `make test`
# through tests/fuzz/test_<target>.c, and here before each run).
# FUZZ_TARGETS="a b" runs only those targets.  Prints one line per target:
#   <target>: <N> executions in <S>s, no crash (corpus <K> files)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
only=${FUZZ_TARGETS:-}
out=build/fuzz
mkdir -p "$out/corpus"
CC=${FUZZ_CC:-clang}
PKG_CFLAGS=$(pkg-config --cflags libmicrohttpd jansson libuv)
PKG_LIBS=$(pkg-config --libs libmicrohttpd jansson libuv)
# -march=native: the model's AVX2 kernels are what fuzz_quant checks against their portable
# statement (FUZZ_MARCH= for a portable build)
MARCH=${FUZZ_MARCH--march=native}
CFLAGS="-g -O1 $MARCH -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. -D_GNU_SOURCE -std=c11 -pthread $PKG_CFLAGS"
models=${LMSERVE_MODELS:-tests/data/models}
fixtures=${LMSERVE_FIXTURES:-tests/data/fixtures}

LIBCFLAGS="-g -O1 $MARCH -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -I. -D_GNU_SOURCE -std=c11 -pthread $PKG_CFLAGS"

# The modules are compiled once into build/fuzz/obj/<module>.a (an object is rebuilt
# when its source or any header is newer); each target then compiles only its own
# file and links the archives it needs.
build_module() { # module -> build/fuzz/obj/lib<module>.a
  local m=$1 objs=() newest_h
  mkdir -p "$out/obj/$m"
  newest_h=$(ls -t model/*.h model/*/*.h sampler/*.h server/*.h web/*.h 2>/dev/null | head -1)
  local todo=()
  for c in "$m"/*.c "$m"/*/*.c; do
    [ -f "$c" ] || continue
    local o=$out/obj/$m/$(tr / _ <<<"${c%.c}").o
    objs+=("$o")
    if [ ! -f "$o" ] || [ "$c" -nt "$o" ] || { [ -n "$newest_h" ] && [ "$newest_h" -nt "$o" ]; }; then todo+=("$c"); fi
  done
  if [ ${#todo[@]} -gt 0 ]; then
    # shellcheck disable=SC2086
    printf '%s\n' "${todo[@]}" | xargs -P 2 -I{} sh -c \
      '$0 '"$LIBCFLAGS"' -c "$1" -o "$2/$(echo "${1%.c}" | tr / _).o"' "$CC" {} "$out/obj/$m" || return 1
  fi
  rm -f "$out/obj/lib$m.a" && ar rcs "$out/obj/lib$m.a" "${objs[@]}"
}

libs_for() {
  case $1 in
    fuzz_request) echo "$out/obj/libserver.a $out/obj/libsampler.a $out/obj/libmodel.a" ;;
    fuzz_schema) echo "$out/obj/libserver.a $out/obj/libsampler.a" ;;
    fuzz_grammar) echo "$out/obj/libsampler.a" ;;
    *) echo "$out/obj/libmodel.a" ;;
  esac
}

seed_corpus() { # target dir
  local t=$1 d=$2
  mkdir -p "$d"
  case $t in
    fuzz_model_file)
      for f in "$models"/stories260K.gguf "$models"/stories260K.bin "$fixtures"/gguf/*.gguf; do
        [ -f "$f" ] && cp -n "$f" "$d/" || true
      done ;;
    fuzz_tokenizer_file)
      [ -f "$models/tok512.bin" ] && cp -n "$models/tok512.bin" "$d/" || true ;;
  esac
  if [ -d "tests/fuzz-seeds/$t" ]; then cp -n tests/fuzz-seeds/"$t"/* "$d/" 2>/dev/null || true; fi
}

# Largest input per target: whole real model files for fuzz_model_file (so the
# seeds are not cut), small elsewhere (faster mutations).
max_len_for() {
  case $1 in
    fuzz_model_file) echo 2097152 ;;
    fuzz_gguf_struct) echo 256 ;;
    fuzz_tokenizer) echo 4096 ;;
    fuzz_grammar | fuzz_schema) echo 2048 ;;
    *) echo 65536 ;;
  esac
}

status=0
build_module model || exit 1
if [ -f server/http.h ] && { [ -z "$only" ] || [[ " $only " == *" fuzz_request "* ]] || [[ " $only " == *" fuzz_schema "* ]]; }; then
  build_module sampler && build_module server || exit 1
elif [ -z "$only" ] || [[ " $only " == *" fuzz_grammar "* ]]; then
  build_module sampler || exit 1
fi
for src in fuzz/fuzz_*.c; do
  t=$(basename "$src" .c)
  [ -n "$only" ] && [[ " $only " != *" $t "* ]] && continue
  bin=$out/$t
  # shellcheck disable=SC2046
  $CC $CFLAGS -o "$bin" "$src" $(libs_for "$t") $PKG_LIBS -lm || { echo "$t: does not build"; status=1; continue; }
  corpus=$out/corpus/$t
  seed_corpus "$t" "$corpus"
  # Replay committed regressions first.
  if [ -d "tests/fuzz-regressions/$t" ]; then
    "$bin" -runs=0 tests/fuzz-regressions/"$t"/* >/dev/null 2>&1 || { echo "$t: a regression input fails"; status=1; }
  fi
  log=$out/$t.log
  if LMSERVE_MODELS=$models LMSERVE_FIXTURES=$fixtures "$bin" -max_total_time="$secs" -max_len="$(max_len_for "$t")" -timeout=20 -rss_limit_mb=4096 \
        -artifact_prefix="$out/$t-" -print_final_stats=1 "$corpus" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "$t: ${execs:-?} executions in ${secs}s, no crash (corpus $(ls "$corpus" | wc -l) files)"
  else
    echo "$t: FAILED — see $log"; grep -m5 -E 'ERROR|SUMMARY|Test unit written' "$log" || true
    status=1
  fi
done
exit $status
