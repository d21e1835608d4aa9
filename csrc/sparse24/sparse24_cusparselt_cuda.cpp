// compress_24_cusparselt / sparse24_linear_cusparselt: the cuSPARSELt 2:4 path, host glue only.
//
// Type combinations (cuSPARSELt 0.8 "Key Features" table, docs.nvidia.com/cuda/cusparselt/index.html;
// W = A is the structured operand, x = B, C = D = y):
//
//   W, x                   y (C and D)    compute                 scale                 archs (docs)
//   fp16                   fp16           CUSPARSE_COMPUTE_32F    -                     sm80+
//   bf16                   bf16           CUSPARSE_COMPUTE_32F    -                     sm80+
//   int8 (CUDA_R_8I)       fp16 or bf16   CUSPARSE_COMPUTE_32I    alpha vector (fp32)   sm80+
//   e4m3 (CUDA_R_8F_E4M3)  fp16 or bf16   CUSPARSE_COMPUTE_32F    alpha vector (fp32)   sm90, sm100, sm120
//
//   * Scales: on sm90 cuSPARSELt 0.8 has no per-operand scaling for E4M3/INT8 (the A/B_SCALE_MODE/POINTER
//     attributes are documented for block-scaled E4M3/E2M1 on sm100/sm120 only), so the dequantisation
//     scale is applied as alpha with CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING: alpha is then a device fp32
//     vector with one entry per row of D (= per output feature). A per-tensor scale is expanded to that
//     vector on the device (N floats, no host sync); a per-output-channel scale is used as is. The
//     epilogue is D = act(alpha[n] * acc + bias[n]), so y = act((x @ W^T) * scale + bias).
//   * int8/e4m3 output is not offered: the bias type and rounding/saturation of an 8-bit D are not
//     pinned down by the 0.8 docs we could read; fp16/bf16 outputs are the documented combinations above.
//   * Shapes: the structured matrix needs rows and cols in multiples of 16 (16-bit) or 32 (8-bit); the
//     dense x rows are padded to a multiple of 8 (16-bit) or 16 (8-bit) -- the same limits torch's
//     SparseSemiStructuredTensorCUSPARSELT uses (_DTYPE_SHAPE_CONSTRAINTS).
//
//   * One cuSPARSELt handle per device, created on first use and intentionally never destroyed (at
//     process exit the CUDA context may already be gone).
//   * Compression: cusparseLtSpMMAPruneCheck2 (the weight must be 2:4; one int read back) then
//     cusparseLtSpMMACompressedSize2 / cusparseLtSpMMACompress2 on a structured descriptor; no plan.
//   * GEMM: y [M, N] row-major is cuSPARSELt's D = W @ x^T stored column-major (ld N); W is the
//     structured A [N, K] (row-major), x is B given as row-major [M, K] with opB = transpose (both
//     operands K-contiguous). M is padded (a copy of x) when needed. Descriptors + plans are cached by
//     (device, M_pad, N, K, x dtype, y dtype, fused relu?, bias pointer, alg) in a 64-entry LRU: the bias
//     pointer is part of the key because cuSPARSELt reads it from the matmul descriptor the plan was
//     built from. The alpha vector is passed per call, so it is not part of the key (whether alpha is a
//     vector follows from the x dtype, which is).
//   * Algorithm: alg_id >= 0 -> that config id; alg_id < 0 -> the id found by an earlier search for this
//     problem if any, else cuSPARSELt's default (config 0). search=True runs cusparseLtMatmulSearch once
//     per problem (it also computes y) and remembers the id it picked.
//   * Epilogue: bias (CUSPARSELT_MATMUL_BIAS_POINTER, y's dtype) and relu (CUSPARSELT_MATMUL_ACTIVATION_RELU)
//     are fused. gelu (exact erf form; cuSPARSELt's GELU attribute is not documented as the erf form), silu
//     and relu2 run as one elementwise pass afterwards.
//   * Workspace: a torch uint8 tensor per call (the caching allocator makes this cheap).
#include <torch/library.h>

