#!/usr/bin/env bash
# The one-call GPU check. On a CUDA machine: builds sparseops for the GPU it finds with the machine's
# own torch, runs the whole test suite (CUDA tests included) and the GPU benchmarks, and writes logs
# and results into OUT_DIR. Needs no network: the CUTLASS headers come from a wheel in WHEEL_DIR when
# the nvidia-cutlass package is not installed.
#   usage: bench/gpu_check.sh OUT_DIR [WHEEL_DIR=.whl]
# Budget: under 8 minutes on a 16-core H200 machine (build ~2-3 min, tests ~2 min, bench ~3 min).
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-.whl}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

if ! "$PY" -c "import cutlass_library" 2>/dev/null; then
  stamp "installing CUTLASS headers from $WHEELS"
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/sparseops_cutlass "$WHEELS"/nvidia_cutlass-*.whl || exit 1
  export SPARSEOPS_CUTLASS_DIR=/tmp/sparseops_cutlass/cutlass_library/source
fi

# Build for this GPU only (e.g. 90a on H100/H200): one arch keeps the build short.
ARCH=${SPARSEOPS_CUDA_ARCHS:-$("$PY" -c "import torch; a,b=torch.cuda.get_device_capability(); print(f'{a}{b}' + ('a' if a >= 9 else ''))")}
stamp "building for sm_$ARCH"
export SPARSEOPS_WITH_CUDA=on SPARSEOPS_CUDA_ARCHS="$ARCH" BUILD_DIR=build/gpu PYTHON="$PY"
tools/dev_build.sh -j "$(nproc)" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; stamp "BUILD FAILED"; exit 1; }
stamp "build done"
export PYTHONPATH="$PWD/python"
"$PY" -c "import sparseops, json; print(json.dumps(sparseops.build_info(), indent=1))"

stamp "tests"
timeout 240 "$PY" -m pytest tests -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
echo "pytest exit code: $?"
tail -40 "$OUT/tests.log"

stamp "benchmarks"
timeout 200 "$PY" -m sparseops.bench --device cuda --out "$OUT/bench" 2>&1 | tail -80
stamp "done"
