#!/usr/bin/env bash
# Sets up .venv/ and runs the hub with embedded defaults: in-memory state, SQLite in
# ./data, the ffmpeg shipped by imageio-ffmpeg. Extra arguments go to `practice-hub serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/practice-hub serve "$@"
