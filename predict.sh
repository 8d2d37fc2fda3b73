#!/bin/sh
# Challenge entrypoint: the organisers run `sh predict.sh` in /workspace (POSIX sh, not bash).
set -eu
cd "$(dirname "$0")"
export INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
export OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
if command -v python >/dev/null 2>&1; then exec python -m app; fi
exec python3 -m app
