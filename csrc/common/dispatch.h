#pragma once
// Project dtype dispatch (CPU kernels). AT_DISPATCH_SWITCH raises "<op>" not implemented for '<dtype>'
// for anything not listed, so no dtype falls through silently.
#include <ATen/Dispatch.h>

#define SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                            \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)    \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))
