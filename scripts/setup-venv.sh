#!/usr/bin/env bash
# Creates .venv/ (Python 3.11+) and installs the project into it; quick when done already.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.installed${extras:+-$extras}"
# The C fan-out is compiled by the install: a changed source needs it again.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hub/_fastpath.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
