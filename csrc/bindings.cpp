// sparseops._C: the shared library that registers the ops (static TORCH_LIBRARY initialisers) and a
// pybind11 module with build_info(). Ops are reached through torch.ops.sparseops, never through here.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common/cpu_features.h"

namespace py = pybind11;

static py::dict build_info() {
  py::dict info;
  info["version"] = SPARSEOPS_VERSION;
  info["torch_built_against"] = SPARSEOPS_TORCH_VERSION;  // torch.__version__ at build time, e.g. 2.14.1+cu130
  const std::string torch_cuda = SPARSEOPS_TORCH_CUDA_VERSION;
  info["torch_cuda_built_against"] = torch_cuda.empty() ? py::object(py::none()) : py::object(py::str(torch_cuda));
  info["build_type"] = SPARSEOPS_BUILD_TYPE;
#ifdef SPARSEOPS_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = SPARSEOPS_CUDA_VERSION;
  py::list archs;
  std::string a = SPARSEOPS_CUDA_ARCHS;
  size_t start = 0;
  while (start <= a.size()) {
    size_t end = a.find(',', start);
    if (end == std::string::npos) end = a.size();
    if (end > start) archs.append(a.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  info["cutlass_version"] = SPARSEOPS_CUTLASS_VERSION;
  info["cusparselt_version"] = SPARSEOPS_CUSPARSELT_VERSION;
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::list();
  info["cutlass_version"] = py::none();
  info["cusparselt_version"] = py::none();
#endif
  info["cpu_threads"] = at::get_num_threads();
  // at::parallel_for is header-inline: our kernels are parallel only if this file's flags enabled it.
#if defined(_OPENMP)
  info["cpu_parallel_backend"] = "openmp";
#elif AT_PARALLEL_NATIVE
  info["cpu_parallel_backend"] = "native";
#else
  info["cpu_parallel_backend"] = "none (serial)";
#endif
  info["cpu_isa"] = sparseops::cpu_isa_name();
  info["cpu_amx_bf16"] = sparseops::cpu_use_amx_bf16();
  py::list variants;
  variants.append("baseline");
#if SPARSEOPS_X86_KERNELS
  variants.append("avx2");
  variants.append("avx512");
#endif
  info["cpu_isa_compiled"] = variants;
  return info;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparseops native extension: registers torch.ops.sparseops.*";
  m.def("build_info", &build_info,
        "What this build of sparseops contains: versions, CUDA archs, CUTLASS/cuSPARSELt, CPU ISA.");
}
