#!/usr/bin/env bash
# bench-doc.sh -- put one `make bench` run into docs/BENCHMARKS.md.
#
#   scripts/bench-doc.sh            run `make bench` (output kept in build/bench/last.txt), then write
#   scripts/bench-doc.sh LOG        write from a saved `make bench` output
#
# The part of docs/BENCHMARKS.md between the lines `<!-- make-bench:begin -->` and
# `<!-- make-bench:end -->` is replaced by the run: when, on what CPU, at which commit, and
# every section's output as printed (one table per benchmark), so the page always shows one
# whole run and never a figure typed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=docs/BENCHMARKS.md
grep -q '^<!-- make-bench:begin -->$' "$doc" && grep -q '^<!-- make-bench:end -->$' "$doc" ||
  { echo "bench-doc: $doc lacks the make-bench:begin/end markers" >&2; exit 1; }

if [ $# -ge 1 ]; then
  log=$1
  [ -s "$log" ] || { echo "bench-doc: $log is missing or empty" >&2; exit 1; }
  when=$(date -u -r "$log" '+%Y-%m-%d %H:%M UTC')
  knobs=""
else
  mkdir -p build/bench
  log=build/bench/last.txt
  when=$(date -u '+%Y-%m-%d %H:%M UTC')
  # The sections' knobs (see each scripts/bench-*.sh header) go into the page with the run.
  knobs=$(env | grep -E '^(BENCH|LOAD|CONTEXT|CONSTRAIN|PREFIX)_' | sort | tr '\n' ' ' || true)
  make --no-print-directory bench 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "bench-doc: make bench failed; $doc unchanged" >&2; exit 1; }
fi
grep -q '^== scripts/bench-' "$log" || { echo "bench-doc: $log is not make bench output" >&2; exit 1; }

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || rev="$rev + local changes"

body=$(mktemp)
trap 'rm -f "$body"' EXIT
{
  echo "Run of $when on $(nproc) CPUs (${cpu:-unknown CPU}), commit $rev."
  [ -z "$knobs" ] || echo "Settings: \`${knobs% }\` (the other sections and models at their defaults)."
  # One fenced block per section, headed by the script that printed it.
  awk '
    /^== scripts\/bench-/ { if (open) print "```"; sub(/^== /, ""); printf "\n`%s`\n\n```\n", $0; open = 1; next }
    open { print }
    END { if (open) print "```" }
  ' "$log"
} >"$body"

tmp=$(mktemp)
awk -v body="$body" '
  /^<!-- make-bench:begin -->$/ { print; while ((getline l < body) > 0) print l; skip = 1; next }
  /^<!-- make-bench:end -->$/ { skip = 0 }
  !skip { print }
' "$doc" >"$tmp"
mv "$tmp" "$doc"
echo "bench-doc: $doc now shows the run of $when ($log)"
