#pragma once
// The AVX-512 kernels' dtype tag (sparse24_cpu_kernels.h) for a dispatched scalar_t; for the baseline
// (torch-including) glue files only.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24 {

template <typename scalar_t>
constexpr cpu::Dtype cpu_dtype() {
  static_assert(std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::Half> ||
                std::is_same_v<scalar_t, c10::BFloat16>);
  if constexpr (std::is_same_v<scalar_t, float>) return cpu::Dtype::kFloat32;
  if constexpr (std::is_same_v<scalar_t, c10::Half>) return cpu::Dtype::kFloat16;
  return cpu::Dtype::kBFloat16;
}

}  // namespace sparseops::sparse24
