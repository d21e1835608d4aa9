"""CUDA backends of the 2:4 linear layer ``y = act(x @ W^T + bias)``, W ``[N, K]`` 2:4 sparse along K.

Python face of ``sparseops::sparse24_linear_cutlass``, ``compress_24_cusparselt`` and
``sparse24_linear_cusparselt`` (fake kernels, autograd) and of the CUDA routing of the 2:4 linear layer
(:func:`cuda_sparse24_linear`, :func:`cuda_backend_choice`). Kernels: ``csrc/sparse24/``
(``linear24_*``: packed-layout GEMV, ``sparse24_cutlass_*``, ``sparse24_cusparselt_cuda.cpp``).

Backends (all fp32 accumulation; activation in ``ACTIVATIONS``, gelu = exact erf form):

- ``"gemv"`` — ``sparse24_linear`` on the ``"packed"`` layout, fp32/fp16/bf16. M <= 16: a warp-per-rows
  2:4 GEMV on CUDA cores (M is not padded). M > 16: W is decompressed to a dense temporary (N x K)
  and multiplied with cuBLAS (reported by :func:`cuda_backend_choice` as ``"packed_dense"``).
- ``"cutlass"`` — CUTLASS 2.x sm80 SparseGemm (sparse tensor cores; runs on sm80+), fp16/bf16, W in the
  ``"cutlass"`` layout; needs N % 32 == 0 and K % 64 == 0. Computes y^T, then one transpose + bias +
  activation pass (extra memory: N x M_pad in x's dtype; M is padded to a multiple of 8).
- ``"cusparselt"`` — cuSPARSELt, W in the opaque ``"cusparselt"`` layout. fp16/bf16 (N % 16 == 0,
  K % 16 == 0; fp32 accumulation) and quantised int8 / float8_e4m3fn (N % 32 == 0, K % 32 == 0; x and
  W of the same 8-bit dtype, int32 resp. fp32 accumulation, output fp16/bf16 chosen by ``out_dtype``,
  default bf16): ``y = act((x @ W^T) * scale + bias)`` with a float32 ``scale`` of shape ``[]``/``[1]``
  (per tensor, e.g. ``x_scale * w_scale``) or ``[N]`` (per output feature), applied as cuSPARSELt's
  alpha vector on the device (no host sync). e4m3 needs sm90+ (NotImplementedError below). Bias
  (in the output dtype) and relu are fused; gelu/silu/relu2 take one extra elementwise pass. Plans
  are cached per (shape, dtypes, bias pointer, algorithm); ``search=True`` on the op runs cuSPARSELt's
  algorithm search once per problem and the found algorithm becomes that problem's default.
  Forward only: its buffer is opaque, so backward raises (train with the "packed"/"cutlass" layouts).
  The int8/e4m3 path was written against cuSPARSELt 0.8.1's header and documentation and has not yet
  run on a GPU (see ``csrc/sparse24/sparse24_cusparselt_cuda.cpp`` for the type combinations used).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from .formats import Sparse24

_ops = torch.ops.sparseops

ACTIVATIONS = ("none", "relu", "gelu", "silu", "relu2")
BACKENDS = ("auto", "gemv", "cutlass", "cusparselt")
# Largest M that the packed op runs as a GEMV (csrc/sparse24/linear24_launch.h: kGemvMaxM).
GEMV_MAX_M = 16
CUTLASS_N_MULTIPLE = 32
CUTLASS_K_MULTIPLE = 64
CUSPARSELT_MULTIPLE = 16
CUSPARSELT_MULTIPLE_8BIT = 32
_HALF_DTYPES = (torch.float16, torch.bfloat16)
# x / W dtypes of the quantised cuSPARSELt path; they need a scale and produce fp16/bf16.
QUANT_DTYPES = (torch.int8, torch.float8_e4m3fn)
_CSLT_DTYPES = _HALF_DTYPES + QUANT_DTYPES
_LAYOUT_OF_BACKEND = {"gemv": "packed", "cutlass": "cutlass", "cusparselt": "cusparselt"}


def apply_activation(y: Tensor, activation: str) -> Tensor:
    """``act(y)`` with plain torch ops (the same definitions the kernels use)."""
    if activation == "none":
        return y
    if activation == "relu":
        return F.relu(y)
    if activation == "gelu":
        return F.gelu(y)
    if activation == "silu":
        return F.silu(y)
    if activation == "relu2":
        return F.relu(y).square()
    raise ValueError(f"apply_activation: expected activation in {ACTIVATIONS} (got {activation!r})")


# ---------------------------------------------------------------------------------------------
# routing


def _capability(device: Union[torch.device, str]) -> tuple[int, int]:
    return torch.cuda.get_device_capability(torch.device(device))


def cuda_backend_choice(m: int, w24: Sparse24, device: Union[torch.device, str]) -> str:
    """The implementation :func:`cuda_sparse24_linear` with ``backend="auto"`` uses for ``m`` rows of x.

    Returns one of ``"gemv"`` (packed layout, m <= 16), ``"packed_dense"`` (packed layout, m > 16:
    decompress + cuBLAS), ``"cutlass"``, ``"cutlass_dense"`` (cutlass layout on a pre-sm80 GPU or with
    K % 64 != 0: decompress + cuBLAS), ``"cusparselt"``. A debugging aid; queries the device's
    compute capability for the cutlass layout only.
    """
    if not isinstance(w24, Sparse24):
        raise TypeError(f"cuda_backend_choice: expected w24 to be a Sparse24 (got {type(w24).__name__})")
    if torch.device(device).type != "cuda":
        raise ValueError(f"cuda_backend_choice: expected a CUDA device (got {device!r}); on the CPU "
                         "sparse24_linear always runs sparseops' own packed kernel")
    if w24.layout == "packed":
        return "gemv" if m <= GEMV_MAX_M else "packed_dense"
    if w24.layout == "cutlass":
        n, k = w24.shape
        ok = _capability(device) >= (8, 0) and n % CUTLASS_N_MULTIPLE == 0 and k % CUTLASS_K_MULTIPLE == 0
        return "cutlass" if ok else "cutlass_dense"
    if w24.layout == "cusparselt":
        return "cusparselt"
    raise ValueError(f"cuda_backend_choice: unknown w24.layout {w24.layout!r}")


def cuda_sparse24_linear(
    x2d: Tensor,
    w24: Sparse24,
    bias: Optional[Tensor],
    activation: str,
    backend: str = "auto",
    w24_t: Optional[Sparse24] = None,
    *,
    scale: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``act(x2d @ W^T + bias)`` on CUDA, W given as a :class:`Sparse24`; quantised x/W:
    ``act((x2d @ W^T) * scale + bias)``.

    Args:
        x2d: ``[M, K]`` on a CUDA device, W's dtype (fp32 only with the packed layout; int8 and
            float8_e4m3fn only with the cusparselt layout).
        w24: W ``[N, K]`` in layout ``"packed"``, ``"cutlass"`` or ``"cusparselt"``, on x's device.
        bias: ``[N]`` in x's dtype, or None.
        activation: one of ``ACTIVATIONS``.
        backend: ``"auto"`` (see :func:`cuda_backend_choice`) or a backend in ``BACKENDS`` that matches
            ``w24.layout`` (``"gemv"``: packed, ``"cutlass"``: cutlass, ``"cusparselt"``: cusparselt);
            a mismatch is a ValueError.
        w24_t: optional packed ``W^T`` for the backward of the packed op (see
            ``sparseops.sparse24_linear``; the caller checks it); ignored by the other backends.
        scale: required for int8/float8_e4m3fn x, None otherwise: float32 on x's device, shape ``[]``/``[1]``
            (per tensor) or ``[N]`` (per output feature); multiplies the int32/fp32 accumulator before
            the bias. Extra memory: ``N`` floats (the per-tensor scale expanded to cuSPARSELt's alpha vector).
        out_dtype: y's dtype for int8/float8_e4m3fn x: torch.float16 or torch.bfloat16 (None: bfloat16).
            For fp16/bf16 x it must be None or x's dtype. ``bias`` must have this dtype.

    Returns ``[M, N]`` contiguous in x's dtype (``out_dtype`` for quantised x). Extra memory depends on the
    backend (module docstring).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"cuda_sparse24_linear: expected activation in {ACTIVATIONS} (got {activation!r})")
    if backend not in BACKENDS:
        raise ValueError(f"cuda_sparse24_linear: expected backend in {BACKENDS} (got {backend!r})")
    if not isinstance(w24, Sparse24):
        raise TypeError(f"cuda_sparse24_linear: expected w24 to be a Sparse24 (got {type(w24).__name__})")
    _check_quant_args("cuda_sparse24_linear", x2d, w24, scale, out_dtype)
    if x2d.device.type != "cuda":
        raise ValueError(f"cuda_sparse24_linear: expected x on a CUDA device (got {x2d.device})")
    if x2d.dim() != 2:
        raise ValueError(f"cuda_sparse24_linear: expected a 2-D x (got shape {tuple(x2d.shape)})")
    if backend == "auto":
        choice = cuda_backend_choice(x2d.shape[0], w24, x2d.device)
    else:
        needed = _LAYOUT_OF_BACKEND[backend]
        if w24.layout != needed:
            raise ValueError(
                f"cuda_sparse24_linear: backend={backend!r} needs w24.layout == {needed!r} (got {w24.layout!r}); "
                f"compress W with compress_24(w, layout={needed!r}) or use backend='auto'"
            )
        choice = backend
    if choice in ("gemv", "packed_dense"):
        if w24_t is not None:
            return _ops.sparse24_linear(x2d, w24.values, w24.meta, bias, activation, w24_t.values, w24_t.meta)
        return _ops.sparse24_linear(x2d, w24.values, w24.meta, bias, activation)
    if choice == "cutlass":
        return _ops.sparse24_linear_cutlass(x2d, w24.values, w24.meta, bias, activation)
    if choice == "cutlass_dense":
        w = _ops.decompress_24(w24.values, w24.meta, "cutlass")
        y = apply_activation(F.linear(x2d, w, bias), activation)
        return structural_rows(x2d, y, w24, w, bias, activation)
    n, k = w24.shape
    if scale is None and out_dtype is None:
        return _ops.sparse24_linear_cusparselt(x2d, w24.values, n, k, bias, activation)
    return _ops.sparse24_linear_cusparselt(
        x2d, w24.values, n, k, bias, activation, -1, False, scale=scale, out_dtype=out_dtype
    )


def structural_rows(x2d: Tensor, y: Tensor, w24: Sparse24, w: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
    """``y`` with its rows where ``x2d`` holds an inf/NaN recomputed with the pruned weights absent, as the
    sparse kernels compute them (a dense product gives ``0 * inf = NaN`` at pruned positions).

    ``w``: W decompressed from ``w24``. For the dense fallback only: one pass over ``x`` to find such rows
    (a device sync), then per such row an ``N x K`` fp32 temporary.
    """
    bad_rows = (~torch.isfinite(x2d)).any(dim=1).nonzero().flatten().tolist()
    if not bad_rows:
        return y
    kept = _ops.decompress_24(torch.ones_like(w24.values), w24.meta, w24.layout) != 0
    wf = w.float()
    y = y.clone()
    for r in bad_rows:
        z = torch.where(kept, wf * x2d[r].float(), 0.0).sum(dim=1)
        if bias is not None:
            z = z + bias.float()
        y[r] = apply_activation(z.to(y.dtype), activation)
    return y


def _check_quant_args(
    op: str, x: Tensor, w24: Sparse24, scale: Optional[Tensor], out_dtype: Optional[torch.dtype]
) -> None:
    """The Python-side checks of ``scale``/``out_dtype`` (the op repeats the dtype/shape ones)."""
    if scale is not None and not isinstance(scale, Tensor):
        raise TypeError(f"{op}: expected scale to be a Tensor or None (got {type(scale).__name__})")
    if out_dtype is not None and not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"{op}: expected out_dtype to be a torch.dtype or None (got {type(out_dtype).__name__})")
    quant = x.dtype in QUANT_DTYPES
    if (quant or scale is not None or out_dtype is not None) and w24.layout != "cusparselt":
        what = f"x of dtype {x.dtype}" if quant else "scale/out_dtype"
        raise ValueError(
            f"{op}: {what} needs w24.layout == 'cusparselt' (got {w24.layout!r}); quantise and compress W with "
            "compress_24(w_q, layout='cusparselt')"
        )
    if quant and scale is None:
        raise ValueError(
            f"{op}: x of dtype {x.dtype} needs scale (float32, shape [] / [1] per tensor or [N] per output feature): "
            "y = act((x @ W^T) * scale + bias); got scale=None"
        )
    if not quant and scale is not None:
        raise ValueError(f"{op}: scale is for int8/float8_e4m3fn x only (got a scale with x of dtype {x.dtype})")
    if quant and out_dtype is not None and out_dtype not in _HALF_DTYPES:
        raise ValueError(f"{op}: expected out_dtype in (torch.float16, torch.bfloat16, None) for x of dtype {x.dtype} (got {out_dtype})")
    if not quant and out_dtype is not None and out_dtype != x.dtype:
        raise ValueError(f"{op}: expected out_dtype None or x's dtype {x.dtype} for x of dtype {x.dtype} (got {out_dtype})")


# ---------------------------------------------------------------------------------------------
# fake kernels


def _check_activation(op: str, activation: str) -> None:
    torch._check(activation in ACTIVATIONS, lambda: f"{op}: expected activation in {ACTIVATIONS} (got {activation!r})")


def _check_bias(op: str, bias: Optional[Tensor], n, dtype: torch.dtype) -> None:
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == n, lambda: f"{op}: expected bias of shape [{n}]")
        torch._check(bias.dtype == dtype, lambda: f"{op}: expected bias.dtype == x.dtype (got {bias.dtype} vs {dtype})")


@torch.library.register_fake("sparseops::sparse24_linear_cutlass")
def _sparse24_linear_cutlass_fake(
    x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None, activation: str = "none"
) -> Tensor:
    op = "sparse24_linear_cutlass"
    _check_activation(op, activation)
    torch._check(x.dim() == 2 and values.dim() == 2 and meta.dim() == 2, lambda: f"{op}: expected 2-D x, values, meta")
    torch._check(x.dtype in _HALF_DTYPES, lambda: f"{op}: expected x to have dtype float16/bfloat16 (got {x.dtype})")
    torch._check(values.dtype == x.dtype, lambda: f"{op}: expected values.dtype == x.dtype")
    torch._check(meta.dtype == torch.int16, lambda: f"{op}: expected meta to have dtype int16 (got {meta.dtype})")
    n, k = values.shape[0], x.shape[1]
    torch._check(2 * values.shape[1] == k, lambda: f"{op}: x has {k} features (x.size(-1)) but the weight expects {2 * values.shape[1]}")
    torch._check(n % CUTLASS_N_MULTIPLE == 0, lambda: f"{op}: out_features must be divisible by {CUTLASS_N_MULTIPLE}")
    torch._check(k % CUTLASS_K_MULTIPLE == 0, lambda: f"{op}: in_features must be divisible by {CUTLASS_K_MULTIPLE}")
    torch._check(meta.shape[0] == n and meta.shape[1] == k // 16, lambda: f"{op}: expected meta of shape [{n}, {k // 16}]")
    _check_bias(op, bias, n, x.dtype)
    return x.new_empty((x.shape[0], n))


@torch.library.register_fake("sparseops::compress_24_cusparselt")
def _compress_24_cusparselt_fake(w: Tensor) -> Tensor:
    op = "compress_24_cusparselt"
    torch._check(w.dim() == 2, lambda: f"{op}: expected w to be 2-D (got {w.dim()}-D)")
    torch._check(w.dtype in _CSLT_DTYPES, lambda: f"{op}: expected w float16/bfloat16/int8/float8_e4m3fn (got {w.dtype})")
    mult = CUSPARSELT_MULTIPLE_8BIT if w.dtype in QUANT_DTYPES else CUSPARSELT_MULTIPLE
    torch._check(
        w.shape[0] % mult == 0 and w.shape[1] % mult == 0,
        lambda: f"{op}: expected both dims of w divisible by {mult} for {w.dtype}",
    )
    # The buffer size is cuSPARSELt's (library- and device-defined): a data-dependent size here.
    size = torch.library.get_ctx().new_dynamic_size()
    return w.new_empty((size,), dtype=torch.uint8)


def _cusparselt_out_dtype(op: str, x_dtype: torch.dtype, out_dtype: Optional[torch.dtype]) -> torch.dtype:
    if x_dtype in QUANT_DTYPES:
        out = torch.bfloat16 if out_dtype is None else out_dtype
        torch._check(out in _HALF_DTYPES, lambda: f"{op}: expected out_dtype in {{Half, BFloat16}} for x of dtype {x_dtype} (got {out})")
        return out
    torch._check(
        out_dtype is None or out_dtype == x_dtype,
        lambda: f"{op}: expected out_dtype None or x's dtype {x_dtype} for 16-bit x (got {out_dtype})",
    )
    return x_dtype


@torch.library.register_fake("sparseops::sparse24_linear_cusparselt")
def _sparse24_linear_cusparselt_fake(
    x: Tensor,
    compressed: Tensor,
    out_features: int,
    in_features: int,
    bias: Optional[Tensor] = None,
    activation: str = "none",
    alg_id: int = -1,
    search: bool = False,
    scale: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    op = "sparse24_linear_cusparselt"
    _check_activation(op, activation)
    torch._check(x.dim() == 2, lambda: f"{op}: expected x to be 2-D (got {x.dim()}-D)")
    torch._check(x.dtype in _CSLT_DTYPES, lambda: f"{op}: expected x float16/bfloat16/int8/float8_e4m3fn (got {x.dtype})")
    torch._check(compressed.dtype == torch.uint8 and compressed.dim() == 1, lambda: f"{op}: expected a 1-D uint8 compressed")
    torch._check(x.shape[1] == in_features,
                 lambda: f"{op}: x has {x.shape[1]} features (x.size(-1)) but the weight expects {in_features}")
    quant = x.dtype in QUANT_DTYPES
    mult = CUSPARSELT_MULTIPLE_8BIT if quant else CUSPARSELT_MULTIPLE
    torch._check(
        out_features % mult == 0 and in_features % mult == 0 and out_features > 0,
        lambda: f"{op}: out_features and in_features must be positive multiples of {mult} for {x.dtype}",
    )
    torch._check(alg_id >= -1, lambda: f"{op}: expected alg_id >= -1")
    torch._check(not (search and alg_id >= 0), lambda: f"{op}: pass either alg_id >= 0 or search=True")
    out = _cusparselt_out_dtype(op, x.dtype, out_dtype)
    if quant:
        torch._check(scale is not None, lambda: f"{op}: x of dtype {x.dtype} needs a scale; got scale=None")
        torch._check(scale.dtype == torch.float32, lambda: f"{op}: expected scale to have dtype Float (got {scale.dtype})")
        torch._check(
            (scale.dim() <= 1 and scale.numel() == 1) or (scale.dim() == 1 and scale.shape[0] == out_features),
            lambda: f"{op}: expected scale of shape [], [1] or [{out_features}] (got {list(scale.shape)})",
        )
    else:
        torch._check(scale is None, lambda: f"{op}: scale is for int8/float8_e4m3fn x only (got x of dtype {x.dtype})")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_features, lambda: f"{op}: expected bias of shape [{out_features}]")
        torch._check(bias.dtype == out, lambda: f"{op}: expected bias to have the output dtype {out} (got {bias.dtype})")
    return x.new_empty((x.shape[0], out_features), dtype=out)


# ---------------------------------------------------------------------------------------------
# autograd


def _activation_grad(grad: Tensor, activation: str, z: Optional[Tensor], y: Tensor) -> Tensor:
    """d loss / d z in fp32, for y = act(z)."""
    g = grad.float()
    if activation == "none":
        return g
    if activation == "relu":
        return g * (y > 0)
    zf = z.float()
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(zf * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * zf * zf) * (1.0 / math.sqrt(2.0 * math.pi))
        return g * (cdf + zf * pdf)
    if activation == "silu":
        s = torch.sigmoid(zf)
        return g * (s * (1.0 + zf * (1.0 - s)))
    if activation == "relu2":
        return g * (2.0 * F.relu(zf))
    raise ValueError(f"_activation_grad: unknown activation {activation!r}")


def _kept_slots_cutlass(values: Tensor, meta: Tensor) -> Tensor:
    """[N, K] int8: 1 at the first kept column of every group, 2 at the second, 0 elsewhere."""
    n, half = values.shape
    ids = torch.tensor([1.0, 2.0], dtype=values.dtype, device=values.device).repeat(n, half // 2)
    return _ops.decompress_24(ids, meta, "cutlass").to(torch.int8)


def _cutlass_setup_context(ctx, inputs, output) -> None:
    x, values, meta, bias, activation = inputs
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, values, meta, bias, output)


def _cutlass_backward(ctx, grad: Tensor):
    x, values, meta, bias, y = ctx.saved_tensors
    act = ctx.activation
    z = None
    if act not in ("none", "relu"):  # recompute the pre-activation: one more sparse GEMM
        z = _ops.sparse24_linear_cutlass(x, values, meta, bias, "none")
    g = _activation_grad(grad, act, z, y)  # [M, N] fp32
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = _ops.decompress_24(values, meta, "cutlass")
        grad_x = (g.to(w.dtype) @ w).to(x.dtype)
    if ctx.needs_input_grad[1]:
        n, half = values.shape
        dw = g.t().to(x.dtype) @ x  # [N, K]: only the kept positions are kept below
        slots = _kept_slots_cutlass(values, meta).reshape(n, half // 2, 4)
        dw = dw.reshape(n, half // 2, 4).float()
        first = (dw * (slots == 1)).sum(-1)
        second = (dw * (slots == 2)).sum(-1)
        grad_values = torch.stack((first, second), dim=-1).reshape(n, half).to(values.dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = g.sum(0).to(bias.dtype)
    return grad_x, grad_values, None, grad_bias, None


torch.library.register_autograd(
    "sparseops::sparse24_linear_cutlass", _cutlass_backward, setup_context=_cutlass_setup_context
)


def _cusparselt_setup_context(ctx, inputs, output) -> None:
    pass


def _cusparselt_backward(ctx, grad: Tensor):
    raise RuntimeError(
        "sparse24_linear_cusparselt: backward is not supported: cuSPARSELt's compressed weight is opaque. "
        "Train with the 'packed' or 'cutlass' layout and compress to 'cusparselt' for inference."
    )


torch.library.register_autograd(
    "sparseops::sparse24_linear_cusparselt", _cusparselt_backward, setup_context=_cusparselt_setup_context
)
