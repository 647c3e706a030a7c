#!/usr/bin/env bash
# bench-sampler.sh -- cost of one warp + draw at vocabulary 32000 (the sampler's
# whole per-token work), to compare with the forward pass it follows.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LMSERVE_BUILD:-build/release}
[ -x "$B/bench/bench_sampler" ] || { echo "bench-sampler: $B/bench/bench_sampler is not built (run make bench)" >&2; exit 1; }
echo "command: $B/bench/bench_sampler   (load: $(cut -d' ' -f1-3 /proc/loadavg))"
"$B/bench/bench_sampler"
