#!/usr/bin/env bash
# run-tests.sh TEST_BIN... -- run every test lmserve has and print one summary line.
#
# 1. Criterion unit-test binaries given on the command line (tests/<module>/test_*.c).
# 2. Integration tests against the real server: tests/integration/test_*.py (Python
#    unittest, Debian's /usr/bin/python3) and tests/node/*.test.mjs (node --test).
# Environment: LMSERVE_BIN (server binary), LMSERVE_BUILD, LMSERVE_MODELS, LMSERVE_FIXTURES,
# SANITIZE (non-empty: sanitizer build; slow suites may shorten themselves),
# TESTS_ONLY (a substring: run only matching files).
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0 skipped=0
failures=()
log_dir=${LMSERVE_BUILD:-build}/test-logs
mkdir -p "$log_dir"
log_dir=$(cd "$log_dir" && pwd)
# Integration tests import their shared launcher (lmserve_testlib) from their folder.
export PYTHONPATH="$PWD/tests/integration${PYTHONPATH:+:$PYTHONPATH}"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
only=${TESTS_ONLY:-}

record() { # name passed failed skipped
  passed=$((passed + $2)); failed=$((failed + $3)); skipped=$((skipped + $4))
  if [ "$3" -ne 0 ]; then failures+=("$1"); fi
  printf '  %-48s %4d passed %3d failed %3d skipped\n' "$1" "$2" "$3" "$4"
}

echo "== unit tests"
for t in "$@"; do
  name=${t#*/tests/}
  [ -n "$only" ] && [[ $name != *$only* ]] && continue
  log="$log_dir/${name//\//_}.log"
  "$t" --jobs 2 >"$log" 2>&1; rc=$?
  line=$(grep -a 'Synthesis:' "$log" | tail -1)
  p=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$line"); p=${p:-0}
  f=$(sed -n 's/.*Failing: \([0-9]*\).*/\1/p' <<<"$line"); f=${f:-0}
  c=$(sed -n 's/.*Crashing: \([0-9]*\).*/\1/p' <<<"$line"); c=${c:-0}
  f=$((f + c))
  if [ $rc -ne 0 ] && [ $f -eq 0 ]; then f=1; fi
  record "$name" "$p" "$f" 0
  [ $f -ne 0 ] && { echo "---- $log (tail)"; tail -40 "$log"; }
done

if [ -d tests/integration ]; then
  echo "== integration tests (python)"
  for t in tests/integration/test_*.py; do
    [ -e "$t" ] || continue
    [ -n "$only" ] && [[ $t != *$only* ]] && continue
    log="$log_dir/$(basename "$t").log"
    "$PY" -m unittest -v "$t" >"$log" 2>&1; rc=$?
    # unittest's closing lines: "Ran N tests" then "OK", "OK (skipped=S)" or
    # "FAILED (failures=F, errors=E, skipped=S)".
    ran=$(sed -n 's/^Ran \([0-9]*\) tests\?.*/\1/p' "$log" | tail -1); ran=${ran:-0}
    last=$(grep -aE '^(OK|FAILED)' "$log" | tail -1)
    nf=$(sed -n 's/.*failures=\([0-9]*\).*/\1/p' <<<"$last"); ne=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$last")
    s=$(sed -n 's/.*skipped=\([0-9]*\).*/\1/p' <<<"$last"); s=${s:-0}
    f=$(( ${nf:-0} + ${ne:-0} )); p=$(( ran - f - s ))
    if [ $rc -ne 0 ] && [ $f -eq 0 ]; then f=1; fi
    record "$t" "$p" "$f" "$s"
    [ $f -ne 0 ] && { echo "---- $log (tail)"; tail -60 "$log"; }
  done
fi

if compgen -G "tests/node/*.test.mjs" >/dev/null; then
  echo "== integration tests (node)"
  if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >"$log_dir/npm-ci.log" 2>&1) \
      || { echo "npm ci failed:"; tail -30 "$log_dir/npm-ci.log"; }
  fi
  for t in tests/node/*.test.mjs; do
    [ -n "$only" ] && [[ $t != *$only* ]] && continue
    log="$log_dir/$(basename "$t").log"
    node --test --test-reporter=tap "$t" >"$log" 2>&1; rc=$?
    p=$(sed -n 's/^# pass \([0-9]*\)/\1/p' "$log" | tail -1); p=${p:-0}
    f=$(sed -n 's/^# fail \([0-9]*\)/\1/p' "$log" | tail -1); f=${f:-0}
    s=$(sed -n 's/^# skipped \([0-9]*\)/\1/p' "$log" | tail -1); s=${s:-0}
    if [ $rc -ne 0 ] && [ $f -eq 0 ]; then f=1; fi
    record "$t" "$p" "$f" "$s"
    [ $f -ne 0 ] && { echo "---- $log (tail)"; tail -60 "$log"; }
  done
fi

echo
[ ${#failures[@]} -ne 0 ] && echo "failed: ${failures[*]}"
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ] && [ $passed -gt 0 ]
