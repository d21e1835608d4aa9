# Finds the installed PyTorch through the Python interpreter and defines:
#   sparseops_torch        INTERFACE target: torch include dirs, libtorch/libtorch_cpu/libc10, ABI flag
#   sparseops_torch_cuda   INTERFACE target: libtorch_cuda/libc10_cuda (only when torch has CUDA)
#   SPARSEOPS_TORCH_VERSION (public, e.g. 2.14.1), SPARSEOPS_TORCH_FULL_VERSION (torch.__version__, e.g.
#   2.14.1+cu130), SPARSEOPS_TORCH_CUDA_VERSION ("" for a CPU-only torch), SPARSEOPS_TORCH_LIB_DIR
#
# We do not call find_package(Torch): with a CUDA build of torch its config insists on finding a CUDA
# toolkit (even for a CPU-only build of ours), injects global -gencode flags that override per-target
# architectures, and links nvrtc, which this toolchain lacks. Torch override: set Python_EXECUTABLE.

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch, torch.utils.cpp_extension as ce, os; print(';'.join([torch.__version__.split('+')[0], torch.version.cuda or '', str(int(torch._C._GLIBCXX_USE_CXX11_ABI)), os.path.join(os.path.dirname(torch.__file__), 'lib'), '|'.join(ce.include_paths()), torch.__version__]))"
  OUTPUT_VARIABLE _torch_info
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _torch_rc
  ERROR_VARIABLE _torch_err)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "sparseops: could not import torch with ${Python_EXECUTABLE}:\n${_torch_err}\n"
    "Install torch into this environment first and build with `pip install --no-build-isolation .`")
endif()
list(GET _torch_info 0 SPARSEOPS_TORCH_VERSION)
list(GET _torch_info 1 SPARSEOPS_TORCH_CUDA_VERSION)
list(GET _torch_info 2 _torch_abi)
list(GET _torch_info 3 SPARSEOPS_TORCH_LIB_DIR)
list(GET _torch_info 4 _torch_includes)
list(GET _torch_info 5 SPARSEOPS_TORCH_FULL_VERSION)
string(REPLACE "|" ";" _torch_includes "${_torch_includes}")
message(STATUS "sparseops: torch ${SPARSEOPS_TORCH_VERSION} (CUDA '${SPARSEOPS_TORCH_CUDA_VERSION}') at ${SPARSEOPS_TORCH_LIB_DIR}")

function(_sparseops_torch_lib out name)
  find_library(_lib_${name} NAMES ${name} PATHS "${SPARSEOPS_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
  set(${out} "${_lib_${name}}" PARENT_SCOPE)
endfunction()

_sparseops_torch_lib(_libtorch torch)
_sparseops_torch_lib(_libtorch_cpu torch_cpu)
_sparseops_torch_lib(_libc10 c10)
add_library(sparseops_torch INTERFACE)
target_include_directories(sparseops_torch SYSTEM INTERFACE ${_torch_includes})
target_link_libraries(sparseops_torch INTERFACE "${_libtorch}" "${_libtorch_cpu}" "${_libc10}")
target_compile_definitions(sparseops_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_abi})

if(SPARSEOPS_TORCH_CUDA_VERSION)
  _sparseops_torch_lib(_libtorch_cuda torch_cuda)
  _sparseops_torch_lib(_libc10_cuda c10_cuda)
  add_library(sparseops_torch_cuda INTERFACE)
  target_link_libraries(sparseops_torch_cuda INTERFACE "${_libtorch_cuda}" "${_libc10_cuda}")
endif()
