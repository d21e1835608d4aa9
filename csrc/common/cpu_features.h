#pragma once
// Which CPU kernel variant runs: AVX-512 (files *_avx512.cpp, compiled with -mavx512*) when the CPU has
// AVX-512 F/BW/VL/DQ/BF16, else AVX2 (*_avx2.cpp: the ops that have such a variant; the others run
// their portable kernels) when it has AVX2 + FMA + F16C, else the portable (baseline) kernels.
// SPARSEOPS_CPU_ISA=baseline or =avx2 caps the choice (tests use it to cover every path); another value
// is ignored with a warning.
// SPARSEOPS_X86_KERNELS (set by CMake): whether this build has the x86 variants at all (built on x86-64
// only; the glue files call them under #if SPARSEOPS_X86_KERNELS, and cpu_isa() is then baseline).
#include <string>

#ifndef SPARSEOPS_X86_KERNELS
#error "SPARSEOPS_X86_KERNELS must be defined (0 or 1) by the build (CMakeLists.txt)"
#endif

namespace sparseops {
enum class CpuIsa { kBaseline, kAvx2, kAvx512 };
CpuIsa cpu_isa();
inline bool cpu_use_avx512() { return cpu_isa() == CpuIsa::kAvx512; }
inline bool cpu_use_avx2() { return cpu_isa() == CpuIsa::kAvx2; }
std::string cpu_isa_name();
}  // namespace sparseops
