#pragma once
// Input checks. Every message starts with the op name, names the argument, and says what was
// expected and what was got:  "compress_24: expected w to be 2-D (got 3-D)".
#include <ATen/ATen.h>
#include <initializer_list>
#include <string>

namespace sparseops {

inline std::string dtype_list(std::initializer_list<at::ScalarType> types) {
  std::string s;
  for (auto t : types) {
    if (!s.empty()) s += ", ";
    s += c10::toString(t);
  }
  return s;
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto a : allowed) {
    if (t.scalar_type() == a) return;
  }
  TORCH_CHECK_TYPE(false, op, ": expected ", arg, " to have dtype in {", dtype_list(allowed), "} (got ",
                   t.scalar_type(), ")");
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": expected ", arg, " to be ", dim, "-D (got ", t.dim(), "-D with shape ",
              t.sizes(), ")");
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", arg, " on the same device as ", ref_arg, " (",
              ref.device(), "), got ", t.device());
}

inline void check_device_type(const char* op, const char* arg, const at::Tensor& t, at::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, op, ": expected ", arg, " on ", type, " (got ", t.device(), ")");
}

}  // namespace sparseops
