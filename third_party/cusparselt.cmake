# cuSPARSELt from the nvidia-cusparselt wheel that CUDA builds of torch depend on:
# site-packages/nvidia/cusparselt/{include/cusparseLt.h, lib/libcusparseLt.so.0} (0.8.x) or
# site-packages/nvidia/cu13/{include,lib} (0.10+). Override: -DSPARSEOPS_CUSPARSELT_DIR=<root with include/ and lib/>.
# Defines sparseops_cusparselt (INTERFACE target), SPARSEOPS_CUSPARSELT_VERSION, SPARSEOPS_CUSPARSELT_LIB_DIR.
set(SPARSEOPS_CUSPARSELT_DIR "$ENV{SPARSEOPS_CUSPARSELT_DIR}" CACHE PATH "cuSPARSELt root (holds include/cusparseLt.h)")
set(_cslt_roots "${SPARSEOPS_CUSPARSELT_DIR}")
if(NOT SPARSEOPS_CUSPARSELT_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import nvidia, os; r=[os.path.join(p, s) for p in nvidia.__path__ for s in ('cusparselt', 'cu13', 'cu12')]; print(';'.join(r))"
    OUTPUT_VARIABLE _cslt_roots OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
unset(_cslt_include CACHE)
unset(_cslt_lib CACHE)
find_path(_cslt_include cusparseLt.h PATHS ${_cslt_roots} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(_cslt_lib NAMES cusparseLt libcusparseLt.so.0 PATHS ${_cslt_roots} PATH_SUFFIXES lib NO_DEFAULT_PATH)
if(NOT _cslt_include OR NOT _cslt_lib)
  message(FATAL_ERROR
    "sparseops: cuSPARSELt not found (searched ${_cslt_roots}).\n"
    "Fix: `pip install nvidia-cusparselt-cu13` (CUDA torch normally brings it), or pass "
    "-DSPARSEOPS_CUSPARSELT_DIR=<root with include/cusparseLt.h and lib/libcusparseLt.so*>, or build "
    "without CUDA with SPARSEOPS_WITH_CUDA=off.")
endif()
file(STRINGS "${_cslt_include}/cusparseLt.h" _cslt_ver REGEX "#define CUSPARSELT_VER_(MAJOR|MINOR|PATCH) ")
string(REGEX REPLACE ".*MAJOR ([0-9]+).*MINOR ([0-9]+).*PATCH ([0-9]+).*" "\\1.\\2.\\3"
       SPARSEOPS_CUSPARSELT_VERSION "${_cslt_ver}")
get_filename_component(SPARSEOPS_CUSPARSELT_LIB_DIR "${_cslt_lib}" DIRECTORY)
message(STATUS "sparseops: cuSPARSELt ${SPARSEOPS_CUSPARSELT_VERSION}: ${_cslt_lib}")
add_library(sparseops_cusparselt INTERFACE)
target_include_directories(sparseops_cusparselt SYSTEM INTERFACE "${_cslt_include}")
target_link_libraries(sparseops_cusparselt INTERFACE "${_cslt_lib}")
