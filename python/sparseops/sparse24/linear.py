"""2:4 sparse linear: ``y = act(x @ W^T + bias)`` with ``W`` in a 2:4 compressed format.

Python face of the ``sparseops::sparse24_linear`` op: the typed wrapper, its fake (meta) kernel and
its autograd, side by side. CPU kernels: ``csrc/sparse24/linear24_cpu.cpp`` and ``linear24_avx512.cpp``;
the CUDA backends are reached through :mod:`sparseops.sparse24.linear_cuda`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from .formats import Sparse24, _kept_indices_packed, _packed_meta_cols, compress_24
from .linear_cuda import cuda_sparse24_linear
from .training import transposable_mask_24

_ops = torch.ops.sparseops

ACTIVATIONS = ("none", "relu", "gelu", "silu", "relu2")
BACKENDS = ("auto", "cpu", "gemv", "cusparselt", "cutlass")
CPU_BACKENDS = ("auto", "cpu")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OP = "sparse24_linear"


def sparse24_linear(
    x: Tensor,
    w24: Sparse24,
    bias: Optional[Tensor] = None,
    *,
    activation: Optional[str] = None,
    backend: str = "auto",
    w24_t: Optional[Sparse24] = None,
    scale: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``act(x @ W^T + bias)`` with ``W [N, K]`` given 2:4-compressed (:func:`sparseops.compress_24`).

    Args:
        x: ``[..., K]``, float32/float16/bfloat16, any strides; CPU or CUDA.
        w24: a :class:`Sparse24` of dense shape ``[N, K]`` with ``K % 4 == 0``, in ``x``'s dtype and on
            ``x``'s device. On CPU its layout must be ``"packed"``.
        bias: optional ``[N]``, ``x``'s dtype and device.
        activation: ``None``/``"none"``, ``"relu"``, ``"gelu"`` (erf form, torch's default), ``"silu"``
            or ``"relu2"`` (relu squared), applied after the bias.
        backend: ``"auto"`` or ``"cpu"`` on CPU; on CUDA also ``"gemv"``, ``"cusparselt"``, ``"cutlass"``
            (see ``sparseops.sparse24.linear_cuda``).
        w24_t: optional ``W^T [K, N]`` compressed in the ``"packed"`` layout, for a ``W`` whose mask is
            transposable (2:4 along both dims; see :func:`compress_24_transposable`); needs ``N % 4 == 0``
            and ``w24.layout == "packed"``. Not read by the forward: the backward then computes
            ``grad_x = grad_z @ W`` as the 2:4 product ``sparse24_linear(grad_z, w24_t)`` instead of
            decompressing ``W``. It must hold the same weights as ``w24`` (only shapes are checked) and
            gets no gradient: use it where ``W`` is fixed (training the bias or the layers before this
            one) or recompress both after every update of ``W``.
        scale, out_dtype: CUDA ``"cusparselt"`` layout only, for int8 / float8_e4m3fn ``x`` and ``W``:
            ``y = act((x @ W^T) * scale + bias)`` with a float32 ``scale`` (``[]``/``[1]`` or ``[N]``) and
            ``y`` in ``out_dtype`` (float16/bfloat16, default bfloat16); see ``sparseops.sparse24.linear_cuda``.
            Not supported on CPU (ValueError).

    Returns:
        ``[..., N]`` in ``x``'s dtype. Accumulation is in fp32.

    CPU paths (chosen by ``M``, the product of ``x``'s leading dims):

    - small ``M`` (AVX-512 CPUs: every ``M`` for fp16, and for fp32 on AMD (``M <= 96`` on Intel),
      ``M <= 96`` for bf16 (``M <= 192`` with AMX); AVX2 CPUs: ``M <= 64`` for fp32, every ``M`` for
      fp16/bf16; other CPUs: ``M <= 4``; ``SPARSEOPS_LINEAR24_GEMV_MAX_M`` overrides): a GEMV-style kernel,
      parallel over output features, that streams the packed weights once for all ``M`` rows (AVX-512,
      bf16 with ``vdpbf16ps``, or from 4 rows on AMX tiles where the CPU has AMX-BF16,
      ``SPARSEOPS_CPU_AMX=0`` turns that off; else AVX2; else portable C++; ``SPARSEOPS_CPU_ISA=avx2`` or
      ``=baseline`` caps the choice). It reads ~9/16 (fp32) or ~5/8 (fp16/bf16) of the dense weight's
      bytes. Bias and activation run in fp32 before the single rounding to ``x``'s dtype. Extra memory: a
      padded copy of ``x`` (fp32, or bf16 for bf16 on AVX-512 and AMX: rows to a multiple of 16 and
      columns of 32 there) and, for fp16/bf16, an fp32 ``[M, N]`` buffer.
    - larger ``M``: tiles of up to 256 weight rows are decompressed into one thread-local dense
      ``[256, K]`` buffer per thread and multiplied by torch's dense GEMM, bias fused in the GEMM and the
      activation applied in place (for fp16/bf16 on the GEMM's rounded output, as ``F.linear`` + act).
      Extra memory: ``256*K`` elements per thread, plus a contiguous copy of ``x`` if it is strided.

    Inf and NaN: a pruned weight is structurally absent, so ``x`` at a pruned position never enters the
    product: an inf there leaves ``y`` finite, where ``F.linear`` on the decompressed W gives
    ``0 * inf = NaN``; at a kept position inf/NaN propagate as usual. Every CPU path follows this (the
    AVX2 kernel and the tiles multiply by explicit zeros, so rows of ``x`` holding inf/NaN are recomputed
    by a gather kernel: one extra pass over ``x``); on CUDA the GEMV, the "packed" M > 16 path (with the
    same row fix-up), CUTLASS and cuSPARSELt (sparse tensor cores multiply kept values only) do too, and
    the ``"cutlass_dense"`` fallback (pre-sm80 GPUs or K % 64 != 0) recomputes such rows after its dense
    product (a device sync per call).

    Metadata: on the CPU every call checks the metadata rows it multiplies (the AVX-512 / AVX2 kernels
    as they start on each row, the portable one right after, the tiles before decompressing) and raises
    ``RuntimeError`` naming the row and group of an invalid code, whatever the path (measured cost at
    M=1, one thread: +7-21% on an L3-resident or single-core-streamed weight; within noise with 2
    threads streaming from DRAM). CUDA kernels do not re-check per call (it would need a device
    sync): there, metadata is trusted as :func:`compress_24` made it (``decompress_24`` still checks).

    Autograd: gradients for ``x``, ``w24.values`` and ``bias``. Without ``w24_t`` the backward
    decompresses ``W`` (``N*K`` elements) for ``grad_x = grad_z @ W``; with it, ``grad_x`` is
    ``sparse24_linear(grad_z, w24_t)`` (the paths above with ``M`` rows, ``N`` as the reduction dim and
    no dense ``W``). For ``grad_values`` it forms the dense ``grad_z^T @ x`` (``N*K``) and gathers
    the kept positions. For ``"gelu"``, ``"silu"`` and ``"relu2"`` the
    pre-activation ``z`` is recomputed in the backward (one extra forward GEMM) instead of being saved
    (``M*N`` elements); ``"relu"`` saves the output.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{_OP}: expected x to be a Tensor (got {type(x).__name__})")
    if not isinstance(w24, Sparse24):
        raise TypeError(f"{_OP}: expected w24 to be a Sparse24 from compress_24 (got {type(w24).__name__})")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"{_OP}: expected bias to be a Tensor or None (got {type(bias).__name__})")
    act = "none" if activation is None else activation
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"{_OP}: expected activation in {ACTIVATIONS} or None (got {activation!r})")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{_OP}: expected backend in {BACKENDS} (got {backend!r})")
    if x.dim() < 1:
        raise ValueError(f"{_OP}: expected x of shape [..., K] with at least 1 dimension (got a 0-D tensor)")
    if w24_t is not None:
        _check_w24_t(w24, w24_t)
    if x.dim() == 2:  # the common case, without the two reshapes (a few us per call matter for small M)
        lead, x2d = None, x
    else:
        lead = x.shape[:-1]
        rows = 1
        for d in lead:
            rows *= d
        x2d = x.reshape(rows, x.shape[-1])
    if x.is_cuda:
        y = cuda_sparse24_linear(x2d, w24, bias, act, backend, w24_t=w24_t, scale=scale, out_dtype=out_dtype)
    else:
        if scale is not None or out_dtype is not None:
            raise ValueError(
                f"{_OP}: scale/out_dtype (quantised int8/float8 x) need x on CUDA and the 'cusparselt' layout "
                f"(got x on {x.device.type})"
            )
        if backend not in CPU_BACKENDS:
            raise ValueError(
                f"{_OP}: expected backend in {CPU_BACKENDS} for x on {x.device.type} (got {backend!r}; "
                "the other backends need CUDA)"
            )
        if w24.layout != "packed":
            raise ValueError(
                f"{_OP}: expected w24.layout == 'packed' for x on {x.device.type} (got {w24.layout!r}); "
                "compress the weight with compress_24(w, layout='packed')"
            )
        if w24_t is None:
            y = _ops.sparse24_linear.default(x2d, w24.values, w24.meta, bias, act)
        else:
            y = _ops.sparse24_linear.default(x2d, w24.values, w24.meta, bias, act, w24_t.values, w24_t.meta)
    return y if lead is None else y.reshape(*lead, y.shape[-1])


def _check_w24_t(w24: Sparse24, w24_t) -> None:
    if not isinstance(w24_t, Sparse24):
        raise TypeError(
            f"{_OP}: expected w24_t to be a Sparse24 (W^T from compress_24_transposable) or None "
            f"(got {type(w24_t).__name__})"
        )
    if w24.layout != "packed" or w24_t.layout != "packed":
        raise ValueError(
            f"{_OP}: w24_t is used with the 'packed' layout only: expected w24.layout == w24_t.layout == 'packed' "
            f"(got {w24.layout!r} and {w24_t.layout!r})"
        )
    n, k = w24.shape
    if tuple(w24_t.shape) != (k, n):
        raise ValueError(
            f"{_OP}: expected w24_t of dense shape [{k}, {n}] (W^T for W of shape [{n}, {k}]) "
            f"(got {list(w24_t.shape)})"
        )
    if n % 4 != 0:
        raise ValueError(f"{_OP}: w24_t needs W's N = {n} (out features) divisible by 4")


def compress_24_transposable(w: Tensor, *, prune: bool = False) -> tuple[Sparse24, Sparse24]:
    """``(compress_24(w), compress_24(w.t()))`` for a ``w`` that is 2:4 along both dims.

    The pair is what :func:`sparse24_linear` takes as ``(w24, w24_t)``: with a transposable mask
    (:func:`sparseops.transposable_mask_24`) both ``x @ W^T`` (forward) and ``grad_z @ W`` (backward
    ``grad_x``) run on the 2:4 kernels.

    Args:
        w: ``[N, K]`` with ``N % 4 == 0`` and ``K % 4 == 0``; float32/float16/bfloat16; CPU or CUDA.
            Without ``prune``, every group of 4 consecutive elements of a row and of a column must hold
            at most 2 non-zeros (else a ValueError saying how many groups do not).
        prune: first apply ``transposable_mask_24(w)`` (the transposable mask keeping the most ``|w|``).

    Returns:
        Two "packed" :class:`Sparse24`: ``W`` (``values [N, K/2]``) and ``W^T`` (``values [K, N/2]``).
        Memory: about the dense bytes in all (two half-size value tensors plus two metadata tensors).
        Extra memory: a contiguous copy of ``w.t()``; the check reads two bool tensors of ``w``'s size
        back to the host (a device sync on CUDA).
    """
    op = "compress_24_transposable"
    if not isinstance(w, Tensor):
        raise TypeError(f"{op}: expected w to be a Tensor (got {type(w).__name__})")
    if w.dim() != 2:
        raise ValueError(f"{op}: expected w to be 2-D (got {w.dim()}-D with shape {list(w.shape)})")
    n, k = w.shape
    if n % 4 != 0 or k % 4 != 0:
        raise ValueError(f"{op}: expected both dims of w to be divisible by 4 (got shape {list(w.shape)})")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: expected w float32/float16/bfloat16 (got {w.dtype})")
    if prune:
        w = torch.where(transposable_mask_24(w), w, torch.zeros((), dtype=w.dtype, device=w.device))
    else:
        nz = w != 0
        bad_rows = int((nz.reshape(n, k // 4, 4).sum(-1) > 2).sum())
        bad_cols = int((nz.t().reshape(k, n // 4, 4).sum(-1) > 2).sum())
        if bad_rows or bad_cols:
            raise ValueError(
                f"{op}: expected w to be 2:4 sparse along both dims (at most 2 non-zeros in every group of 4 "
                f"consecutive elements of a row and of a column) (got {bad_rows} row groups and {bad_cols} "
                "column groups with more); prune it with transposable_mask_24(w) or pass prune=True"
            )
    return compress_24(w), compress_24(w.t().contiguous())


# ---------------------------------------------------------------------------------------------
# fake kernel


@torch.library.register_fake("sparseops::sparse24_linear")
def _sparse24_linear_fake(
    x: Tensor,
    values: Tensor,
    meta: Tensor,
    bias: Optional[Tensor] = None,
    activation: str = "none",
    values_t: Optional[Tensor] = None,
    meta_t: Optional[Tensor] = None,
) -> Tensor:
    torch._check(
        activation in ACTIVATIONS, lambda: f"{_OP}: expected activation in {ACTIVATIONS} (got {activation!r})"
    )
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"{_OP}: expected x float32/float16/bfloat16 (got {x.dtype})")
    torch._check(values.dtype == x.dtype, lambda: f"{_OP}: expected values to have x's dtype {x.dtype} (got {values.dtype})")
    torch._check(x.dim() == 2, lambda: f"{_OP}: expected x to be 2-D (got {x.dim()}-D)")
    torch._check(values.dim() == 2, lambda: f"{_OP}: expected values to be 2-D (got {values.dim()}-D)")
    m, k = x.shape
    n, half = values.shape
    torch._check(k % 4 == 0, lambda: f"{_OP}: expected x.size(1) (K) to be divisible by 4 (got {k})")
    torch._check(k == 2 * half, lambda: f"{_OP}: x has {k} features (x.size(-1)) but the weight expects {2 * half} "
                 f"(2 * values.size(1) = 2 * {half})")
    torch._check(meta.dtype == torch.uint8, lambda: f"{_OP}: expected meta to have dtype uint8 (got {meta.dtype})")
    torch._check(
        meta.dim() == 2 and meta.shape[0] == n and meta.shape[1] == _packed_meta_cols(k),
        lambda: f"{_OP}: expected meta of shape [{n}, {_packed_meta_cols(k)}] (got {list(meta.shape)})",
    )
    if bias is not None:
        torch._check(bias.dtype == x.dtype, lambda: f"{_OP}: expected bias to have x's dtype {x.dtype} (got {bias.dtype})")
        torch._check(
            bias.dim() == 1 and bias.shape[0] == n, lambda: f"{_OP}: expected bias of shape [{n}] (got {list(bias.shape)})"
        )
    torch._check(
        (values_t is None) == (meta_t is None), lambda: f"{_OP}: expected values_t and meta_t to be given together"
    )
    if values_t is not None:
        torch._check(
            values_t.dtype == values.dtype,
            lambda: f"{_OP}: expected values_t to have values' dtype {values.dtype} (got {values_t.dtype})",
        )
        torch._check(meta_t.dtype == torch.uint8, lambda: f"{_OP}: expected meta_t to have dtype uint8 (got {meta_t.dtype})")
        torch._check(n % 4 == 0, lambda: f"{_OP}: values_t/meta_t need N = values.size(0) divisible by 4 (got {n})")
        torch._check(
            values_t.dim() == 2 and values_t.shape[0] == k and 2 * values_t.shape[1] == n,
            lambda: f"{_OP}: expected values_t of shape [{k}, {n // 2}] (got {list(values_t.shape)})",
        )
        torch._check(
            meta_t.dim() == 2 and meta_t.shape[0] == k and meta_t.shape[1] == _packed_meta_cols(n),
            lambda: f"{_OP}: expected meta_t of shape [{k}, {_packed_meta_cols(n)}] (got {list(meta_t.shape)})",
        )
    return x.new_empty((m, n))


# ---------------------------------------------------------------------------------------------
# autograd

_RECOMPUTE_Z = ("gelu", "silu", "relu2")


def _sparse24_linear_setup(ctx, inputs, output) -> None:
    x, values, meta, bias, activation = inputs[:5]
    values_t, meta_t = inputs[5:7] if len(inputs) >= 7 else (None, None)
    # one entry per op input: (x, values, meta, bias, activation, values_t, meta_t)
    needs = ctx.needs_input_grad
    need_x, need_v, need_b = needs[0], needs[1], len(needs) > 3 and needs[3]
    need_z = activation in _RECOMPUTE_Z and (need_x or need_v or need_b)
    transposed = need_x and values_t is not None  # grad_x through the 2:4 kernel on W^T
    ctx.activation = activation
    ctx.needs = (need_x, need_v, need_b)
    ctx.transposed = transposed
    ctx.save_for_backward(
        x if (need_v or need_z) else None,
        values if ((need_x and not transposed) or need_z) else None,
        meta,
        bias if need_z else None,
        output if activation == "relu" else None,
        values_t if transposed else None,
        meta_t if transposed else None,
    )


def _activation_backward(grad_y: Tensor, activation: str, z: Optional[Tensor], y: Optional[Tensor]) -> Tensor:
    if activation == "none":
        return grad_y
    if activation == "relu":
        return grad_y * (y > 0)
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(grad_y, z)
    if activation == "silu":
        return torch.ops.aten.silu_backward(grad_y, z)
    return grad_y * (2 * torch.relu(z))  # relu2


def _sparse24_linear_backward(ctx, grad_y: Tensor):
    x, values, meta, bias, y, values_t, meta_t = ctx.saved_tensors
    need_x, need_v, need_b = ctx.needs
    z = None
    if ctx.activation in _RECOMPUTE_Z:
        z = _ops.sparse24_linear(x, values, meta, bias, "none")
    grad_z = _activation_backward(grad_y, ctx.activation, z, y)
    grad_x = grad_values = grad_bias = None
    if need_x and ctx.transposed:
        # grad_x [M, K] = grad_z [M, N] @ W [N, K] = grad_z @ (W^T)^T: the forward op on W^T's compression.
        grad_x = _ops.sparse24_linear(grad_z.to(values_t.dtype), values_t, meta_t, None, "none")
    elif need_x:
        grad_x = grad_z @ _ops.decompress_24(values, meta, "packed")
    if need_v:
        n, k = grad_z.shape[1], x.shape[1]
        if n * k == 0:
            grad_values = grad_z.new_zeros((n, k // 2))
        else:
            dense = grad_z.t() @ x  # [N, K]
            idx = _kept_indices_packed(meta, k // 4)
            grad_values = dense.reshape(n, k // 4, 4).gather(-1, idx).reshape(n, k // 2)
    if need_b:
        grad_bias = grad_z.sum(0)
    # values_t / meta_t: no gradient (W^T is a derived copy of W; see sparse24_linear's w24_t).
    return grad_x, grad_values, None, grad_bias, None, None, None


torch.library.register_autograd(
    "sparseops::sparse24_linear", _sparse24_linear_backward, setup_context=_sparse24_linear_setup
)
