#!/usr/bin/env bash
# Run the mpihub core benchmark side by side with its peers.
# Usage (from the repo root): bench/run.sh [--quick] [--json PATH] [other bench_core.py options]
# Assumes the project venv .venv exists with mpihub installed (the Makefile creates it);
# installs the peers from bench/requirements.txt into it first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "bench/run.sh: $PY not found; create the project venv first (make venv / make install)" >&2
    exit 1
fi
if ! "$PY" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt; then
    echo "bench/run.sh: WARNING: could not install bench/requirements.txt; peers that are missing show as n/a" >&2
fi
exec "$PY" bench/bench_core.py "$@"
