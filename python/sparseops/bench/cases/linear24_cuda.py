"""linear24_cuda cases (CUDA only): y = x @ W^T with W 2:4 sparse, sparseops' CUDA backends against
dense cuBLAS (F.linear, the baseline) and torch's own 2:4 path (torch.sparse.to_sparse_semi_structured,
cuSPARSELt or CUTLASS inside torch).

The "sparseops" impl is what cuda_sparse24_linear(backend="auto") runs for the layout a user would
pick: the packed layout (GEMV) for M <= 16, the cutlass layout above. The other sparseops backends are
listed beside it. Small-M cases are reported as memory-bound (bytes = compressed W + x + y), larger ones
as compute-bound with dense-equivalent flops 2*M*N*K (so the fraction of the dense peak compares
directly with cuBLAS).

The quantised registration (``cuda_sparse24_linear_quant``) times the cuSPARSELt int8 and float8_e4m3fn
paths, y = (x_q @ W_q^T) * scale in bf16 (per-tensor scale), against torch's dense 8-bit GEMMs doing the
same job: ``torch._int_mm`` (int32 out) followed by the scale and the cast to bf16 (int8), and
``torch._scaled_mm`` with per-tensor scales and bf16 out (e4m3, sm89+; our e4m3 path needs sm90). The raw
``torch._int_mm`` (no epilogue), torch's own cuSPARSELt (``torch._cslt_sparse_mm``) and dense bf16
``F.linear`` are listed beside them. The flop rates are against the harness's dense peak (fp16), so an
8-bit GEMM can exceed 100%."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

import sparseops
from sparseops.bench import Case, register, unavailable
from sparseops.sparse24.linear_cuda import GEMV_MAX_M, cuda_sparse24_linear

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _problems(quick: bool) -> list[tuple[int, int, int]]:
    """(M, N, K) triples."""
    if quick:
        return [(m, 4096, 4096) for m in (1, 64)]
    out = [(m, n, k) for (n, k) in ((4096, 4096), (11008, 4096), (4096, 11008)) for m in (1, 8, 64, 2048)]
    return out + [(8192, 8192, 8192)]


def _semi_structured(w: Tensor):
    """torch's 2:4 tensor for w, or the reason it cannot be built here."""
    try:
        return torch.sparse.to_sparse_semi_structured(w), None
    except Exception as exc:  # older GPU, missing backend, unsupported shape
        return None, f"torch.sparse.to_sparse_semi_structured failed: {exc}"


def _case(m: int, n: int, k: int, dtype_name: str) -> Case:
    dtype = _DTYPES[dtype_name]
    w = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(dtype)
    w = w * sparseops.nm_mask(w, 2, 4)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    packed = sparseops.compress_24(w)
    impls = {}
    if m <= GEMV_MAX_M:
        impls["sparseops"] = lambda: cuda_sparse24_linear(x, packed, None, "none", "gemv")
    cutlass = None
    if torch.cuda.get_device_capability() >= (8, 0):
        cutlass = sparseops.compress_24(w, layout="cutlass")
        impls["sparseops" if "sparseops" not in impls else "sparseops_cutlass"] = (
            lambda: cuda_sparse24_linear(x, cutlass, None, "none", "cutlass")
        )
    else:
        impls.setdefault("sparseops", lambda: cuda_sparse24_linear(x, packed, None, "none", "gemv"))
        impls["sparseops_cutlass"] = unavailable("the CUTLASS sparse GEMM needs sm80+")
    try:
        cslt = sparseops.compress_24(w, layout="cusparselt")
        impls["sparseops_cusparselt"] = lambda: cuda_sparse24_linear(x, cslt, None, "none", "cusparselt")
    except RuntimeError as exc:
        impls["sparseops_cusparselt"] = unavailable(f"compress_24(layout='cusparselt') failed: {exc}")
    if m > GEMV_MAX_M:
        impls["sparseops_packed_dense"] = lambda: cuda_sparse24_linear(x, packed, None, "none", "gemv")
    impls["torch_dense"] = lambda: F.linear(x, w)
    w_ss, why = _semi_structured(w)
    impls["torch_semi_structured"] = (lambda: F.linear(x, w_ss)) if w_ss is not None else unavailable(why)

    params = {"M": m, "N": n, "K": k, "dtype": dtype_name, "activation": "none", "bias": False}
    size = {}
    if m <= 64:
        compressed = packed.values.nbytes + packed.meta.nbytes
        size["bytes"] = compressed + x.nbytes + m * n * x.element_size()
    else:
        size["flops"] = 2 * m * n * k
    return Case(label=f"{dtype_name} M={m} N={n} K={k}", params=params, impls=impls, baseline="torch_dense", **size)


@register("sparse24", "cuda_sparse24_linear", devices=("cuda",))
def linear24_cuda_cases(device: str, quick: bool):
    for dtype_name in (("fp16",) if quick else tuple(_DTYPES)):
        for m, n, k in _problems(quick):
            yield _case(m, n, k, dtype_name)


