#!/usr/bin/env bash
# The one-call GPU check. On a CUDA machine: builds sparseops for the GPU it finds with the machine's
# own torch, runs the whole test suite (CUDA tests included) and the GPU benchmarks, and writes logs
# and results into OUT_DIR. Needs no network: the CUTLASS headers come from a wheel in WHEEL_DIR when
# the nvidia-cutlass package is not installed.
#   usage: bench/gpu_check.sh OUT_DIR [WHEEL_DIR=.whl]
# Budget: under 8 minutes on a 16-core H200 machine (build <= 5 min cap, ~1-2 expected; tests <= 4;
# bench <= 3.5). Files written (at most 8, as the device tool returns): gpu_check.log, build.log,
# tests_cuda.{log,xml}, tests_cpu.log, bench_quick/results.json, bench/{results.json,speedup.png}.
# Run it with the CUTLASS wheel carried: device run, carry [".whl"], command
#   bench/gpu_check.sh "$OUT" .whl
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
timeout 300 tools/dev_build.sh -j "$(nproc)" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; stamp "BUILD FAILED"; exit 1; }
stamp "build done"
export PYTHONPATH="$PWD/python"
"$PY" -c "import sparseops, json; print(json.dumps(sparseops.build_info(), indent=1))"

stamp "tests"
# CUDA tests first (the point of this run), then the CPU suite under this machine's torch.
timeout 150 "$PY" -m pytest tests -q -rs -m requires_cuda -p no:cacheprovider --durations=15 \
  --junitxml="$OUT/tests_cuda.xml" > "$OUT/tests_cuda.log" 2>&1
echo "pytest (CUDA) exit code: $?"
tail -60 "$OUT/tests_cuda.log"
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 90 "$PY" -m pytest tests -q -m "not requires_cuda" -p no:cacheprovider $XDIST > "$OUT/tests_cpu.log" 2>&1
echo "pytest (CPU) exit code: $?"
tail -5 "$OUT/tests_cpu.log"

stamp "benchmarks"
# Quick pass first (results guaranteed), then the full shapes; results.json is rewritten after every
# registration, so a timeout keeps what was measured.
timeout 60 "$PY" -m sparseops.bench --device cuda --quick --out "$OUT/bench_quick" 2>/dev/null | tail -60
rm -f "$OUT/bench_quick/speedup.png"  # the device tool returns at most 8 files
timeout 150 "$PY" -m sparseops.bench --device cuda --out "$OUT/bench" 2>/dev/null | tail -80
stamp "done"
