#!/usr/bin/env bash
# Sets up .venv/ and runs every check: ruff, ruff format, mypy (strict), the browser
# code's type check, and the whole test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh test
if command -v npm >/dev/null 2>&1; then
  npm ci --silent --no-audit --no-fund
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
