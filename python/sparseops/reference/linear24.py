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

    x: [..., K]; values [N, K/2]; meta uint8 [N, ceil(K/8)]; bias [N] or None. Differentiable in
    x, values and bias.
    """
    w = decompress_24_ref(values, meta).float()
    z = F.linear(x.float(), w, None if bias is None else bias.float())
    return _ACTIVATIONS[activation](z).to(x.dtype)
