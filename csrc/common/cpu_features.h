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
// AMX tiles with bf16 products (Sapphire Rapids and later Xeons) on top of the AVX-512 variant: the CPU
// has AMX-TILE, AMX-BF16 and AVX512-VBMI2, and Linux granted this process the tile state
// (arch_prctl ARCH_REQ_XCOMP_PERM). SPARSEOPS_CPU_AMX=0 turns it off (tests use it to cover the plain
// AVX-512 kernels on such CPUs); capping SPARSEOPS_CPU_ISA below avx512 does too.
bool cpu_use_amx_bf16();
// An Intel CPU (tuning only: e.g. where MKL's dense GEMM is strong, see sparse24's gemv_max_m).
bool cpu_is_intel();
std::string cpu_isa_name();
}  // namespace sparseops
