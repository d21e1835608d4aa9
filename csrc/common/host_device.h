#pragma once
// Qualifiers for helpers that CPU (.cpp, g++) and CUDA (.cu, nvcc) code share.
#if defined(__CUDACC__)
#define SPARSEOPS_HD __host__ __device__ __forceinline__
#else
#define SPARSEOPS_HD inline
#endif
