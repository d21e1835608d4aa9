#!/usr/bin/env bash
# The one-call GPU check. On a CUDA machine: builds sparseops for the GPU it finds with the machine's
# own torch, runs the CUDA tests and the GPU benchmarks, and writes logs and results into OUT_DIR. Needs
# no network: the CUTLASS headers come from a wheel in WHEEL_DIR when nvidia-cutlass is not installed.
#   usage: bench/gpu_check.sh OUT_DIR [WHEEL_DIR=.whl]
# Budget: caps add up to 585 s (build 240, CUDA tests 240, quick bench 40, full bench 65); expected
# ~5 minutes on the 16-core H200 machine, so that a warm rerun fits the 15-minute device budget. The CPU
# suite is not rerun here (CI runs it; it was also run here against the GPU machine's torch 2.11).
# Files written (at most 8, as the device tool returns): gpu_check.log, build.log, tests_cuda.log,
# bench_quick/results.json, bench/results.json (plots are left out: the device tool returns 8 files;
# sparseops.bench.report.write_plots redraws them from a results.json).
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
timeout 240 tools/dev_build.sh -j "$(nproc)" > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; stamp "BUILD FAILED"; exit 1; }
stamp "build done"
export PYTHONPATH="$PWD/python"
"$PY" -c "import sparseops, json; print(json.dumps(sparseops.build_info(), indent=1))"

stamp "tests"
# The CUDA tests in eight processes, so that a kernel fault (which poisons the CUDA context for the rest
# of its process) costs only its group; blocking launches report a fault at the op that caused it. A
# group stops itself before its cap (SPARSEOPS_TEST_BUDGET_S, tests/conftest.py) and `timeout` sends
# SIGINT, not SIGTERM, so pytest still prints its failures and summary.
cuda_tests() {  # $1: seconds; the rest: pytest arguments
  local cap=$1; shift
  echo "=== pytest $* (cap ${cap}s)" >> "$OUT/tests_cuda.log"
  SPARSEOPS_TEST_BUDGET_S=$((cap - 15)) CUDA_LAUNCH_BLOCKING=1 timeout -s INT -k 15 "$cap" \
    "$PY" -m pytest -q -rfEs -m requires_cuda -p no:cacheprovider --durations=5 "$@" >> "$OUT/tests_cuda.log" 2>&1
  echo "pytest $* exit code: $?"
}
cuda_tests 35 tests --ignore=tests/test_linear24_cuda.py --ignore=tests/test_ot.py --ignore=tests/test_ot_sns.py \
  --ignore=tests/test_ot_points.py --ignore=tests/test_attention.py --ignore=tests/test_attention_topk.py --ignore=tests/test_attention_cuda.py \
  --ignore=tests/test_codebook.py --ignore=tests/test_codebook_stats.py --ignore=tests/test_codebook_vq.py
cuda_tests 30 tests/test_linear24_cuda.py -k "not cutlass and not cusparselt"
cuda_tests 30 tests/test_linear24_cuda.py -k "cutlass"
cuda_tests 35 tests/test_linear24_cuda.py -k "cusparselt"
cuda_tests 25 tests/test_ot.py tests/test_ot_sns.py tests/test_ot_points.py
cuda_tests 35 tests/test_attention.py tests/test_attention_topk.py
cuda_tests 25 tests/test_attention_cuda.py
cuda_tests 25 tests/test_codebook.py tests/test_codebook_stats.py tests/test_codebook_vq.py
grep -E "^(===|FAILED|ERROR|SKIPPED)| in [0-9.]+s" "$OUT/tests_cuda.log" | tail -60

stamp "benchmarks"
# Quick pass first (results guaranteed), then the full shapes; results.json is rewritten after every
# registration, so a timeout keeps what was measured.
timeout 40 "$PY" -m sparseops.bench --device cuda --quick --out "$OUT/bench_quick" 2>&1 | tail -60
rm -f "$OUT"/bench_quick/*.png  # the device tool returns at most 8 files
timeout 65 "$PY" -m sparseops.bench --device cuda --out "$OUT/bench" 2>&1 | tail -80
rm -f "$OUT"/bench/*.png
stamp "done"
