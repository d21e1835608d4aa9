"""References for the training ops (nm_srste, nm_srste_backward, transposable_mask_24), written from
the definitions with plain torch ops."""
from __future__ import annotations

import itertools
from typing import Optional, Union

import torch
from torch import Tensor

from .sparse24 import nm_mask_ref

# Column pairs in the order csrc/common/transposable24.h documents (it decides ties).
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def nm_srste_ref(w: Tensor, n: int = 2, m: int = 4) -> tuple[Tensor, Tensor]:
    """(w where kept else 0, mask): mask = n largest |w| per group of m, ties to the lower index, NaN
    ranked as the largest magnitude (as +inf, so it ties with +-inf and the lower index wins)."""
    score = torch.nan_to_num(w.float().abs(), nan=float("inf"))
    mask = nm_mask_ref(w, n, m, score=score)
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device)), mask


def nm_srste_backward_ref(grad: Tensor, w: Tensor, mask: Tensor, decay: float,
                          pruned_grad_scale: Union[float, Tensor, None] = 1.0) -> Tensor:
    """grad * (mask + s * (1 - mask)) + decay * (1 - mask) * w, evaluated in float32 as the select
    kept ? grad : grad * s + decay * w and rounded once to w's dtype."""
    if pruned_grad_scale is None:
        pruned_grad_scale = 1.0
    s = pruned_grad_scale.to(torch.float32).reshape(()).item() if isinstance(pruned_grad_scale, Tensor) else float(pruned_grad_scale)
    g, x = grad.float(), w.float()
    pruned = g * torch.tensor(s, dtype=torch.float32) + torch.tensor(decay, dtype=torch.float32) * x
    return torch.where(mask, g, pruned).to(w.dtype)


def transposable_patterns_ref(device: Optional[torch.device] = None) -> Tensor:
    """The 90 transposable 2:4 patterns as a bool [90, 4, 4] tensor, in the documented order: all
    (row-0 pair, ..., row-3 pair) tuples in lexicographic order, kept if every column has two ones."""
    patterns = []
    for rows in itertools.product(range(6), repeat=4):
        p = torch.zeros(4, 4, dtype=torch.bool)
        for r, pair in enumerate(rows):
            p[r, list(_PAIRS[pair])] = True
        if bool((p.sum(0) == 2).all()):
            patterns.append(p)
    return torch.stack(patterns).to(device)


def transposable_mask_24_ref(w: Tensor) -> Tensor:
    """Brute force: for every 4x4 block, the first of the 90 patterns with the largest kept sum of |w|.

    Sums in float32 in the kernels' order (((row0 + row1) + row2) + row3, each row's two kept values
    added in index order), so that the reference agrees with the kernels bit for bit, ties included."""
    rows, cols = w.shape
    if torch.isnan(w).any():
        raise ValueError("transposable_mask_24_ref: w contains NaN")
    mag = w.float().abs().reshape(rows // 4, 4, cols // 4, 4).permute(0, 2, 1, 3)  # [R/4, C/4, 4, 4]
    patterns = transposable_patterns_ref(w.device)  # [90, 4, 4]
    # Per row of each pattern, its two kept columns in index order.
    cols_kept = patterns.nonzero()[:, 2].reshape(90, 4, 2)  # [90, 4 rows, 2]
    scores = None
    for r in range(4):
        a = mag[:, :, r, :][..., cols_kept[:, r, 0]]  # [R/4, C/4, 90]
        b = mag[:, :, r, :][..., cols_kept[:, r, 1]]
        row_sum = a + b
        scores = row_sum if scores is None else scores + row_sum
    best = scores.argmax(dim=-1)  # argmax returns the first maximum: ties to the first pattern
    chosen = patterns[best]  # [R/4, C/4, 4, 4]
    return chosen.permute(0, 2, 1, 3).reshape(rows, cols)
