"""linear24_cuda cases (CUDA only): y = x @ W^T with W 2:4 sparse, sparseops' CUDA backends against
dense cuBLAS (F.linear, the baseline) and torch's own 2:4 path (torch.sparse.to_sparse_semi_structured,
cuSPARSELt or CUTLASS inside torch).

The "sparseops" impl is what cuda_sparse24_linear(backend="auto") runs for the layout a user would
pick: the packed layout (GEMV) for M <= 16, the cutlass layout above. The other sparseops backends are
listed beside it. Small-M cases are reported as memory-bound (bytes = compressed W + x + y), larger ones
as compute-bound with dense-equivalent flops 2*M*N*K (so the fraction of the dense peak compares
directly with cuBLAS)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

import sparseops
from sparseops.bench import Case, register, unavailable
from sparseops.linear24_cuda import GEMV_MAX_M, cuda_sparse24_linear

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


@register("linear24", "cuda_sparse24_linear")
def linear24_cuda_cases(device: str, quick: bool):
    if device != "cuda":
        return
    for dtype_name in (("fp16",) if quick else tuple(_DTYPES)):
        for m, n, k in _problems(quick):
            yield _case(m, n, k, dtype_name)
