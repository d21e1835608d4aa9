#!/usr/bin/env bash
# Creates (or reuses) a virtual environment with everything sparseops needs to build, test and
# benchmark, then builds and installs sparseops into it from this checkout. Sourced by tools/test.sh
# and tools/bench.sh; safe to run again (pip skips what is there; ninja rebuilds only what changed).
#   VENV=path        where the environment lives (default .venv in the checkout)
#   SPARSEOPS_WITH_CUDA=auto|on|off, SPARSEOPS_CUDA_ARCHS="80;90a"   build knobs (see README)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
echo "[setup] installing build, test and bench dependencies"
"$PY" -m pip install -q --upgrade pip
# torch 2.14.1 is a CUDA 13 build: CUDA kernels compile wherever nvcc is found, GPU or not.
"$PY" -m pip install -q "torch==2.14.1" numpy ninja "cmake>=3.26" "pybind11>=2.12" "scikit-build-core>=0.10" \
  pytest matplotlib
# Benchmark peers (optional: a case whose peer does not import reports it as skipped).
"$PY" -m pip install -q faiss-cpu || echo "[setup] faiss-cpu not installed: the codebook bench skips its faiss peer"
# examples/vq_sample_images.py compares against vector-quantize-pytorch on scikit-learn's sample images.
"$PY" -m pip install -q scikit-learn vector-quantize-pytorch || echo "[setup] vector-quantize-pytorch not installed (examples only)"
# CUTLASS C++ headers only: its Python dependencies are not needed.
"$PY" -m pip install -q --no-deps "nvidia-cutlass==4.2.0.0"

echo "[setup] building sparseops (SPARSEOPS_WITH_CUDA=${SPARSEOPS_WITH_CUDA:-auto})"
start=$(date +%s)
( cd "$ROOT" && "$PY" -m pip install -q --no-build-isolation --no-deps . )
echo "[setup] build + install took $(( $(date +%s) - start )) s"
"$PY" -c "import sparseops, json; print('[setup] build_info:', json.dumps(sparseops.build_info()))"
