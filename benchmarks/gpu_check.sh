#!/usr/bin/env bash
# The prepared accelerator check of issue 17 (see benchmarks/gpu_check.py).
#   bash benchmarks/gpu_check.sh [--smoke] [--json PATH]
# On a lent device the image has jax with CUDA, flax, optax, orbax and pyarrow;
# rectrain itself runs from the working tree (PYTHONPATH), nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/gpu_check.py "$@"
