"""transformers integration: ``register_transformers()`` makes ``attn_implementation="sparseops"`` run
:func:`sparseops.block_sparse_attention` with a pattern from a small config (sliding window, top-k
blocks, sinks), through transformers' ``AttentionInterface``.

Masks: the masks transformers builds for SDPA are used (so that none is built when it can be skipped:
causal or bidirectional attention without padding). When a call still gets an explicit mask (padding,
packed sequences) it is handed to transformers' SDPA path unchanged -- correct, but dense -- since the
block kernel takes no token-level mask besides causal/window. Dropout > 0 in training is refused.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..nn.block_sparse_attention import BlockSparseAttention
from .block_sparse import block_sparse_attention

__all__ = ["register_transformers"]


def register_transformers(name: str = "sparseops", *, block_size: Union[int, Tuple[int, int]] = 64,
                          window: Union[None, int, Tuple[int, int]] = None, topk: Optional[int] = None,
                          sink_blocks: int = 0, local_blocks: int = 1) -> str:
    """Registers ``name`` with transformers' ``AttentionInterface`` (and its mask interface), so that
    ``AutoModel.from_pretrained(..., attn_implementation=name)`` (or ``model.set_attn_implementation``)
    runs the block-sparse kernel with this pattern in every attention layer; causality comes from each
    layer (``is_causal``). Registering again under the same name replaces the pattern. Returns ``name``.

    Raises ImportError when transformers is not installed.
    """
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError as exc:
        raise ImportError(f"sparseops.register_transformers: needs transformers with AttentionInterface ({exc})") from exc

    cores = {causal: BlockSparseAttention(block_size, causal=causal, window=window, topk=topk, sink_blocks=sink_blocks,
                                          local_blocks=local_blocks) for causal in (False, True)}

    def forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                dropout: float = 0.0, scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
        if dropout and module.training:
            raise ValueError(f"sparseops attention ({name}): attention dropout is not supported (got {dropout})")
        if attention_mask is not None or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                          is_causal=is_causal, **kwargs)
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        core = cores[causal]
        attn = block_sparse_attention(query, key, value, core.build_mask(query, key), causal=causal, window=window,
                                      scale=scaling)
        return attn.transpose(1, 2).contiguous(), None

    AttentionInterface.register(name, forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    return name
