#!/usr/bin/env bash
# bench.sh -- `make bench`: run every benchmark section, scripts/bench-*.sh, in order.
# Each section is its own script so the engine, sampler and load benchmarks can be
# rerun alone (e.g. scripts/bench-engine.sh).  Environment: LMSERVE_BIN, LMSERVE_BUILD.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
for s in scripts/bench-*.sh; do
  [ -e "$s" ] || continue
  echo "== $s"
  bash "$s" || rc=1
done
exit $rc