# ---------------------------------------------------------------------------------------------
# quantised: int8 and float8_e4m3fn through cuSPARSELt


def _checked(fn, what: str):
    """fn if one call succeeds here, else an unavailable placeholder with the reason (shape/arch limits)."""
    try:
        fn()
    except Exception as exc:  # torch's 8-bit GEMMs have arch and shape limits (e.g. _int_mm: M > 16)
        return unavailable(f"{what} failed here: {exc}")
    return fn


def _quant_case(m: int, n: int, k: int, qname: str) -> Case:
    qdtype = torch.int8 if qname == "int8" else torch.float8_e4m3fn
    qmax = 127.0 if qname == "int8" else 448.0
    w = torch.randn(n, k, device="cuda") / math.sqrt(k)
    w = w * sparseops.nm_mask(w, 2, 4)
    x = torch.randn(m, k, device="cuda")
    w_scale = (w.abs().amax() / qmax).float()
    x_scale = (x.abs().amax() / qmax).float()
    if qdtype == torch.int8:
        w_q = (w / w_scale).round().clamp(-qmax, qmax).to(qdtype)
        x_q = (x / x_scale).round().clamp(-qmax, qmax).to(qdtype)
    else:
        w_q, x_q = (w / w_scale).to(qdtype), (x / x_scale).to(qdtype)
    scale = x_scale * w_scale  # [] fp32, on the device
    out = torch.bfloat16
    impls: dict = {}
    baseline = "torch_dense_bf16"
    try:
        cslt = sparseops.compress_24(w_q, layout="cusparselt")
        impls["sparseops"] = _checked(
            lambda: cuda_sparse24_linear(x_q, cslt, None, "none", "cusparselt", scale=scale, out_dtype=out),
            f"sparseops cuSPARSELt {qname}",
        )
    except (RuntimeError, NotImplementedError) as exc:
        impls["sparseops"] = unavailable(f"compress_24({qname} w, layout='cusparselt') failed: {exc}")
    w_t = w_q.t()  # column-major [K, N]: the layout both torch GEMMs want for mat2
    if qdtype == torch.int8:
        impls["torch_int_mm_scaled"] = _checked(
            lambda: (torch._int_mm(x_q, w_t) * scale).to(out), "torch._int_mm + scale + cast"
        )
        impls["torch_int_mm_raw"] = _checked(lambda: torch._int_mm(x_q, w_t), "torch._int_mm")
        peer = "torch_int_mm_scaled"
    else:
        impls["torch_scaled_mm"] = _checked(
            lambda: torch._scaled_mm(x_q, w_t, scale_a=x_scale, scale_b=w_scale, out_dtype=out), "torch._scaled_mm"
        )
        peer = "torch_scaled_mm"
    try:
        w_cslt = torch._cslt_compress(w_q)
        alpha = scale.reshape(1).expand(n).contiguous()
        impls["torch_cslt_sparse_mm"] = _checked(
            lambda: torch._cslt_sparse_mm(w_cslt, x_q.t(), alpha=alpha, out_dtype=out, transpose_result=True),
            "torch._cslt_sparse_mm",
        )
    except Exception as exc:
        impls["torch_cslt_sparse_mm"] = unavailable(f"torch._cslt_compress failed: {exc}")
    w_bf16, x_bf16 = (w_q.float() * w_scale).to(out), (x_q.float() * x_scale).to(out)
    impls["torch_dense_bf16"] = lambda: F.linear(x_bf16, w_bf16)
    # The dense 8-bit peer is the baseline where it runs (shape/arch permitting), else dense bf16.
    try:
        impls[peer]()
        baseline = peer
    except Exception:
        pass

    params = {"M": m, "N": n, "K": k, "dtype": qname, "out_dtype": "bf16", "scale": "per-tensor", "activation": "none",
              "bias": False, "baseline": baseline}
    size = {}
    if m <= 64:
        compressed = n * k // 2 + n * k // 8  # values + 2-bit metadata (cuSPARSELt's buffer is about this)
        size["bytes"] = compressed + x_q.nbytes + m * n * 2
    else:
        size["flops"] = 2 * m * n * k
    return Case(label=f"{qname}->bf16 M={m} N={n} K={k}", params=params, impls=impls, baseline=baseline, **size)


@register("sparse24", "cuda_sparse24_linear_quant", devices=("cuda",))
def linear24_cuda_quant_cases(device: str, quick: bool):
    qnames = ["int8"]
    if torch.cuda.get_device_capability() >= (9, 0):
        qnames.append("fp8")  # float8_e4m3fn: our cuSPARSELt path needs sm90+
    for qname in qnames:
        for m, n, k in _problems(quick):
            yield _quant_case(m, n, k, qname)
