"""References for the sparse24 mask/format ops, written from the definitions with plain torch ops."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def nm_mask_ref(w: Tensor, n: int = 2, m: int = 4, score: Optional[Tensor] = None) -> Tensor:
    """Keep the n largest |score| in each group of m along the last dim; ties to the lower index."""
    s = (w if score is None else score).float().abs()
    groups = s.reshape(-1, m)
    # A stable descending sort keeps equal magnitudes in index order, so ties go to the lower index.
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(w.shape)


def _keep_mask_24(w: Tensor, prune: bool) -> Tensor:
    if prune:
        return nm_mask_ref(w, 2, 4)
    groups = w.reshape(-1, 4) != 0
    if (groups.sum(-1) > 2).any():
        raise ValueError("compress_24_ref: w is not 2:4 sparse")
    # Fill up to two kept positions with the lowest-index zeros.
    need = 2 - groups.sum(-1, keepdim=True)
    zero_rank = torch.cumsum((~groups).int(), dim=-1)
    fill = (~groups) & (zero_rank <= need)
    return (groups | fill).reshape(w.shape)


def compress_24_ref(w: Tensor, prune: bool = False) -> tuple[Tensor, Tensor]:
    """(values, meta) in the "packed" layout (see sparseops.Sparse24)."""
    rows, cols = w.shape
    mask = _keep_mask_24(w, prune)
    values = w[mask].reshape(rows, cols // 2)
    positions = torch.arange(4, device=w.device).expand(rows, cols // 4, 4)
    kept = positions[mask.reshape(rows, cols // 4, 4)].reshape(rows, cols // 4, 2)
    codes = (kept[..., 0] | (kept[..., 1] << 2)).to(torch.uint8)
    if codes.shape[1] % 2:
        codes = torch.cat((codes, codes.new_zeros(rows, 1)), dim=1)
    meta = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return values, meta


def decompress_24_ref(values: Tensor, meta: Tensor) -> Tensor:
    """Dense matrix from "packed" (values, meta)."""
    rows, half = values.shape
    groups = half // 2
    codes = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(rows, -1)[:, :groups].long()
    first, second = codes & 3, (codes >> 2) & 3
    dense = values.new_zeros(rows, groups, 4)
    v = values.reshape(rows, groups, 2)
    dense.scatter_(-1, first.unsqueeze(-1), v[..., :1])
    dense.scatter_(-1, second.unsqueeze(-1), v[..., 1:])
    return dense.reshape(rows, 4 * groups)
