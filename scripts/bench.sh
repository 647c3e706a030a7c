#!/usr/bin/env bash
# bench.sh -- `make bench`: run every benchmark section, scripts/bench-*.sh, in order.
# Each section is its own script so the engine, sampler and load benchmarks can be
# rerun alone (e.g. scripts/bench-engine.sh); scripts/bench-doc.sh is not a section.
# Environment: LMSERVE_BIN, LMSERVE_BUILD.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
for s in scripts/bench-*.sh; do
  [ -e "$s" ] || continue
  [ "$s" = scripts/bench-doc.sh ] && continue # writes a run into docs/; it calls make bench itself
  echo "== $s"
  bash "$s" || rc=1
done
exit $rc
