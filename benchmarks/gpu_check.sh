#!/usr/bin/env bash
# One-shot GPU check of the production job: benchmarks/gpu_check.py says what it runs.
#   benchmarks/gpu_check.sh OUT [--dry-run]
# Run from anywhere; uses $PYTHON, else the project's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"  # the sLSTM kernel build
exec "$PY" -m benchmarks.gpu_check "$@"
