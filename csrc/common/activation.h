#pragma once
// The fused activations of the linear ops, shared by CPU and CUDA code (no torch types, so .cu files
// and CUTLASS epilogues can use it). gelu is the exact (erf) form, torch's default.
#include <cmath>
#include <string_view>

#include "common/host_device.h"

namespace sparseops {

enum class Act : int { kNone = 0, kRelu = 1, kGelu = 2, kSilu = 3, kRelu2 = 4 };

constexpr const char* kActivationNames = "\"none\", \"relu\", \"gelu\", \"silu\", \"relu2\"";

inline bool act_from_name(std::string_view s, Act* out) {
  if (s == "none") *out = Act::kNone;
  else if (s == "relu") *out = Act::kRelu;
  else if (s == "gelu") *out = Act::kGelu;
  else if (s == "silu") *out = Act::kSilu;
  else if (s == "relu2") *out = Act::kRelu2;
  else return false;
  return true;
}

// act(v) in fp32; `kind` is an Act value (an int so that CUTLASS epilogue params can carry it).
SPARSEOPS_HD float apply_activation(float v, int kind) {
  switch (kind) {
    case static_cast<int>(Act::kRelu): return v > 0.0f ? v : 0.0f;
    case static_cast<int>(Act::kGelu): return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case static_cast<int>(Act::kSilu): return v / (1.0f + expf(-v));
    case static_cast<int>(Act::kRelu2): {
      const float r = v > 0.0f ? v : 0.0f;
      return r * r;
    }
    default: return v;
  }
}

}  // namespace sparseops
