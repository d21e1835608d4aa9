// compress_24_cusparselt / sparse24_linear_cusparselt: the cuSPARSELt 2:4 path (fp16/bf16), host glue only.
//
//   * One cuSPARSELt handle per device, created on first use and intentionally never destroyed (at
//     process exit the CUDA context may already be gone).
//   * Compression: cusparseLtSpMMAPruneCheck2 (the weight must be 2:4; one int read back) then
//     cusparseLtSpMMACompressedSize2 / cusparseLtSpMMACompress2 on a structured descriptor; no plan.
//   * GEMM: y [M, N] row-major is cuSPARSELt's D = W @ x^T stored column-major (ld N); W is the
//     structured A [N, K] (row-major), x is B given as row-major [M, K] with opB = transpose. M is
//     padded to a multiple of 8 (a copy of x) when needed. Descriptors + plans are cached by
//     (device, M_pad, N, K, dtype, fused relu?, bias pointer, alg) in a 64-entry LRU: the bias pointer is
//     part of the key because cuSPARSELt reads it from the matmul descriptor the plan was built from.
//   * Algorithm: alg_id >= 0 -> that config id; alg_id < 0 -> the id found by an earlier search for this
//     problem if any, else cuSPARSELt's default (config 0). search=True runs cusparseLtMatmulSearch once
//     per problem (it also computes y) and remembers the id it picked.
//   * Epilogue: bias (CUSPARSELT_MATMUL_BIAS_POINTER) and relu (CUSPARSELT_MATMUL_ACTIVATION_RELU) are
//     fused. gelu (exact erf form; cuSPARSELt's GELU attribute is not documented as the erf form), silu
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
constexpr int64_t kCsltDimMultiple = 16;  // rows and cols of the structured 16-bit matrix
constexpr int64_t kCsltMMultiple = 8;     // rows of the dense operand (x); the glue pads
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

cudaDataType cslt_type(at::ScalarType t) { return t == at::kHalf ? CUDA_R_16F : CUDA_R_16BF; }

void check_16bit(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op, ": expected ", arg,
                   " to have dtype in {Half, BFloat16} (got ", t.scalar_type(), "); the cuSPARSELt path is ",
                   "16-bit only, use layout=\"packed\" for float32");
}

void check_weight_shape(const char* op, int64_t N, int64_t K) {
  TORCH_CHECK(N % kCsltDimMultiple == 0 && K % kCsltDimMultiple == 0 && N > 0 && K > 0, op,
              ": cuSPARSELt needs out_features and in_features to be positive multiples of ", kCsltDimMultiple,
              " (got W of shape [", N, ", ", K, "])");
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
  check_16bit(kCompressOp, "w", w);
  check_device_type(kCompressOp, "w", w, at::kCUDA);
  const int64_t N = w.size(0), K = w.size(1);
  check_weight_shape(kCompressOp, N, K);
  const c10::cuda::OptionalCUDAGuard guard(w.device());
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

// (device, M_pad, N, K, dtype, fused relu, bias pointer, alg id)
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int, bool, uintptr_t, int>;
// (device, M_pad, N, K, dtype, fused relu, has bias) -> alg id found by cusparseLtMatmulSearch
using ProblemKey = std::tuple<int, int64_t, int64_t, int64_t, int, bool, bool>;

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

std::shared_ptr<Plan> make_plan(const cusparseLtHandle_t* h, int64_t m_pad, int64_t N, int64_t K, cudaDataType type,
                                bool relu, const void* bias, int alg_id) {
  auto p = std::make_shared<Plan>();
  const char* op = kLinearOp;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtStructuredDescriptorInit (W)",
                       cusparseLtStructuredDescriptorInit(h, &p->a, N, K, K, 16, type, CUSPARSE_ORDER_ROW,
                                                          CUSPARSELT_SPARSITY_50_PERCENT));
  p->stage = 1;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtDenseDescriptorInit (x)",
                       cusparseLtDenseDescriptorInit(h, &p->b, m_pad, K, K, 16, type, CUSPARSE_ORDER_ROW));
  p->stage = 2;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtDenseDescriptorInit (y)",
                       cusparseLtDenseDescriptorInit(h, &p->c, N, m_pad, N, 16, type, CUSPARSE_ORDER_COL));
  p->stage = 3;
  SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulDescriptorInit",
                       cusparseLtMatmulDescriptorInit(h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                      CUSPARSE_OPERATION_TRANSPOSE, &p->a, &p->b, &p->c, &p->c,
                                                      CUSPARSE_COMPUTE_32F));
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

