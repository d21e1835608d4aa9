"""2:4 sparse linear: ``y = act(x @ W^T + bias)`` with ``W`` in a 2:4 compressed format.

Python face of the ``sparseops::sparse24_linear`` op: the typed wrapper, its fake (meta) kernel and
its autograd, side by side. CPU kernels: ``csrc/sparse24/linear24_cpu.cpp`` and ``linear24_avx512.cpp``;
the CUDA backends are reached through ``sparseops.linear24_cuda``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _build  # noqa: F401  (loads the extension that defines the ops)
from .sparse24 import Sparse24, _kept_indices_packed, _packed_meta_cols

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
            (see ``sparseops.linear24_cuda``).

    Returns:
        ``[..., N]`` in ``x``'s dtype. Accumulation is in fp32.

    CPU paths (chosen by ``M``, the product of ``x``'s leading dims):

    - small ``M`` (with AVX-512: ``M <= 32`` for fp32/fp16, ``M <= 16`` for bf16; portable build:
      ``M <= 4``; ``SPARSEOPS_LINEAR24_GEMV_MAX_M`` overrides): a GEMV-style kernel, parallel over
      output features, that streams the packed weights once for all ``M`` rows (AVX-512 when the CPU
      has it, bf16 with ``vdpbf16ps``; else portable C++; ``SPARSEOPS_CPU_ISA=baseline`` forces the
      latter). It reads ~9/16 (fp32) or ~5/8 (fp16/bf16) of the dense weight's bytes. Bias and
      activation run in fp32 before the single rounding to ``x``'s dtype. Extra memory: a padded copy
      of ``x`` (fp32, or bf16 for bf16) and, for fp16/bf16, an fp32 ``[M, N]`` buffer.
    - larger ``M``: tiles of 256 weight rows are decompressed into one thread-local dense
      ``[256, K]`` buffer per thread and multiplied by torch's dense GEMM, bias fused in the GEMM and the
      activation applied in place (for fp16/bf16 on the GEMM's rounded output, as ``F.linear`` + act).
      Extra memory: ``256*K`` elements per thread, plus a contiguous copy of ``x`` if it is strided.

    Autograd: gradients for ``x``, ``w24.values`` and ``bias``. The backward decompresses ``W``
    (``N*K`` elements) for ``grad_x`` and forms the dense ``grad_z^T @ x`` (``N*K``) before gathering
    ``grad_values`` at the kept positions. For ``"gelu"``, ``"silu"`` and ``"relu2"`` the
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
    lead = x.shape[:-1]
    rows = 1
    for d in lead:
        rows *= d
    x2d = x.reshape(rows, x.shape[-1])
    if x.device.type == "cuda":
        try:
            from .linear24_cuda import cuda_sparse24_linear
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.linear24_cuda":
                raise
            raise RuntimeError(
                f"{_OP}: x is on CUDA but the CUDA backends are unavailable (module "
                f"{__package__}.linear24_cuda is missing from this installation)"
            ) from e
        y = cuda_sparse24_linear(x2d, w24, bias, act, backend)
    else:
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
        y = _ops.sparse24_linear(x2d, w24.values, w24.meta, bias, act)
    return y.reshape(*lead, y.shape[-1])


# ---------------------------------------------------------------------------------------------
# fake kernel


@torch.library.register_fake("sparseops::sparse24_linear")
def _sparse24_linear_fake(
    x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None, activation: str = "none"
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
    torch._check(k == 2 * half, lambda: f"{_OP}: expected x.size(1) == 2 * values.size(1) (got {k} vs 2 * {half})")
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
    return x.new_empty((m, n))


# ---------------------------------------------------------------------------------------------
# autograd

_RECOMPUTE_Z = ("gelu", "silu", "relu2")


def _sparse24_linear_setup(ctx, inputs, output) -> None:
    x, values, meta, bias, activation = inputs
    needs = ctx.needs_input_grad  # one entry per op input: (x, values, meta, bias, activation)
    need_x, need_v, need_b = needs[0], needs[1], len(needs) > 3 and needs[3]
    need_z = activation in _RECOMPUTE_Z and (need_x or need_v or need_b)
    ctx.activation = activation
    ctx.needs = (need_x, need_v, need_b)
    ctx.save_for_backward(
        x if (need_v or need_z) else None,
        values if (need_x or need_z) else None,
        meta,
        bias if need_z else None,
        output if activation == "relu" else None,
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
    x, values, meta, bias, y = ctx.saved_tensors
    need_x, need_v, need_b = ctx.needs
    z = None
    if ctx.activation in _RECOMPUTE_Z:
        z = _ops.sparse24_linear(x, values, meta, bias, "none")
    grad_z = _activation_backward(grad_y, ctx.activation, z, y)
    grad_x = grad_values = grad_bias = None
    if need_x:
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
    return grad_x, grad_values, None, grad_bias, None


torch.library.register_autograd(
    "sparseops::sparse24_linear", _sparse24_linear_backward, setup_context=_sparse24_linear_setup
)
