#!/usr/bin/env bash
# Creates (or reuses) a virtual environment with everything sparseops needs to build, test and
# benchmark, then builds and installs sparseops into it from this checkout. Run by tools/test.sh and
# tools/bench.sh; safe to run again (pip skips what is there; ninja rebuilds only what changed).
#   VENV=path        where the environment lives (default .venv in the checkout)
#   SPARSEOPS_WITH_CUDA=auto|on|off, SPARSEOPS_CUDA_ARCHS="80;90a"   build knobs (see README)
#   SPARSEOPS_SETUP_QUIET=1   no download progress bars (CI logs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"
PIP_PROGRESS=(--progress-bar on)
[ -n "${SPARSEOPS_SETUP_QUIET:-}" ] && PIP_PROGRESS=(--progress-bar off)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] first run: downloading ~3 GB (torch 2.14.1 with its CUDA 13 libraries, needed even for"
  echo "        a CPU-only build of sparseops) into $VENV (~6 GB on disk); then building sparseops"
fi
echo "[setup] installing build, test and bench dependencies"
"$PY" -m pip install -q --upgrade pip
# torch 2.14.1 is a CUDA 13 build: CUDA kernels compile wherever nvcc is found, GPU or not.
"$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q "torch==2.14.1" numpy ninja \
  "cmake>=3.26" "pybind11>=2.12" "scikit-build-core>=1.1" build pytest hypothesis matplotlib
# Benchmark peers (optional: a missing one is reported as skipped): POT and GeomLoss for the ot family.
"$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q pot geomloss
# Integrations tested against: transformers (attn_implementation="sparseops").
"$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q "transformers>=5.0"
"$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q faiss-cpu \
  || echo "[setup] faiss-cpu not installed: the codebook bench skips its faiss peer"
# The 2:4 bench's numpy/OpenBLAS dense peer runs on torch's thread count through threadpoolctl.
"$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q threadpoolctl
# examples/vq_sample_images.py compares against vector-quantize-pytorch on scikit-learn's sample images.
"$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q scikit-learn vector-quantize-pytorch \
  || echo "[setup] vector-quantize-pytorch not installed (the codebook module bench and example skip it)"
# Heavy or JIT-compiling peers, off by default (CI does not download them): OTT-JAX (jax on CPU) for the
# ot bench, KeOps (pykeops) for the codebook bench and GeomLoss's online backend.
if [ "${SPARSEOPS_BENCH_HEAVY_PEERS:-0}" = "1" ]; then
  "$PY" -m pip install "${PIP_PROGRESS[@]}" --disable-pip-version-check -q ott-jax pykeops \
    || echo "[setup] ott-jax / pykeops not installed: the ot and codebook benches report them unavailable"
fi

# CUTLASS C++ headers only. Installed outside site-packages, so the environment stays consistent (the
# nvidia-cutlass wheel's Python dependencies, which pip would check on every later install, are not
# needed for its headers); third_party/cutlass.cmake looks there.
CUTLASS_TARGET="$VENV/opt/nvidia-cutlass"
if [ ! -f "$CUTLASS_TARGET/cutlass_library/source/include/cutlass/version.h" ]; then
  echo "[setup] fetching the CUTLASS headers (nvidia-cutlass 4.2.0.0, 6 MB) into $CUTLASS_TARGET"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$CUTLASS_TARGET" "nvidia-cutlass==4.2.0.0"
fi
if "$PY" -m pip show -q nvidia-cutlass >/dev/null 2>&1; then  # an older setup installed it into site-packages
  "$PY" -m pip uninstall -q -y nvidia-cutlass
fi

with_cuda=${SPARSEOPS_WITH_CUDA:-auto}
if [ "$with_cuda" = off ] || ! command -v nvcc >/dev/null 2>&1; then
  estimate="~2 minutes (CPU kernels only)"
else
  estimate="~3-7 minutes on 2 cores (CPU and CUDA kernels; SPARSEOPS_WITH_CUDA=off builds the CPU ones only)"
fi
echo "[setup] building sparseops (SPARSEOPS_WITH_CUDA=$with_cuda): $estimate; full log in $VENV/sparseops-build.log"
start=$(date +%s)
# -v shows the build's own output; of it, ninja's [n/N] progress lines are echoed here.
set +e
( cd "$ROOT" && "$PY" -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps . ) \
  > "$VENV/sparseops-build.log" 2>&1 &
build_pid=$!
tail -n +1 -f "$VENV/sparseops-build.log" --pid="$build_pid" 2>/dev/null \
  | grep --line-buffered -E '^\s*\[[0-9]+/[0-9]+\] ' | sed -u -E 's/^\s*/[build] /'
wait "$build_pid"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  echo "[setup] BUILD FAILED (exit $status); the end of $VENV/sparseops-build.log:"
  tail -n 60 "$VENV/sparseops-build.log"
  exit "$status"
fi
echo "[setup] build + install took $(( $(date +%s) - start )) s"
"$PY" -c "import sparseops, json; print('[setup] build_info:', json.dumps(sparseops.build_info()))"