at::Tensor sparse24_linear_cusparselt_cuda(const at::Tensor& x, const at::Tensor& compressed, int64_t out_features,
                                           int64_t in_features, const std::optional<at::Tensor>& bias,
                                           c10::string_view activation, int64_t alg_id, bool search) {
  const char* op = kLinearOp;
  const Act act = parse_activation(op, activation);
  check_dim(op, "x", x, 2);
  check_16bit(op, "x", x);
  check_device_type(op, "x", x, at::kCUDA);
  check_same_device(op, "compressed", compressed, "x", x);
  TORCH_CHECK_TYPE(compressed.scalar_type() == at::kByte, op, ": expected compressed to be the uint8 buffer from ",
                   "compress_24_cusparselt (got dtype ", compressed.scalar_type(), ")");
  check_dim(op, "compressed", compressed, 1);
  const int64_t N = out_features, K = in_features, M = x.size(0);
  check_weight_shape(op, N, K);
  TORCH_CHECK(x.size(1) == K, op, ": expected x.size(1) == in_features (got ", x.size(1), " vs ", K, ")");
  TORCH_CHECK(alg_id >= -1, op, ": expected alg_id >= -1 (-1: default) (got ", alg_id, ")");
  TORCH_CHECK(!(search && alg_id >= 0), op, ": pass either alg_id >= 0 or search=True, not both (got alg_id=",
              alg_id, ")");
  check_linear_bias(op, bias, x, N);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int device = x.device().index();
  const cusparseLtHandle_t* h = handle_for(op, device);
  const cudaDataType type = cslt_type(x.scalar_type());
  {
    const StructuredDesc desc(op, h, N, K, type);
    const size_t expected = compressed_bytes(op, h, desc, nullptr);
    TORCH_CHECK(compressed.numel() == static_cast<int64_t>(expected), op, ": expected compressed to hold ", expected,
                " bytes (cuSPARSELt's size for a [", N, ", ", K, "] ", x.scalar_type(), " weight), got ",
                compressed.numel(), "; compress it with compress_24_cusparselt from a weight of this shape and dtype");
  }
  if (M == 0) return at::empty({0, N}, x.options());

  const int64_t m_pad = (M + kCsltMMultiple - 1) / kCsltMMultiple * kCsltMMultiple;
  at::Tensor xp = x.contiguous();
  if (reinterpret_cast<uintptr_t>(xp.const_data_ptr()) % 16 != 0) xp = xp.clone();
  if (m_pad != M) xp = at::constant_pad_nd(xp, {0, 0, 0, m_pad - M}, 0);
  at::Tensor wc = compressed.contiguous();
  if (reinterpret_cast<uintptr_t>(wc.const_data_ptr()) % 16 != 0) wc = wc.clone();
  std::optional<at::Tensor> bc;
  if (bias.has_value()) {
    bc = bias->contiguous();
    if (reinterpret_cast<uintptr_t>(bc->const_data_ptr()) % 16 != 0) bc = bc->clone();
  }
  const void* bias_ptr = bc.has_value() ? bc->const_data_ptr() : nullptr;
  const bool relu = act == Act::kRelu;
  const int dtype_key = static_cast<int>(x.scalar_type());
  const ProblemKey problem{device, m_pad, N, K, dtype_key, relu, bias_ptr != nullptr};

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
    const PlanKey key{device, m_pad, N, K, dtype_key, relu, reinterpret_cast<uintptr_t>(bias_ptr), key_alg};
    plan = run_search ? nullptr : cache.find(key);
    if (!plan) {
      plan = make_plan(h, m_pad, N, K, type, relu, bias_ptr, alg);
      if (!run_search) cache.insert(key, plan);
    }
  }

  at::Tensor y_full = at::empty({m_pad, N}, x.options());
  at::Tensor workspace = at::empty({static_cast<int64_t>(std::max<size_t>(plan->workspace, 1))}, x.options().dtype(at::kByte));
  const float alpha = 1.0f, beta = 0.0f;
  cudaStream_t stream = current_stream();
  if (run_search) {
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulSearch",
                         cusparseLtMatmulSearch(h, &plan->plan, &alpha, wc.const_data_ptr(), xp.const_data_ptr(), &beta,
                                                y_full.mutable_data_ptr(), y_full.mutable_data_ptr(),
                                                workspace.mutable_data_ptr(), &stream, 1));
    int found_alg = 0;
    SPARSEOPS_CSLT_CHECK(op, "reading the searched CUSPARSELT_MATMUL_ALG_CONFIG_ID",
                         cusparseLtMatmulAlgGetAttribute(h, &plan->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &found_alg,
                                                         sizeof(found_alg)));
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmulGetWorkspace", cusparseLtMatmulGetWorkspace(h, &plan->plan, &plan->workspace));
    std::lock_guard<std::mutex> lock(cache.mu);
    cache.searched[problem] = found_alg;
    cache.insert(PlanKey{device, m_pad, N, K, dtype_key, relu, reinterpret_cast<uintptr_t>(bias_ptr), found_alg}, plan);
  } else {
    SPARSEOPS_CSLT_CHECK(op, "cusparseLtMatmul",
                         cusparseLtMatmul(h, &plan->plan, &alpha, wc.const_data_ptr(), xp.const_data_ptr(), &beta,
                                          y_full.mutable_data_ptr(), y_full.mutable_data_ptr(),
                                          workspace.mutable_data_ptr(), &stream, 1));
  }
  at::Tensor y = m_pad == M ? y_full : y_full.narrow(0, 0, M);
  if (act != Act::kNone && act != Act::kRelu) {  // bias is already in; the activation as one pass
    BiasActParams ep{y.mutable_data_ptr(), nullptr, M, N, act, to_device_dtype(op, x.scalar_type())};
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
