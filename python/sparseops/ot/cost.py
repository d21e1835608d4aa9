"""Ground-cost matrices for point clouds."""
from __future__ import annotations

from torch import Tensor
import torch


def cost_matrix(x: Tensor, y: Tensor, p: int = 2) -> Tensor:
    """Pairwise costs ``C[..., i, j] = ||x_i - y_j||_p^p`` (p = 2: squared Euclidean; p = 1: L1).

    Args:
        x: ``[n, d]`` or ``[B, n, d]``; y: ``[m, d]`` or ``[B, m, d]``; float32/float64, one device.
        p: 1 or 2.

    Returns ``[n, m]`` or ``[B, n, m]`` in x's dtype. Squared Euclidean costs are computed directly from
    differences (torch.cdist without its ``|x|^2 + |y|^2 - 2 x.y`` matmul form, which cancels badly for nearby
    points). Extra memory: the output.
    """
    if p not in (1, 2):
        raise ValueError(f"cost_matrix: expected p in {{1, 2}} (got {p})")
    if x.dim() not in (2, 3) or y.dim() != x.dim():
        raise ValueError(f"cost_matrix: expected x and y both [n, d] or both [B, n, d] (got {tuple(x.shape)}, {tuple(y.shape)})")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"cost_matrix: expected x and y with the same point dimension (got {x.shape[-1]} vs {y.shape[-1]})")
    if p == 1:
        return torch.cdist(x, y, p=1)
    return torch.cdist(x, y, p=2, compute_mode="donot_use_mm_for_euclid_dist").square_()
