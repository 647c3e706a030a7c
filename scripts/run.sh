#!/usr/bin/env bash
# run.sh LMSERVE_BIN [serve options] -- start the server on the default model and
# print a one-line curl example.  Used by `make run`.
set -euo pipefail
bin=$1; shift
port=${PORT:-8080}
echo "lmserve: try:  curl -s http://127.0.0.1:$port/v1/completions -H 'Content-Type: application/json' -d '{\"prompt\": \"In the beginning\", \"max_tokens\": 64}'"
exec "$bin" serve --port "$port" "$@"
