#include "common/cpu_features.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
  // POPCNT and BMI1 come with every AVX2 CPU; the AVX2 / AVX-512 units are compiled with them too.
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
                    __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi");
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

static bool detect_amx_bf16() {
#if SPARSEOPS_X86_KERNELS && defined(__linux__) && defined(__x86_64__)
  if (!cpu_use_avx512()) return false;
  const char* env = std::getenv("SPARSEOPS_CPU_AMX");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
      !__builtin_cpu_supports("avx512vbmi2")) {
    return false;
  }
  // The tile data state is off until the process asks for it (Linux 5.16+); oneDNN asks the same way.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool cpu_use_amx_bf16() {
  static const bool amx = detect_amx_bf16();
  return amx;
}

bool cpu_is_intel() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return intel;
#else
  return false;
#endif
}

std::string cpu_isa_name() {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace sparseops
