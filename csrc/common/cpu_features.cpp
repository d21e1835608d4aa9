#include "common/cpu_features.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace sparseops {

static CpuIsa detect_isa() {
  const char* forced = std::getenv("SPARSEOPS_CPU_ISA");
  CpuIsa cap = CpuIsa::kAvx512;
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) {
    cap = CpuIsa::kBaseline;
  } else if (forced != nullptr && std::strcmp(forced, "avx2") == 0) {
    cap = CpuIsa::kAvx2;
  } else if (forced != nullptr && forced[0] != '\0' && std::strcmp(forced, "avx512") != 0) {
    TORCH_WARN("sparseops: ignoring SPARSEOPS_CPU_ISA=", forced,
               " (expected baseline, avx2 or avx512); using the best variant this CPU supports");
  }
#if SPARSEOPS_X86_KERNELS && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bf16");
  const CpuIsa has = avx512 ? CpuIsa::kAvx512 : avx2 ? CpuIsa::kAvx2 : CpuIsa::kBaseline;
  return has < cap ? has : cap;
#else
  (void)cap;
  return CpuIsa::kBaseline;
#endif
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = detect_isa();
  return isa;
}

std::string cpu_isa_name() {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace sparseops