#include <cusparseLt.h>

#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "common/cuda_glue.h"
#include "sparse24/linear24_checks.h"
#include "sparse24/linear24_launch.h"
#include "sparse24/sparse24_checks.h"

namespace sparseops::sparse24 {
namespace {

constexpr const char* kCompressOp = "compress_24_cusparselt";
constexpr const char* kLinearOp = "sparse24_linear_cusparselt";
constexpr int64_t kCsltDimMultiple16 = 16;  // rows and cols of a structured 16-bit matrix
constexpr int64_t kCsltDimMultiple8 = 32;   // ... of a structured 8-bit (int8 / e4m3) matrix
constexpr int64_t kCsltMMultiple16 = 8;     // rows of the dense 16-bit operand (x); the glue pads
constexpr int64_t kCsltMMultiple8 = 16;     // ... of the dense 8-bit operand
constexpr size_t kPlanCacheCapacity = 64;

#define SPARSEOPS_CSLT_CHECK(op, what, expr)                                                                \
  do {                                                                                                      \
    const cusparseStatus_t _st = (expr);                                                                    \
    TORCH_CHECK(_st == CUSPARSE_STATUS_SUCCESS, op, ": cuSPARSELt ", what, " failed: ",                     \
                cusparseLtGetErrorName(_st), " (", cusparseLtGetErrorString(_st), ")");                     \
  } while (0)

const cusparseLtHandle_t* handle_for(const char* op, int device) {
  static std::mutex mu;
  static auto* handles = new std::map<int, std::unique_ptr<cusparseLtHandle_t>>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  auto& h = (*handles)[device];
  if (!h) {
    auto fresh = std::make_unique<cusparseLtHandle_t>();
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtInit", cusparseLtInit(fresh.get()));
    h = std::move(fresh);
  }
  return h.get();
}

constexpr at::ScalarType kE4M3 = at::ScalarType::Float8_e4m3fn;

bool is_8bit(at::ScalarType t) { return t == at::kChar || t == kE4M3; }

cudaDataType cslt_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    case at::kChar: return CUDA_R_8I;
    default: return CUDA_R_8F_E4M3;  // check_input_dtype admits nothing else
  }
}

int64_t dim_multiple(at::ScalarType t) { return is_8bit(t) ? kCsltDimMultiple8 : kCsltDimMultiple16; }
int64_t m_multiple(at::ScalarType t) { return is_8bit(t) ? kCsltMMultiple8 : kCsltMMultiple16; }

void check_input_dtype(const char* op, const char* arg, const at::Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kHalf || s == at::kBFloat16 || s == at::kChar || s == kE4M3, op, ": expected ", arg,
                   " to have dtype in {Half, BFloat16, Char (int8), Float8_e4m3fn} (got ", s,
                   "); use layout=\"packed\" for float32");
}

// e4m3 sparse GEMMs exist from sm90 on (cuSPARSELt 0.8 table: 9.0, 10.0, 12.0): refuse older GPUs up front
// instead of surfacing cuSPARSELt's NOT_SUPPORTED from plan creation.
void check_fp8_arch(const char* op, const at::Tensor& t) {
  if (t.scalar_type() != kE4M3) return;
  int major = 0, minor = 0;
  const int dev = t.device().index();
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  TORCH_CHECK_NOT_IMPLEMENTED(major >= 9, op, ": float8_e4m3fn needs a GPU of compute capability 9.0 or newer ",
                              "(cuSPARSELt's E4M3 sparse kernels are sm90+); device cuda:", dev, " is sm", major,
                              minor, ". Use int8 or fp16/bf16 on this GPU");
}

void check_weight_shape(const char* op, int64_t N, int64_t K, at::ScalarType t) {
  const int64_t mult = dim_multiple(t);
  TORCH_CHECK(N % mult == 0 && K % mult == 0 && N > 0 && K > 0, op, ": cuSPARSELt needs out_features and ",
              "in_features to be positive multiples of ", mult, " for ", t, " (got W of shape [", N, ", ", K, "])");
}

