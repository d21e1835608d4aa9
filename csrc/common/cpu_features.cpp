#include "common/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace sparseops {

static bool detect_avx512() {
  const char* forced = std::getenv("SPARSEOPS_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return false;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_use_avx512() {
  static const bool use = detect_avx512();
  return use;
}

std::string cpu_isa_name() { return cpu_use_avx512() ? "avx512" : "baseline"; }

}  // namespace sparseops
