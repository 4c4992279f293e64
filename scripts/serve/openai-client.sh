#!/usr/bin/env bash
# The official openai Python client against a real `braid serve` on loopback (CPU, f32): starts the
# server on a free port, runs scripts/serve/openai_client_test.py, then stops it with SIGTERM and
# checks that it exits 0. Needs target/release/braid and the venv PYTHON (scripts/test.sh makes both).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:?usage: openai-client.sh PYTHON}"
KEY="openai-client-test-key"
LOG="$(mktemp)"
target/release/braid serve --device cpu --host 127.0.0.1 --port 0 --api-key "$KEY" --auto-truncate 2>"$LOG" &
PID=$!
trap 'kill -9 "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT
# Whether GET $1/health answers 200 (python, so the script needs no curl).
healthy() { "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' "$1" 2>/dev/null; }
ADDR=""
for _ in $(seq 1 600); do
    ADDR="$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -1 | sed 's|listening on ||')" || true
    if [ -n "$ADDR" ] && healthy "$ADDR"; then break; fi
    kill -0 "$PID" 2>/dev/null || { cat "$LOG"; echo "braid serve exited early"; exit 1; }
    sleep 0.1
done
healthy "$ADDR" || { cat "$LOG"; echo "braid serve not ready"; exit 1; }
"$PYTHON" scripts/serve/openai_client_test.py "$ADDR" "$KEY" crates/model/tests/fixtures/minilm-golden.json
kill -TERM "$PID"
STATUS=0
wait "$PID" || STATUS=$?
test "$STATUS" -eq 0 || { cat "$LOG"; echo "braid serve exited $STATUS after SIGTERM"; exit 1; }
echo "braid serve stopped on SIGTERM with exit status 0"
