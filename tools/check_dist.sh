#!/usr/bin/env bash
# Packaging check (CI): builds the wheel and the sdist from this checkout with the build environment
# that tools/setup_env.sh made, then, in a fresh environment and from outside the source tree:
#   1. installs the wheel and smoke-tests it (imports, build/torch match, torch pin, one call per family);
#   2. builds the sdist there instead, CPU-only and portable (SPARSEOPS_X86_KERNELS=OFF: the build that
#      non-x86 CPUs get), smoke-tests it and runs the whole test suite against it.
# Catches missing package data, rpath and loader mistakes that an in-tree test cannot see.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_PY="${VENV:-$ROOT/.venv}/bin/python"
DIST="$ROOT/dist"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
step() { echo "[dist +$SECONDS s] $*"; }

rm -rf "$DIST"
step "building the wheel (reuses the build folder of tools/setup_env.sh)"
(cd "$ROOT" && "$BUILD_PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$DIST" .)
step "building the sdist"
"$BUILD_PY" -m build --sdist --no-isolation --outdir "$DIST" "$ROOT" > "$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
ls -l "$DIST"
wheel=$(ls "$DIST"/sparseops-*.whl)
sdist=$(ls "$DIST"/sparseops-*.tar.gz)
"$BUILD_PY" - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
bad = [n for n in names if n.startswith("sparseops/") and (n.endswith(".in") or "__pycache__" in n or "/tests/" in n)]
assert not bad, f"wheel contains build leftovers: {bad}"
assert sum(n.startswith("sparseops/_C") and n.endswith(".so") for n in names) == 1, "wheel: expected one _C extension"
assert "sparseops/_build_config.py" in names, "wheel: _build_config.py missing"
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
print("wheel Requires-Dist:", [l for l in meta.splitlines() if l.startswith("Requires-Dist")])
members = tarfile.open(sdist).getnames()
for needed in ("CMakeLists.txt", "third_party/torch.cmake", "third_party/cutlass.cmake", "csrc/ops.cpp",
               "csrc/common/torch_pch.h", "tools/build_meta/torch_pin.py", "tools/build_meta/_build_config.py.in"):
    assert any(m.endswith("/" + needed) for m in members), f"sdist lacks {needed}"
pkg = tarfile.open(sdist).extractfile(next(m for m in members if m.endswith("/PKG-INFO"))).read().decode()
print("sdist Requires-Dist:", [l for l in pkg.splitlines() if l.startswith("Requires-Dist")])
PY

step "fresh environment (torch 2.14.1 + test tools; not the build environment)"
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --progress-bar off "torch==2.14.1" numpy pytest hypothesis
step "installing the wheel"
"$PY" -m pip install -q --disable-pip-version-check --no-deps "$wheel"
(cd "$WORK" && "$PY" "$ROOT/tools/dist_smoke.py" --pinned)

step "building the sdist in that environment: CPU-only, portable kernels only"
"$PY" -m pip uninstall -q -y sparseops
"$PY" -m pip install -q --disable-pip-version-check --progress-bar off ninja "cmake>=3.26" "pybind11>=2.12" \
  "scikit-build-core>=1.1"
(cd "$WORK" && SPARSEOPS_WITH_CUDA=off CMAKE_ARGS="-DSPARSEOPS_X86_KERNELS=OFF" \
  "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps "$sdist")
(cd "$WORK" && "$PY" "$ROOT/tools/dist_smoke.py" --pinned)
"$PY" -c "import sparseops; ci = sparseops.build_info()['cpu_isa_compiled']; assert ci == ['baseline'], ci"
step "the test suite against the portable sdist build, from outside the tree"
cd "$WORK"
"$PY" -m pytest "$ROOT/tests" -q -p no:cacheprovider
