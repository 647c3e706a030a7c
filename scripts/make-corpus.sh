#!/usr/bin/env bash
# make-corpus.sh [OUTDIR] -- build the default model's training text.
#
# The King James Version of the Bible (public domain; Debian ships it in main as
# bible-kjv-text, read through the `bible` program of bible-kjv).  `bible -f`
# with pretty-printing off prints one verse per line preceded by its reference
# ("Ge1:1 In the beginning ..."); we drop the reference and keep the verse, so
# the corpus is plain English prose, one verse per line, in canonical order.
# Output: OUTDIR/kjv.txt (default build/corpus), about 4.2 MB of ASCII.
set -euo pipefail
out=${1:-build/corpus}
if ! command -v bible >/dev/null 2>&1; then
  echo "make-corpus.sh: the 'bible' program is missing: apt-get install bible-kjv bible-kjv-text" >&2
  exit 1
fi
mkdir -p "$out"
tmp=$(mktemp "$out/kjv.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# Genesis 1:1 through Revelation 22:21 is the whole book; stdin closed so that
# bible does not fall into its interactive prompt.
bible -f gen1:1-rev22:21 </dev/null | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' >"$tmp"
lines=$(wc -l <"$tmp")
if [ "$lines" -ne 31102 ]; then
  echo "make-corpus.sh: expected 31102 verses, got $lines" >&2
  exit 1
fi
mv "$tmp" "$out/kjv.txt"
trap - EXIT
echo "make-corpus.sh: $out/kjv.txt: $lines verses, $(wc -c <"$out/kjv.txt") bytes" >&2
