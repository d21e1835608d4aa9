"""Gradients of vector quantisation: ``codebook_grad`` (the deterministic scatter-add that is the backward of
``quantized = codebook[indices]``), the autograd of ``codebook_lookup``, and the straight-through ``vq_ste``.

Kernels: ``csrc/codebook/stats_*`` (CPU: counting sort by code, one thread per code, ascending rows; CUDA:
a stable sort of the indices and one segmented fp32 sum per code). Same inputs, same bits, every run.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from .lookup import _FLOAT_DTYPES

_ops = torch.ops.sparseops

__all__ = ["codebook_grad", "vq_ste"]


def codebook_grad(grad_quantized: Tensor, indices: Tensor, num_codes: int) -> Tensor:
    """Gradient of ``codebook[indices]`` w.r.t. ``codebook``: row ``k`` is the sum of the rows of
    ``grad_quantized`` whose index is ``k`` (0 for unused codes).

    Args:
        grad_quantized: ``[..., D]`` float32/float16/bfloat16.
        indices: int64 ``[...]`` (``grad_quantized``'s leading shape), values in ``[0, num_codes)``
            (checked: an out-of-range index raises, naming its position).
        num_codes: ``K >= 1``.

    Returns:
        ``[num_codes, D]`` in ``grad_quantized``'s dtype; fp32 sums in a fixed order (deterministic on CPU
        and CUDA). Extra memory: O(N + K).
    """
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
        raise TypeError(f"codebook_grad: expected indices to be an int64 tensor (got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)})")
    if grad_quantized.shape[:-1] != indices.shape:
        raise ValueError(f"codebook_grad: expected indices.shape == grad_quantized.shape[:-1] (got "
                         f"{tuple(indices.shape)} vs {tuple(grad_quantized.shape[:-1])})")
    d = grad_quantized.shape[-1]
    return _ops.codebook_grad(grad_quantized.reshape(-1, d), indices.reshape(-1), int(num_codes))


@torch.library.register_fake("sparseops::codebook_grad")
def _codebook_grad_fake(grad_quantized: Tensor, indices: Tensor, num_codes: int) -> Tensor:
    op = "codebook_grad"
    torch._check(grad_quantized.dtype in _FLOAT_DTYPES,
                 lambda: f"{op}: expected grad_quantized float32/float16/bfloat16 (got {grad_quantized.dtype})")
    torch._check(indices.dtype == torch.int64, lambda: f"{op}: expected indices int64 (got {indices.dtype})")
    torch._check(grad_quantized.dim() == 2, lambda: f"{op}: expected grad_quantized to be 2-D (got {grad_quantized.dim()}-D)")
    torch._check(indices.dim() == 1, lambda: f"{op}: expected indices to be 1-D (got {indices.dim()}-D)")
    torch._check(indices.shape[0] == grad_quantized.shape[0],
                 lambda: f"{op}: expected indices.size(0) == grad_quantized.size(0) (got {indices.shape[0]} vs {grad_quantized.shape[0]})")
    torch._check(num_codes >= 1, lambda: f"{op}: expected num_codes >= 1 (got {num_codes})")
    return grad_quantized.new_empty((num_codes, grad_quantized.shape[1]))


def _codebook_grad_setup(ctx, inputs, output) -> None:
    _, indices, _ = inputs
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(indices)


def _codebook_grad_backward(ctx, grad_out: Tensor):
    (indices,) = ctx.saved_tensors
    return grad_out.index_select(0, indices), None, None


torch.library.register_autograd("sparseops::codebook_grad", _codebook_grad_backward, setup_context=_codebook_grad_setup)


# ---- autograd of codebook_lookup: quantized -> codebook; indices and dist carry no gradient ------


def _lookup_setup(ctx, inputs, output) -> None:
    _, codebook, _ = inputs
    _, indices, dist = output
    ctx.mark_non_differentiable(indices, dist)
    ctx.num_codes = codebook.shape[0]
    if ctx.needs_input_grad[1]:
        ctx.save_for_backward(indices)


def _lookup_backward(ctx, grad_quantized, grad_indices, grad_dist):
    grad_codebook = None
    if ctx.needs_input_grad[1] and grad_quantized is not None:
        (indices,) = ctx.saved_tensors
        grad_codebook = _ops.codebook_grad(grad_quantized.contiguous(), indices, ctx.num_codes)
    return None, grad_codebook, None


torch.library.register_autograd("sparseops::codebook_lookup", _lookup_backward, setup_context=_lookup_setup)


def vq_ste(z: Tensor, quantized: Tensor) -> Tensor:
    """Straight-through estimator: the value of ``quantized``, the gradient of ``z`` (``z + (q - z).detach()``).

    The gradient reaching the result flows to ``z`` unchanged and not to ``quantized``; give the codebook
    its own loss (e.g. ``((z.detach() - quantized) ** 2).mean()``) or an EMA update.
    """
    if z.shape != quantized.shape:
        raise ValueError(f"vq_ste: expected z.shape == quantized.shape (got {tuple(z.shape)} vs {tuple(quantized.shape)})")
    return z + (quantized.to(z.dtype) - z).detach()
