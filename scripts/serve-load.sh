#!/usr/bin/env bash
# serve-load.sh -- one server under load: start it, time its start, run bench/loadgen at
# each concurrency level, stop it.  Used by bench-load.sh (`make bench`) and
# side-by-side.sh (`make bench-compare`); not a benchmark section of its own.
#
#   scripts/serve-load.sh LABEL PORT "LEVELS" -- SERVER COMMAND...
#
# The command must serve on 127.0.0.1:PORT.  Prints `key=value` lines on stdout:
#   start label=L load_s=S rss_ready_mb=M      seconds from exec to the first /health 200,
#                                              and the server's peak RSS (VmHWM) by then
#   level label=L c=N tok_s=.. ttft_p50=.. ttft_p99=.. lat_p50=.. stream_p50=.. tokens=..
#         requests=.. cut=.. errors=.. cpu_s=.. [in_p50 in_p99 queue_p50 queue_p99 wait_p50
#         wait_p99 fwd_p50 fwd_p99 out_p50 out_p99 steps_p50 steps_p99 (ms / steps)]
#   end label=L rss_peak_mb=M                  peak RSS over the whole run
# The timeline fields come from lmserve's per-request log lines (server/http.c) of the
# requests that ended during the level: arrival -> queued (in) -> a slot (queue) -> the
# first model_forward with its tokens begins (wait) -> first token (fwd) -> first bytes
# taken by the connection (out), and the engine steps begun from queued to first token.
# A server that writes no such lines (llama-server) has none.
#
# Environment: LOADGEN, LOAD_DURATION [15], LOAD_MAX_TIME [2 x duration], LOAD_MAX_TOKENS
# [128], LOAD_TEMPERATURE [0.8], LOAD_NICE [-5] (niceness of server and loadgen when
# allowed), LOAD_JSON_DIR (keep loadgen's JSON there), SERVER_LOG (keep the server's log).
set -euo pipefail
cd "$(dirname "$0")/.."

label=$1 port=$2 levels=$3
shift 3
[ "${1:-}" = -- ] && shift
LOADGEN=${LOADGEN:-build/release/bench/loadgen}
DURATION=${LOAD_DURATION:-15}
MAX_TIME=${LOAD_MAX_TIME:-$((DURATION * 2))}
MAX_TOKENS=${LOAD_MAX_TOKENS:-128}
TEMPERATURE=${LOAD_TEMPERATURE:-0.8}
NICE=${LOAD_NICE:--5}
JSON_DIR=${LOAD_JSON_DIR:-}
nice_cmd=(nice -n "$NICE")
if [ "$NICE" = 0 ] || [ -n "$(nice -n "$NICE" true 2>&1)" ]; then nice_cmd=(); fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/serve-load.XXXXXX")
log=${SERVER_LOG:-$tmp/server.log}
pid=
stop() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  fi
}
trap 'stop; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

hwm_mb() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo -; }
cpu_s() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  st=${st##*) }
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / hz }' <<<"$st"
}
jget() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }
# p50 and p99 (nearest rank) of the values of field $1 (ms or a count) in log lines on stdin
pcts() {
  sed -n "s/.* $1=\([0-9.]*\)\(ms\)\{0,1\}\( .*\)\{0,1\}$/\1/p" | sort -g |
    awk -v k="$1" '{ v[NR] = $1 } END {
      if (NR == 0) { printf " %s_p50=- %s_p99=-", k, k; exit }
      a = int((50 * NR + 99) / 100); b = int((99 * NR + 99) / 100)
      printf " %s_p50=%s %s_p99=%s", k, v[a], k, v[b] }'
}

t0=$(date +%s.%N)
"${nice_cmd[@]}" "$@" >"$log" 2>&1 &
pid=$!
ready=
for _ in $(seq 6000); do
  if curl -fs --max-time 5 -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.01
done
t1=$(date +%s.%N)
if [ -z "$ready" ]; then
  echo "serve-load: $label did not start:" >&2; tail -20 "$log" >&2; exit 1
fi
echo "start label=$label load_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') rss_ready_mb=$(hwm_mb "$pid")"

# Warm-up: two short requests (threads started, first pages touched).
"$LOADGEN" --url "http://127.0.0.1:$port" --concurrency 1 --requests-per-client 2 --max-tokens 16 --json >/dev/null || true
for c in $levels; do
  n0=$(wc -l <"$log")
  c0=$(cpu_s "$pid")
  out=$("${nice_cmd[@]}" "$LOADGEN" --url "http://127.0.0.1:$port" --concurrency "$c" --max-tokens "$MAX_TOKENS" \
        --temperature "$TEMPERATURE" --duration "$DURATION" --max-time "$MAX_TIME" --seed 1 --json) || true
  c1=$(cpu_s "$pid")
  [ -n "$JSON_DIR" ] && { mkdir -p "$JSON_DIR"; echo "$out" >"$JSON_DIR/$label-c$c.json"; }
  sleep 0.2 # the log lines of requests cut at the hard end
  lines=$(tail -n +"$((n0 + 1))" "$log" | grep ' steps=' || true)
  tl=
  if [ -n "$lines" ]; then
    for k in in queue wait fwd out steps; do tl+=$(pcts "$k" <<<"$lines"); done
  fi
  g() { local v; v=$(jget "$out" "$1"); [ -z "$v" ] || [ "$v" = null ] && echo - || echo "$v"; }
  echo "level label=$label c=$c tok_s=$(g tokens_per_s) ttft_p50=$(g ttft_ms_p50) ttft_p99=$(g ttft_ms_p99)" \
       "lat_p50=$(g latency_ms_p50) stream_p50=$(g stream_tokens_per_s_p50) tokens=$(g tokens) requests=$(g requests)" \
       "cut=$(g abandoned) errors=$(g errors) cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }')$tl"
  err=$(sed -n 's/.*"first_error":"\(.*\)"}$/\1/p' <<<"$out")
  if [ -n "$err" ]; then echo "serve-load: $label c=$c first error: $err" >&2; fi
done
echo "end label=$label rss_peak_mb=$(hwm_mb "$pid")"
stop
