# CUTLASS headers (header-only) from the nvidia-cutlass wheel (cutlass_library/source/include): where
# tools/setup_env.sh puts them (<env prefix>/opt/nvidia-cutlass, outside site-packages), else an
# importable cutlass_library. Override: -DSPARSEOPS_CUTLASS_DIR=/path/to/cutlass (the folder holding
# include/cutlass/version.h), or the environment variable of the same name.
# Defines sparseops_cutlass (INTERFACE target) and SPARSEOPS_CUTLASS_VERSION.
set(SPARSEOPS_CUTLASS_DIR "$ENV{SPARSEOPS_CUTLASS_DIR}" CACHE PATH "CUTLASS source root (holds include/cutlass)")
if(NOT SPARSEOPS_CUTLASS_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import os, sys; p = os.path.join(sys.prefix, 'opt', 'nvidia-cutlass', 'cutlass_library', 'source')\nif not os.path.isdir(p): import cutlass_library; p = os.path.join(os.path.dirname(cutlass_library.__file__), 'source')\nprint(p)"
    OUTPUT_VARIABLE SPARSEOPS_CUTLASS_DIR OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
set(_cutlass_version_h "${SPARSEOPS_CUTLASS_DIR}/include/cutlass/version.h")
if(NOT EXISTS "${_cutlass_version_h}")
  message(FATAL_ERROR
    "sparseops: CUTLASS headers not found (looked for ${_cutlass_version_h}).\n"
    "Fix: `pip install --no-deps --target <env prefix>/opt/nvidia-cutlass nvidia-cutlass==4.2.0.0` (what "
    "tools/setup_env.sh does), or pass "
    "-DSPARSEOPS_CUTLASS_DIR=<cutlass root> (or set SPARSEOPS_CUTLASS_DIR), or build without CUDA "
    "with SPARSEOPS_WITH_CUDA=off.")
endif()
file(STRINGS "${_cutlass_version_h}" _cutlass_ver REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) ")
string(REGEX REPLACE ".*CUTLASS_MAJOR ([0-9]+).*CUTLASS_MINOR ([0-9]+).*CUTLASS_PATCH ([0-9]+).*" "\\1.\\2.\\3"
       SPARSEOPS_CUTLASS_VERSION "${_cutlass_ver}")
message(STATUS "sparseops: CUTLASS ${SPARSEOPS_CUTLASS_VERSION} at ${SPARSEOPS_CUTLASS_DIR}")
add_library(sparseops_cutlass INTERFACE)
target_include_directories(sparseops_cutlass SYSTEM INTERFACE
  "${SPARSEOPS_CUTLASS_DIR}/include" "${SPARSEOPS_CUTLASS_DIR}/tools/util/include")
