"""Reference for sparse24_linear, written from the definition with plain torch ops."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .sparse24 import decompress_24_ref

_ACTIVATIONS = {
    "none": lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,  # erf form
    "silu": F.silu,
    "relu2": lambda z: F.relu(z).square(),
}


def sparse24_linear_ref(
    x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None, activation: str = "none"
) -> Tensor:
    """act(x @ W^T + bias) in fp32, W = decompress(values, meta) ("packed"); returned in x's dtype.

    A pruned weight is structurally absent: x at a pruned position never enters the product, so an inf or
    NaN there does not reach the output (F.linear on the decompressed W would give 0 * inf = NaN).

    x: [..., K]; values [N, K/2]; meta uint8 [N, ceil(K/8)]; bias [N] or None. Differentiable in
    x, values and bias.
    """
    w = decompress_24_ref(values, meta).float()
    xf = x.float()
    if torch.isfinite(xf).all():
        z = F.linear(xf, w, None if bias is None else bias.float())
    else:  # sum over the kept positions only: x gathered at each row's kept columns
        kept = kept_columns_ref(meta, values.shape[1])  # [N, K/2]
        z = (xf[..., kept] * values.float()).sum(-1)
        if bias is not None:
            z = z + bias.float()
    return _ACTIVATIONS[activation](z).to(x.dtype)


def kept_columns_ref(meta: Tensor, half: int) -> Tensor:
    """The dense column of every stored value: [N, K/2] int64 (values[n, j] sits at W[n, kept[n, j]])."""
    rows = meta.shape[0]
    groups = half // 2
    codes = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(rows, -1)[:, :groups].long()
    base = 4 * torch.arange(groups, device=meta.device)
    return torch.stack((base + (codes & 3), base + ((codes >> 2) & 3)), dim=-1).reshape(rows, 2 * groups)