// Structured descriptor of W [N, K] row-major; destroyed with the object.
struct StructuredDesc {
  cusparseLtMatDescriptor_t d;
  StructuredDesc(const char* op, const cusparseLtHandle_t* h, int64_t N, int64_t K, cudaDataType type) {
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtStructuredDescriptorInit",
                         cusparseLtStructuredDescriptorInit(h, &d, N, K, K, 16, type, CUSPARSE_ORDER_ROW,
                                                            CUSPARSELT_SPARSITY_50_PERCENT));
  }
  ~StructuredDesc() { cusparseLtMatDescriptorDestroy(&d); }
  StructuredDesc(const StructuredDesc&) = delete;
  StructuredDesc& operator=(const StructuredDesc&) = delete;
};

size_t compressed_bytes(const char* op, const cusparseLtHandle_t* h, const StructuredDesc& desc, size_t* buffer_bytes) {
  size_t size = 0, buffer = 0;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtSpMMACompressedSize2", cusparseLtSpMMACompressedSize2(h, &desc.d, &size, &buffer));
  if (buffer_bytes != nullptr) *buffer_bytes = buffer;
  return size;
}

at::Tensor compress_24_cusparselt_cuda(const at::Tensor& w) {
  check_dim(kCompressOp, "w", w, 2);
  check_input_dtype(kCompressOp, "w", w);
  check_device_type(kCompressOp, "w", w, at::kCUDA);
  const int64_t N = w.size(0), K = w.size(1);
  check_weight_shape(kCompressOp, N, K, w.scalar_type());
  const c10::cuda::OptionalCUDAGuard guard(w.device());
  check_fp8_arch(kCompressOp, w);
  const cusparseLtHandle_t* h = handle_for(kCompressOp, w.device().index());
  at::Tensor wc = w.contiguous();
  if (reinterpret_cast<uintptr_t>(wc.const_data_ptr()) % 16 != 0) wc = wc.clone();
  const StructuredDesc desc(kCompressOp, h, N, K, cslt_type(w.scalar_type()));
  cudaStream_t stream = current_stream();

  at::Tensor invalid = at::zeros({1}, w.options().dtype(at::kInt));
  SPARSEOPS_CSLT_CHECK(kCompressOp, "cusparseLtSpMMAPruneCheck2",
                       cusparseLtSpMMAPruneCheck2(h, &desc.d, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, wc.const_data_ptr(),
                                                  invalid.mutable_data_ptr<int>(), stream));
  TORCH_CHECK(invalid.item<int>() == 0, kCompressOp, ": w is not 2:4 sparse along its rows (some group of 4 ",
              "consecutive elements has more than 2 non-zeros); pass prune=True to compress_24 to keep the 2 largest");

  size_t buffer_bytes = 0;
  const size_t size = compressed_bytes(kCompressOp, h, desc, &buffer_bytes);
  at::Tensor out = at::empty({static_cast<int64_t>(size)}, w.options().dtype(at::kByte));
  at::Tensor buffer = at::empty({static_cast<int64_t>(std::max<size_t>(buffer_bytes, 1))}, w.options().dtype(at::kByte));
  SPARSEOPS_CSLT_CHECK(kCompressOp, "cusparseLtSpMMACompress2",
                       cusparseLtSpMMACompress2(h, &desc.d, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, wc.const_data_ptr(),
                                                out.mutable_data_ptr(), buffer.mutable_data_ptr(), stream));
  return out;
}

// ---- matmul plans ------------------------------------------------------------------------------

// (device, M_pad, N, K, x dtype, y dtype, fused relu, bias pointer, alg id)
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int, int, bool, uintptr_t, int>;
// (device, M_pad, N, K, x dtype, y dtype, fused relu, has bias) -> alg id found by cusparseLtMatmulSearch
using ProblemKey = std::tuple<int, int64_t, int64_t, int64_t, int, int, bool, bool>;

