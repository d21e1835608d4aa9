#!/usr/bin/env bash
# Developer loop: incremental CMake/ninja build of sparseops._C into build/dev, copied next to the
# Python sources, so `PYTHONPATH=python pytest` tests the working tree without a pip install.
# Builds are serialised machine-wide with a lock (2 cores: never two builds at once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUILD_DIR=${BUILD_DIR:-build/dev}
if command -v flock >/dev/null 2>&1; then
  exec 9>/tmp/sparseops-build.lock
  flock 9
fi
# Prefer the cmake/ninja that pip installed beside this Python (the system's may be too old).
CMAKE=$("$PY" -c "import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, 'cmake'))" 2>/dev/null || command -v cmake)
NINJA=$("$PY" -c "import ninja, os; print(os.path.join(ninja.BIN_DIR, 'ninja'))" 2>/dev/null || command -v ninja)
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  "$CMAKE" -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" -DPython_EXECUTABLE="$(command -v "$PY")" \
    -DSPARSEOPS_WITH_CUDA="${SPARSEOPS_WITH_CUDA:-auto}" -DSPARSEOPS_CUDA_ARCHS="${SPARSEOPS_CUDA_ARCHS:-80;90a}" \
    ${SPARSEOPS_X86_KERNELS:+-DSPARSEOPS_X86_KERNELS="$SPARSEOPS_X86_KERNELS"} \
    ${SPARSEOPS_SANITIZE:+-DSPARSEOPS_SANITIZE="$SPARSEOPS_SANITIZE"} \
    -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
fi
"$NINJA" -C "$BUILD_DIR" "$@"
cp "$BUILD_DIR"/_C*.so "$BUILD_DIR"/_build_config.py "${INSTALL_TO:-python/sparseops}/"
