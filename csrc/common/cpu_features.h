#pragma once
// Which CPU kernel variant runs: AVX-512 (compiled with -mavx512*) when the CPU has it, else baseline.
// SPARSEOPS_CPU_ISA=baseline forces the portable kernels (tests use it to cover both paths).
#include <string>

namespace sparseops {
bool cpu_use_avx512();
std::string cpu_isa_name();
}  // namespace sparseops