struct Plan {
  cusparseLtMatDescriptor_t a, b, c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg_sel;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  int stage = 0;  // how far initialisation got: what the destructor must release
  ~Plan() {
    if (stage >= 6) cusparseLtMatmulPlanDestroy(&plan);
    if (stage >= 5) cusparseLtMatmulAlgSelectionDestroy(&alg_sel);
    if (stage >= 3) cusparseLtMatDescriptorDestroy(&c);
    if (stage >= 2) cusparseLtMatDescriptorDestroy(&b);
    if (stage >= 1) cusparseLtMatDescriptorDestroy(&a);
  }
};

struct PlanTypes {
  cudaDataType in;       // W and x
  cudaDataType out;      // C and D (y)
  cusparseComputeType compute;
  bool alpha_vector;     // alpha is a device fp32 vector of N entries (CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING)
};

std::shared_ptr<Plan> make_plan(const cusparseLtHandle_t* h, int64_t m_pad, int64_t N, int64_t K, const PlanTypes& t,
                                bool relu, const void* bias, int alg_id) {
  auto p = std::make_shared<Plan>();
  const char* op = kLinearOp;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtStructuredDescriptorInit (W)",
                       cusparseLtStructuredDescriptorInit(h, &p->a, N, K, K, 16, t.in, CUSPARSE_ORDER_ROW,
                                                          CUSPARSELT_SPARSITY_50_PERCENT));
  p->stage = 1;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtDenseDescriptorInit (x)",
                       cusparseLtDenseDescriptorInit(h, &p->b, m_pad, K, K, 16, t.in, CUSPARSE_ORDER_ROW));
  p->stage = 2;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtDenseDescriptorInit (y)",
                       cusparseLtDenseDescriptorInit(h, &p->c, N, m_pad, N, 16, t.out, CUSPARSE_ORDER_COL));
  p->stage = 3;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulDescriptorInit",
                       cusparseLtMatmulDescriptorInit(h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                      CUSPARSE_OPERATION_TRANSPOSE, &p->a, &p->b, &p->c, &p->c,
                                                      t.compute));
  p->stage = 4;
  if (relu) {
    const int on = 1;
    SPARSEOPS_CSLT_CHECK(op, "setting CUSPARSELT_MATMUL_ACTIVATION_RELU",
                         cusparseLtMatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_ACTIVATION_RELU, &on, sizeof(on)));
  }
  if (bias != nullptr) {
    void* bias_ptr = const_cast<void*>(bias);
    SPARSEOPS_CSLT_CHECK(op, "setting CUSPARSELT_MATMUL_BIAS_POINTER",
                         cusparseLtMatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias_ptr,
                                                          sizeof(bias_ptr)));
  }
  if (t.alpha_vector) {
    const int on = 1;
    SPARSEOPS_CSLT_CHECK(op, "setting CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING",
                         cusparseLtMatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &on,
                                                          sizeof(on)));
  }
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulAlgSelectionInit",
                       cusparseLtMatmulAlgSelectionInit(h, &p->alg_sel, &p->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
  p->stage = 5;
  if (alg_id >= 0) {
    int max_id = -1;
    SPARSEOPS_CSLT_CHECK(op, "reading CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID",
                         cusparseLtMatmulAlgGetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id,
                                                         sizeof(max_id)));
    TORCH_CHECK(alg_id <= max_id, op, ": alg_id ", alg_id, " is out of range: cuSPARSELt reports config ids up to ",
                max_id, " for this problem");
    const cusparseStatus_t st =
        cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &alg_id, sizeof(alg_id));
    TORCH_CHECK(st == CUSPARSE_STATUS_SUCCESS, op, ": alg_id ", alg_id, " was rejected by cuSPARSELt (",
                cusparseLtGetErrorName(st), "); the largest config id it reports for this problem is ", max_id);
  }
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulPlanInit", cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg_sel));
  p->stage = 6;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulGetWorkspace", cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
  return p;
}

