#pragma once
// Warp-level tensor-core building blocks for the sm80+ attention kernels (attention_tc.cuh): one job
// each. Fragments follow PTX's mma.m16n8k16 layouts; with g = lane / 4 and t = lane % 4:
//   A (16x16, row-major) a[0..3]: (row g, cols 2t..2t+1), (g+8, 2t), (g, 2t+8), (g+8, 2t+8)
//   B (16x8, "col")      b[0..1]: (k 2t..2t+1, col g), (k 2t+8.., col g)
//   C (16x8, fp32)       c[0..3]: (row g, cols 2t, 2t+1), (row g+8, cols 2t, 2t+1)
// Shared-memory tiles are row-major with a row stride of (cols + 8) elements: +16 bytes per row puts the
// 8 rows an ldmatrix reads in 8 different bank groups (no conflicts) for any cols that is a multiple of 16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace sparseops::attention::tc {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 16-bit matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// The same, each matrix transposed on the way into registers.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += A B, fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to T, lo in the low half (the element with the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// 16 bytes global -> shared without a register round trip; zero-filled when !valid (nothing is read).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\n" ::);
  asm volatile("cp.async.wait_group 0;\n" ::);
}

// The 4 lanes of a quad (g fixed) hold one row of a C fragment between them.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

// ---- warp-level products ------------------------------------------------------------------------

// acc[16 x kN] += A[16 x kK] * B[kN x kK]^T: A rows (16, stride lda) and B rows (kN, stride ldb) both
// in shared memory, K contiguous. S = Q K^T and dP = dO V^T.
template <typename T, int kN, int kK>
__device__ __forceinline__ void warp_gemm_abt(float (&acc)[kN / 8][4], const T* a, int lda, const T* b, int ldb) {
  static_assert(kN % 16 == 0 && kK % 16 == 0, "tiles are whole 16x16 steps");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, a + (lane % 16) * lda + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      // matrices: (cols np*16.., k lo), (np*16.., k hi), (np*16+8.., k lo), (np*16+8.., k hi)
      uint32_t bf[4];
      ldmatrix_x4(bf, b + (np * 16 + lane % 8 + (lane / 16) * 8) * ldb + kk * 16 + ((lane / 8) % 2) * 8);
      mma_16816<T>(acc[2 * np], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc[16 x kN] += A[16 x kK] * B[kK x kN]: A given as register fragments (a C fragment of the previous
// product, packed by pack_a), B rows (kK, stride ldb) in shared memory, N contiguous. O += P V and
// dQ += dS K.
template <typename T, int kN, int kK>
__device__ __forceinline__ void warp_gemm_ab(float (&acc)[kN / 8][4], const uint32_t (&a)[kK / 16][4], const T* b,
                                             int ldb) {
  static_assert(kN % 16 == 0 && kK % 16 == 0, "tiles are whole 16x16 steps");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      // transposed matrices: (k lo, cols np*16..), (k hi, np*16..), (k lo, np*16+8..), (k hi, np*16+8..)
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ldb + np * 16 + (lane / 16) * 8);
      mma_16816<T>(acc[2 * np], a[kk], bf[0], bf[1]);
      mma_16816<T>(acc[2 * np + 1], a[kk], bf[2], bf[3]);
    }
  }
}

// acc[16 x kN] += A^T B with A [kK x 16] (rows stride lda) and B [kK x kN] (rows stride ldb) in shared
// memory: dV = P^T dO and dK = dS^T Q over the thread block's query rows (kK of them).
template <typename T, int kN, int kK>
__device__ __forceinline__ void warp_gemm_atb(float (&acc)[kN / 8][4], const T* a, int lda, const T* b, int ldb) {
  static_assert(kN % 16 == 0 && kK % 16 == 0, "tiles are whole 16x16 steps");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    // A^T fragment from A's rows kk*16..: transposed matrices (k lo, m lo), (k lo, m hi), (k hi, m lo),
    // (k hi, m hi) give a[0..3].
    uint32_t af[4];
    ldmatrix_x4_trans(af, a + (kk * 16 + lane % 8 + (lane / 16) * 8) * lda + ((lane / 8) % 2) * 8);
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ldb + np * 16 + (lane / 16) * 8);
      mma_16816<T>(acc[2 * np], af, bf[0], bf[1]);
      mma_16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// A C fragment [16 x kN] (fp32) as A fragments of the next product (k = the C's columns), rounded to T.
template <typename T, int kN>
__device__ __forceinline__ void pack_a(uint32_t (&a)[kN / 16][4], const float (&c)[kN / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    a[kk][0] = pack2<T>(c[2 * kk][0], c[2 * kk][1]);
    a[kk][1] = pack2<T>(c[2 * kk][2], c[2 * kk][3]);
    a[kk][2] = pack2<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

template <int kN>
__device__ __forceinline__ void zero(float (&c)[kN / 8][4]) {
#pragma unroll
  for (int n = 0; n < kN / 8; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
}

}  // namespace sparseops::attention::tc
