#!/usr/bin/env bash
# CPU-only build of sparseops with AddressSanitizer + UndefinedBehaviorSanitizer (build/asan), then the
# test suite against it (CI runs this). The sanitized _C goes into a copy of the Python package in a
# temporary folder, so the working tree's own build is left alone.
#   PYTHON=...   the environment to use (default: .venv, as made by tools/setup_env.sh)
#   extra arguments go to pytest (default: the whole suite)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PKG=$(mktemp -d)
trap 'rm -rf "$PKG"' EXIT
cp -r "$ROOT/python/sparseops" "$PKG/"
rm -f "$PKG"/sparseops/_C*.so "$PKG"/sparseops/_build_config.py
cd "$ROOT"
SPARSEOPS_SANITIZE=ON SPARSEOPS_WITH_CUDA=off BUILD_DIR=build/asan INSTALL_TO="$PKG/sparseops" PYTHON="$PY" \
  ./tools/dev_build.sh
# libasan must come first; with it alone every C++ exception aborts (real___cxa_throw != 0), so
# libstdc++ is preloaded right after it (measured, see ../shared/BUILD_NOTES.md). Leaks are not
# checked: CPython and torch keep allocations alive until exit by design.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "[sanitize] the test suite against the ASan + UBSan build"
PYTHONPATH="$PKG" "$PY" -m pytest "${@:-tests}" -q -p no:cacheprovider