struct PlanCache {
  std::mutex mu;
  std::list<std::pair<PlanKey, std::shared_ptr<Plan>>> lru;  // front = most recent
  std::map<PlanKey, decltype(lru)::iterator> index;
  std::map<ProblemKey, int> searched;

  std::shared_ptr<Plan> find(const PlanKey& k) {
    auto it = index.find(k);
    if (it == index.end()) return nullptr;
    lru.splice(lru.begin(), lru, it->second);
    return it->second->second;
  }
  void insert(const PlanKey& k, std::shared_ptr<Plan> p) {
    auto it = index.find(k);
    if (it != index.end()) {
      lru.erase(it->second);
      index.erase(it);
    }
    lru.emplace_front(k, std::move(p));
    index[k] = lru.begin();
    while (lru.size() > kPlanCacheCapacity) {  // shared_ptr: a plan in use by another thread outlives eviction
      index.erase(lru.back().first);
      lru.pop_back();
    }
  }
};

PlanCache& plan_cache() {
  static auto* cache = new PlanCache();  // never destroyed (see handle_for)
  return *cache;
}

// y's dtype: x's for 16-bit x (out_dtype None or equal to it); fp16/bf16 for int8/e4m3 x (default bf16).
at::ScalarType resolve_out_dtype(const char* op, at::ScalarType in, std::optional<at::ScalarType> out_dtype) {
  if (!is_8bit(in)) {
    TORCH_CHECK_TYPE(!out_dtype.has_value() || *out_dtype == in, op, ": expected out_dtype None or x's dtype ", in,
                     " for 16-bit x (got ", *out_dtype, "); mixed output types are offered for int8/float8_e4m3fn x only");
    return in;
  }
  const at::ScalarType out = out_dtype.value_or(at::kBFloat16);
  TORCH_CHECK_TYPE(out == at::kHalf || out == at::kBFloat16, op, ": expected out_dtype in {Half, BFloat16} for x of ",
                   "dtype ", in, " (got ", out, "); cuSPARSELt's ", in, " GEMM is used here with fp16/bf16 output only");
  return out;
}

// scale: required for int8/e4m3 x, refused for 16-bit x; fp32 on x's device, [] or [1] (per tensor) or
// [out_features] (per output channel).
void check_scale(const char* op, const std::optional<at::Tensor>& scale, const at::Tensor& x, int64_t n) {
  const at::ScalarType in = x.scalar_type();
  if (!is_8bit(in)) {
    TORCH_CHECK(!scale.has_value(), op, ": scale is for int8/float8_e4m3fn x only (got a scale with x of dtype ", in,
                "); pass scale=None");
    return;
  }
  TORCH_CHECK(scale.has_value(), op, ": x of dtype ", in, " needs a scale: a float32 tensor of shape [] or [1] ",
              "(per tensor) or [", n, "] (per output feature), y = act((x @ W^T) * scale + bias); got scale=None");
  const at::Tensor& s = *scale;
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat, op, ": expected scale to have dtype Float (got ", s.scalar_type(),
                   ")");
  check_same_device(op, "scale", s, "x", x);
  const bool per_tensor = s.dim() <= 1 && s.numel() == 1;
  const bool per_channel = s.dim() == 1 && s.size(0) == n;
  TORCH_CHECK(per_tensor || per_channel, op, ": expected scale of shape [], [1] or [", n, "] (got ", s.sizes(), ")");
}

// bias: optional [N], y's dtype, x's device (cuSPARSELt reads it in the epilogue as a vector of D's type).
void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& x, at::ScalarType out,
                int64_t n) {
  if (!bias.has_value()) return;
  TORCH_CHECK_TYPE(bias->scalar_type() == out, op, ": expected bias to have the output dtype ", out, " (got ",
                   bias->scalar_type(), ")");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, op, ": expected bias of shape [", n, "] (got ", bias->sizes(), ")");
  check_same_device(op, "bias", *bias, "x", x);
}

