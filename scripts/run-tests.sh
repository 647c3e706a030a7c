#!/usr/bin/env bash
# run-tests.sh TEST_BIN... -- run every test lmserve has and print one summary.
#
# Suites, each run on its own with its output in $LMSERVE_BUILD/test-logs/<suite>.log:
#   1. the Criterion binaries given on the command line (tests/<module>/test_*.c);
#   2. tests/integration/test_*.py against the real server, through tests/integration/runner.py
#      (unittest; Debian's /usr/bin/python3);
#   3. tests/node/*.test.mjs (node --test, TAP).
# Each suite prints one line of counts; their sums end the run, alone on the last line:
#   tests: N passed, N failed            (", N skipped" when something was skipped)
# What counts:
#   - a suite that ends without its runner's closing counts (a crash, an import error, a
#     hang stopped by the per-suite time limit) counts one failure more than it reported;
#   - a suite that cannot run in this build variant is not started, and is listed before the
#     summary with the reason (README, "Tests"); every skipped test is listed with its reason;
#   - under CI=true a skipped test counts as a failure: CI runs everything.
# Exit status: 0 when nothing failed and something passed.
# Environment: LMSERVE_BIN (server binary), LMSERVE_BUILD, LMSERVE_MODELS, LMSERVE_FIXTURES,
# SANITIZE (non-empty: sanitizer build), TESTS_ONLY (a substring: run only matching suites),
# LMSERVE_SUITE_TIMEOUT (seconds per suite; default 900, 2700 under SANITIZE), CI.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0 skipped=0
failures=() not_run=() skip_lines=()
log_dir=${LMSERVE_BUILD:-build}/test-logs
mkdir -p "$log_dir"
log_dir=$(cd "$log_dir" && pwd)
export PYTHONPATH="$PWD/tests/integration${PYTHONPATH:+:$PYTHONPATH}"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
only=${TESTS_ONLY:-}
ci=false
case ${CI:-} in true|1|yes) ci=true ;; esac
limit=${LMSERVE_SUITE_TIMEOUT:-$([ -n "${SANITIZE:-}" ] && echo 2700 || echo 900)}

# Suites that cannot run in this variant, and why (the same list is in README's "Tests").
not_applicable() { # suite -> reason, or nothing
  case $1 in
    tests/integration/test_valgrind.py)
      [ -n "${SANITIZE:-}" ] && echo "valgrind cannot run a sanitizer build (the release build's make test runs it)" ;;
  esac
  return 0
}

selected() { [ -z "$only" ] || [[ $1 == *$only* ]]; }

# run_suite NAME LOG CMD... : runs CMD under the time limit; sets rc and took.
run_suite() {
  local log=$2; shift 2
  local t0=$SECONDS
  timeout -k 30 "$limit" "$@" >"$log" 2>&1; rc=$?
  took=$((SECONDS - t0))
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "run-tests: stopped after ${limit}s (LMSERVE_SUITE_TIMEOUT)" >>"$log"
  fi
}

