#pragma once
// Precompiled for every torch-glue unit of _C (CMakeLists.txt: target_precompile_headers): these
// headers are most of each unit's compile time (measured: 11.8 s -> 3.7 s per unit). Not used by the
// *_avx512.cpp / *_avx2.cpp units, which include no torch headers and are built with other flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