at::Tensor aligned16(at::Tensor t) {
  t = t.contiguous();
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) t = t.clone();
  return t;
}

at::Tensor sparse24_linear_cusparselt_cuda(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
                                           int64_t in_features, const std::optional<at::Tensor>& bias,
                                           c10::string_view activation, int64_t alg_id, bool search,
                                           const std::optional<at::Tensor>& scale,
                                           std::optional<at::ScalarType> out_dtype) {
  const char* op = kLinearOp;
  const Act act = parse_activation(op, activation);
  check_dim(op, "x", x, 2);
  check_input_dtype(op, "x", x);
  check_device_type(op, "x", x, at::kCUDA);
  check_same_device(op, "compressed", compressed, "x", x);
  TORCH_CHECK_TYPE(compressed.scalar_type() == at::kByte, op, ": expected compressed to be the uint8 buffer from ",
                   "compress_24_cusparselt (got dtype ", compressed.scalar_type(), ")");
  check_dim(op, "compressed", compressed, 1);
  const at::ScalarType in_t = x.scalar_type();
  const bool quantised = is_8bit(in_t);
  const int64_t N = out_features, K = in_features, M = x.size(0);
  check_weight_shape(op, N, K, in_t);
  TORCH_CHECK(x.size(1) == K, op, ": x has ", x.size(1), " features (x.size(-1)) but the weight expects ", K,
              " (in_features)");
  TORCH_CHECK(alg_id >= -1, op, ": expected alg_id >= -1 (-1: default) (got ", alg_id, ")");
  TORCH_CHECK(!(search && alg_id >= 0), op, ": pass either alg_id >= 0 or search=True, not both (got alg_id=",
              alg_id, ")");
  const at::ScalarType out_t = resolve_out_dtype(op, in_t, out_dtype);
  check_scale(op, scale, x, N);
  check_bias(op, bias, x, out_t, N);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  check_fp8_arch(op, x);
  const int device = x.device().index();
  const cusparseLtHandle_t* h = handle_for(op, device);
  const PlanTypes types{cslt_type(in_t), cslt_type(out_t), in_t == at::kChar ? CUSPARSE_COMPUTE_32I : CUSPARSE_COMPUTE_32F,
                        quantised};
  {
    const StructuredDesc desc(op, h, N, K, types.in);
    const size_t expected = compressed_bytes(op, h, desc, nullptr);
    TORCH_CHECK(compressed.numel() == static_cast<int64_t>(expected), op, ": expected compressed to hold ", expected,
                " bytes (cuSPARSELt's size for a [", N, ", ", K, "] ", in_t, " weight), got ",
                compressed.numel(), "; compress it with compress_24_cusparselt from a weight of this shape and dtype");
  }
  const at::TensorOptions out_opts = x.options().dtype(out_t);
  if (M == 0) return at::empty({0, N}, out_opts);

  const int64_t mult = m_multiple(in_t);
  const int64_t m_pad = (M + mult - 1) / mult * mult;
  at::Tensor xp = aligned16(x);
  if (m_pad != M) {
    // constant_pad_nd has no float8 kernel: pad the raw bytes of 8-bit x instead (zero bytes are 0 in int8 and e4m3).
    at::Tensor raw = xp.scalar_type() == kE4M3 ? xp.view(at::kByte) : xp;
    raw = at::constant_pad_nd(raw, {0, 0, 0, m_pad - M}, 0);
    xp = raw.scalar_type() == in_t ? raw : raw.view(in_t);
  }
  at::Tensor wc = aligned16(compressed);
  std::optional<at::Tensor> bc;
  if (bias.has_value()) bc = aligned16(*bias);
  // The alpha vector: one fp32 per output feature (a per-tensor scale expanded on the device: no sync).
  std::optional<at::Tensor> alpha_vec;
  if (quantised) alpha_vec = aligned16(scale->numel() == 1 ? scale->reshape({1}).expand({N}) : *scale);
  const void* bias_ptr = bc.has_value() ? bc->const_data_ptr() : nullptr;
  const bool relu = act == Act::kRelu;
  const int in_key = static_cast<int>(in_t), out_key = static_cast<int>(out_t);
  const ProblemKey problem{device, m_pad, N, K, in_key, out_key, relu, bias_ptr != nullptr};

  PlanCache& cache = plan_cache();
  std::shared_ptr<Plan> plan;
  bool run_search = false;
  int alg = static_cast<int>(alg_id);
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto found = cache.searched.find(problem);
    if (alg < 0 && found != cache.searched.end()) alg = found->second;  // the cached searched default
    run_search = search && found == cache.searched.end();
    const int key_alg = run_search ? -2 : alg;  // -2: a plan still to be tuned by the search below
    const PlanKey key{device, m_pad, N, K, in_key, out_key, relu, reinterpret_cast<uintptr_t>(bias_ptr), key_alg};
    plan = run_search ? nullptr : cache.find(key);
    if (!plan) {
      plan = make_plan(h, m_pad, N, K, types, relu, bias_ptr, alg);
      if (!run_search) cache.insert(key, plan);
    }
  }

  at::Tensor y_full = at::empty({m_pad, N}, out_opts);
  at::Tensor workspace = at::empty({static_cast<int64_t>(std::max<size_t>(plan->workspace, 1))}, x.options().dtype(at::kByte));
  const float alpha_one = 1.0f, beta = 0.0f;
  // alpha: a host scalar, or (ALPHA_VECTOR_SCALING) a device pointer to N floats; beta stays a host scalar.
  const void* alpha = alpha_vec.has_value() ? alpha_vec->const_data_ptr() : static_cast<const void*>(&alpha_one);
  cudaStream_t stream = current_stream();
  if (run_search) {
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulSearch",
                         cusparseLtMatmulSearch(h, &plan->plan, alpha, wc.const_data_ptr(), xp.const_data_ptr(), &beta,
                                                y_full.mutable_data_ptr(), y_full.mutable_data_ptr(),
                                                workspace.mutable_data_ptr(), &stream, 1));
    int found_alg = 0;
    SPARSEOPS_CSLT_CHECK(op, "reading the searched CUSPARSELT_MATMUL_ALG_CONFIG_ID",
                         cusparseLtMatmulAlgGetAttribute(h, &plan->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &found_alg,
                                                         sizeof(found_alg)));
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulGetWorkspace", cusparseLtMatmulGetWorkspace(h, &plan->plan, &plan->workspace));
    std::lock_guard<std::mutex> lock(cache.mu);
    cache.searched[problem] = found_alg;
    cache.insert(PlanKey{device, m_pad, N, K, in_key, out_key, relu, reinterpret_cast<uintptr_t>(bias_ptr), found_alg},
                 plan);
  } else {
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmul",
                         cusparseLtMatmul(h, &plan->plan, alpha, wc.const_data_ptr(), xp.const_data_ptr(), &beta,
                                          y_full.mutable_data_ptr(), y_full.mutable_data_ptr(),
                                          workspace.mutable_data_ptr(), &stream, 1));
  }
  at::Tensor y = m_pad == M ? y_full : y_full.narrow(0, 0, M);
  if (act != Act::kNone && act != Act::kRelu) {  // bias and scale are already in; the activation as one pass
    BiasActParams ep{y.mutable_data_ptr(), nullptr, M, N, act, to_device_dtype(op, out_t)};
    SPARSEOPS_CUDA_CHECK(launch_bias_act(ep, stream));
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("compress_24_cusparselt", &compress_24_cusparselt_cuda);
  m.impl("sparse24_linear_cusparselt", &sparse24_linear_cusparselt_cuda);
}

}  // namespace sparseops::sparse24
