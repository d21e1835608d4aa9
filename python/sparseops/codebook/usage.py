"""Codebook statistics and updates: ``codebook_usage`` (exact histogram), perplexity and utilisation from
it, and ``codebook_ema_update_`` (fused in-place EMA of counts and sums with Laplace smoothing).

Kernels: ``csrc/codebook/stats_*``. Counts are exact integers: utilisation measured from
``codebook_usage`` accumulated over a whole dataset is exact (a rolling buffer of recent indices, as
some VQ codes use, underestimates it).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from .lookup import _FLOAT_DTYPES

_ops = torch.ops.sparseops

__all__ = ["codebook_ema_update_", "codebook_perplexity", "codebook_usage", "codebook_utilisation"]


def codebook_usage(indices: Tensor, num_codes: int) -> Tensor:
    """How many times each code occurs in ``indices`` (int64, any shape): int64 ``[num_codes]``.

    Exact (integer counts; deterministic). An index outside ``[0, num_codes)`` raises, naming its flat
    position. Extra memory: CPU one int64 histogram per worker chunk; CUDA none beyond the output (atomics).
    """
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
        raise TypeError(f"codebook_usage: expected indices to be an int64 tensor (got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)})")
    return _ops.codebook_usage(indices, int(num_codes))


@torch.library.register_fake("sparseops::codebook_usage")
def _codebook_usage_fake(indices: Tensor, num_codes: int) -> Tensor:
    torch._check(indices.dtype == torch.int64, lambda: f"codebook_usage: expected indices int64 (got {indices.dtype})")
    torch._check(num_codes >= 1, lambda: f"codebook_usage: expected num_codes >= 1 (got {num_codes})")
    return indices.new_empty((num_codes,))


def codebook_perplexity(counts: Tensor) -> Tensor:
    """``exp(-sum p log p)`` of the usage distribution ``p = counts / counts.sum()`` (0 log 0 = 0), a float32
    scalar between 1 (one code used) and K (uniform use); 0 when ``counts`` sums to 0."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum()).float() * (counts.sum() > 0)


def codebook_utilisation(counts: Tensor) -> Tensor:
    """Fraction of codes used at least once: a float32 scalar in [0, 1]."""
    return (counts > 0).float().mean()


def codebook_ema_update_(codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor,
                         *, decay: float = 0.99, eps: float = 1e-5) -> None:
    """EMA codebook update (VQ-VAE, van den Oord et al. 2017), in place, fused, deterministic::

        cluster_size = decay * cluster_size + (1 - decay) * counts
        embed_sum    = decay * embed_sum    + (1 - decay) * (sum of the z rows assigned to each code)
        codebook     = embed_sum / ((cluster_size + eps) / (n + K * eps) * n),   n = cluster_size.sum()

    Args:
        codebook: ``[K, D]`` float32/float16/bfloat16, contiguous (updated).
        cluster_size: float32 ``[K]`` contiguous (updated). embed_sum: float32 ``[K, D]`` contiguous (updated).
        z: ``[..., D]`` any float dtype; indices: int64 ``z.shape[:-1]``, in ``[0, K)``.
        decay: in [0, 1]. eps: Laplace smoothing, > 0.

    All on one device. Extra memory: O(N + K) (CPU: the rows bucketed by code; CUDA: a sort of the indices).
    """
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64:
        raise TypeError(f"codebook_ema_update_: expected indices to be an int64 tensor (got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)})")
    if z.shape[:-1] != indices.shape:
        raise ValueError(f"codebook_ema_update_: expected indices.shape == z.shape[:-1] (got {tuple(indices.shape)} "
                         f"vs {tuple(z.shape[:-1])})")
    _ops.codebook_ema_update_(codebook, cluster_size, embed_sum, z.reshape(-1, z.shape[-1]), indices.reshape(-1),
                              float(decay), float(eps))


@torch.library.register_fake("sparseops::codebook_ema_update_")
def _codebook_ema_update_fake(codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor,
                              decay: float, eps: float) -> None:
    op = "codebook_ema_update_"
    torch._check(codebook.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected codebook float32/float16/bfloat16 (got {codebook.dtype})")
    torch._check(cluster_size.dtype == torch.float32 and embed_sum.dtype == torch.float32,
                 lambda: f"{op}: expected cluster_size and embed_sum float32 (got {cluster_size.dtype}, {embed_sum.dtype})")
    torch._check(z.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected z float32/float16/bfloat16 (got {z.dtype})")
    torch._check(indices.dtype == torch.int64, lambda: f"{op}: expected indices int64 (got {indices.dtype})")
    torch._check(codebook.dim() == 2 and z.dim() == 2 and indices.dim() == 1 and cluster_size.dim() == 1,
                 lambda: f"{op}: expected codebook, z 2-D and cluster_size, indices 1-D")
    torch._check(cluster_size.shape[0] == codebook.shape[0],
                 lambda: f"{op}: expected cluster_size.size(0) == codebook.size(0) (got {cluster_size.shape[0]} vs {codebook.shape[0]})")
    torch._check(embed_sum.shape == codebook.shape,
                 lambda: f"{op}: expected embed_sum.shape == codebook.shape (got {tuple(embed_sum.shape)} vs {tuple(codebook.shape)})")
    torch._check(z.shape[1] == codebook.shape[1],
                 lambda: f"{op}: expected z.size(1) == codebook.size(1) (got {z.shape[1]} vs {codebook.shape[1]})")
    torch._check(indices.shape[0] == z.shape[0],
                 lambda: f"{op}: expected indices.size(0) == z.size(0) (got {indices.shape[0]} vs {z.shape[0]})")
    torch._check(0.0 <= decay <= 1.0, lambda: f"{op}: expected 0 <= decay <= 1 (got {decay})")
    torch._check(eps > 0.0, lambda: f"{op}: expected eps > 0 and finite (got {eps})")
    return None