# record NAME PASSED FAILED SKIPPED LOG COMPLETE : add a suite's counts. COMPLETE=0 when
# its closing counts were missing; a non-zero exit with no failure counted also fails it.
record() {
  local name=$1 p=$2 f=$3 s=$4 log=$5 complete=$6 note=""
  if [ "$complete" -eq 0 ]; then f=$((f + 1)); note=" (no closing counts: crashed or stopped; exit $rc)"
  elif [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; note=" (exit $rc with no failure counted)"
  fi
  if $ci && [ "$s" -gt 0 ]; then f=$((f + s)); s=0; note="$note (skips count as failures under CI)"; fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  [ "$f" -ne 0 ] && failures+=("$name")
  printf '  %-46s %4d passed %3d failed %3d skipped %5ds%s\n' "$name" "$p" "$f" "$s" "$took" "$note"
  if [ "$f" -ne 0 ]; then echo "---- $log (tail)"; tail -60 "$log"; echo "----"; fi
}

num() { [[ $1 =~ ^[0-9]+$ ]] && echo "$1" || echo 0; }

echo "== unit tests (Criterion)"
for t in "$@"; do
  name=${t#*/tests/}
  selected "$name" || continue
  log="$log_dir/${name//\//_}.log"
  run_suite "$name" "$log" "$t" --jobs 2 --verbose
  # Criterion's closing line: "Synthesis: Tested: T | Passing: P | Failing: F | Crashing: C"
  # (F includes C); skipped and disabled tests are only listed as "[SKIP] suite::test: why".
  line=$(grep -a 'Synthesis: Tested:' "$log" | tail -1)
  tested=$(num "$(sed -n 's/.*Tested: \([0-9]*\).*/\1/p' <<<"$line")")
  p=$(num "$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$line")")
  s=$(grep -ac '^\[SKIP\]' "$log")
  while IFS= read -r l; do skip_lines+=("$name: ${l#\[SKIP\] }"); done < <(grep -a '^\[SKIP\]' "$log")
  record "$name" "$p" $((tested - p)) "$s" "$log" $([ -n "$line" ] && echo 1 || echo 0)
done

echo "== integration tests (python)"
for t in tests/integration/test_*.py; do
  [ -e "$t" ] || continue
  selected "$t" || continue
  why=$(not_applicable "$t")
  if [ -n "$why" ]; then not_run+=("$t: $why"); continue; fi
  log="$log_dir/$(basename "$t").log"
  run_suite "$t" "$log" "$PY" tests/integration/runner.py "$t"
  line=$(grep -a '^lmserve-counts ' "$log" | tail -1)
  p=$(num "$(sed -n 's/.* passed=\([0-9]*\).*/\1/p' <<<"$line")")
  f=$(num "$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")")
  s=$(num "$(sed -n 's/.* skipped=\([0-9]*\).*/\1/p' <<<"$line")")
  # unittest -v: "test_x (module.Class.test_x) ... skipped 'why'"
  while IFS= read -r l; do skip_lines+=("$t: $l"); done < <(grep -aE " \.\.\. skipped " "$log" | sed 's/ (.*) \.\.\. skipped / skipped: /')
  record "$t" "$p" "$f" "$s" "$log" $([ -n "$line" ] && echo 1 || echo 0)
done

echo "== integration tests (node)"
node_tests=()
for t in tests/node/*.test.mjs; do [ -e "$t" ] && selected "$t" && node_tests+=("$t"); done
# node's TAP summary: "# tests N", "# pass", "# fail", "# cancelled" (a test stopped by a
# failing hook or by its parent), "# skipped", "# todo"; subtests are counted too.
tap() { num "$(sed -n "s/^# $1 \([0-9]*\)\$/\1/p" "$2" | tail -1)"; }
if [ ${#node_tests[@]} -ne 0 ] && \
   { [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; }; then
  took=0 rc=0
  if ! (cd tests/node && npm ci --no-audit --no-fund --loglevel=error) >"$log_dir/npm-ci.log" 2>&1; then
    rc=1
    echo "  npm ci in tests/node failed: the npm registry must be reachable once to install the node suites' packages"
    record "tests/node (npm ci; node suites not run)" 0 0 0 "$log_dir/npm-ci.log" 0
    node_tests=()
  fi
fi
for t in ${node_tests[@]+"${node_tests[@]}"}; do
  log="$log_dir/$(basename "$t").log"
  run_suite "$t" "$log" node --test --test-reporter=tap "$t"
  p=$(tap pass "$log"); f=$(( $(tap fail "$log") + $(tap cancelled "$log") ))
  s=$(( $(tap skipped "$log") + $(tap todo "$log") ))
  while IFS= read -r l; do skip_lines+=("$t: $l"); done \
    < <(grep -aE '^ *(not )?ok [0-9]+ - .* # (SKIP|TODO)' "$log" | sed -E 's/^ *(not )?ok [0-9]+ - //')
  record "$t" "$p" "$f" "$s" "$log" $(grep -aq '^# tests [0-9]' "$log" && echo 1 || echo 0)
done

echo
if [ -n "$only" ]; then echo "TESTS_ONLY=$only: only the suites whose name contains it ran"; fi
if [ ${#not_run[@]} -ne 0 ]; then
  echo "not run in this build variant (${SANITIZE:+SANITIZE=$SANITIZE}):"
  printf '  %s\n' "${not_run[@]}"
fi
if [ ${#skip_lines[@]} -ne 0 ]; then
  echo "skipped tests$($ci && echo ' (failures under CI)'):"
  printf '  %s\n' "${skip_lines[@]}"
fi
if [ ${#failures[@]} -ne 0 ]; then
  echo "failed suites (logs in $log_dir):"
  printf '  %s\n' "${failures[@]}"
fi
if [ $skipped -ne 0 ]; then
  echo "tests: $passed passed, $failed failed, $skipped skipped"
else
  echo "tests: $passed passed, $failed failed"
fi
[ $failed -eq 0 ] && [ $passed -gt 0 ]
