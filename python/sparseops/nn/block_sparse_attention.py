"""``BlockSparseAttention``: the attention core (after the q/k/v projections) of a plain PyTorch model,
running :func:`sparseops.block_sparse_attention` with a pattern given by a small config."""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..attention import (BlockMask, block_sparse_attention, causal_block_mask, full_block_mask,
                         sliding_window_block_mask, topk_block_mask)

__all__ = ["BlockSparseAttention"]


class BlockSparseAttention(nn.Module):
    """``out = attention(q, k, v)`` restricted to a block pattern.

    Pattern (built per call from the shapes, static parts cached per (Sq, Skv, device)):
      * ``topk`` set: per (batch, head, query block) the ``topk`` best KV blocks by mean-pooled scores
        (:func:`sparseops.topk_block_mask`, with ``sink_blocks`` and ``local_blocks``), intersected with the
        window's blocks when ``window`` is set;
      * else ``window`` set: a sliding window; else ``causal``: the causal blocks; else every block.
    ``causal`` and ``window`` are also applied at token level inside the kept blocks.
    A ``block_mask`` passed to :meth:`forward` overrides the pattern.

    Args:
        block_size: ``bq`` or ``(bq, bk)``.
        causal, window, scale: as :func:`sparseops.block_sparse_attention`.
        topk, sink_blocks, local_blocks: as :func:`sparseops.topk_block_mask`.
    """

    def __init__(self, block_size: Union[int, Tuple[int, int]] = 64, *, causal: bool = False,
                 window: Union[None, int, Tuple[int, int]] = None, topk: Optional[int] = None, sink_blocks: int = 0,
                 local_blocks: int = 1, scale: Optional[float] = None) -> None:
        super().__init__()
        self.block_size = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
        self.causal = causal
        self.window = window
        self.topk = topk
        self.sink_blocks = sink_blocks
        self.local_blocks = local_blocks
        self.scale = scale
        self._static: Dict[tuple, BlockMask] = {}

    def extra_repr(self) -> str:
        return (f"block_size={self.block_size}, causal={self.causal}, window={self.window}, topk={self.topk}, "
                f"sink_blocks={self.sink_blocks}, local_blocks={self.local_blocks}")

    def _static_mask(self, sq: int, skv: int, device: torch.device) -> BlockMask:
        key = (sq, skv, str(device))
        if key not in self._static:
            if self.window is not None:
                m = sliding_window_block_mask(sq, skv, self.window, self.block_size, causal=self.causal, device=device)
            elif self.causal:
                m = causal_block_mask(sq, skv, self.block_size, device=device)
            else:
                m = full_block_mask(sq, skv, self.block_size, device=device)
            self._static[key] = m
        return self._static[key]

    def build_mask(self, q: Tensor, k: Tensor) -> BlockMask:
        static = self._static_mask(q.shape[2], k.shape[2], q.device)
        if self.topk is None:
            return static
        with torch.no_grad():
            m = topk_block_mask(q.detach(), k.detach(), block_size=self.block_size, topk=self.topk,
                                causal=self.causal, sink_blocks=self.sink_blocks, local_blocks=self.local_blocks)
        return m & static if self.window is not None else m

    def forward(self, q: Tensor, k: Tensor, v: Tensor, block_mask: Optional[BlockMask] = None) -> Tensor:
        if block_mask is None:
            block_mask = self.build_mask(q, k)
        return block_sparse_attention(q, k, v, block_mask, causal=self.causal, window=self.window, scale=self.scale)
