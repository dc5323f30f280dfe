#!/usr/bin/env bash
# Proves README's run command the way a newcomer meets it: a clean copy of the tree
# (what git tracks, plus new files not ignored), a new .venv without the test extra,
# `scripts/serve.sh` on a free port with an empty data dir; GET /healthz and GET /
# must answer 200 within 60 s. Exits non-zero otherwise. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

git ls-files -z --cached --others --exclude-standard \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work"
cd "$work"
echo "prove-run: clean copy in $work; setting up .venv without the test extra"
scripts/setup-venv.sh
if .venv/bin/python -c 'import pytest' 2>/dev/null; then
  echo "prove-run: the run venv has pytest: the test extra leaked into it" >&2
  exit 1
fi
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
scripts/serve.sh --port "$port" --data-dir "$work/empty-data" >"$work/serve.log" 2>&1 &
server=$!
deadline=$((SECONDS + 60))
for path in /healthz /; do
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path")" = 200 ]; do
    if ! kill -0 "$server" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "prove-run: GET $path did not answer 200 within 60 s; the hub said:" >&2
      tail -n 40 "$work/serve.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "prove-run: GET $path → 200"
done
echo "prove-run: the run command serves on a fresh copy"
