"""Top-k block selection (NSA / MoBA style): the Python face of ``sparseops::topk_block_mask``.
Kernel: ``csrc/attention/attention_cpu.cpp`` (CUDA: ``attention_kernel.cu``); reference:
``sparseops.reference.attention.topk_block_mask_ref``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from .block_mask import BlockMask, _pair

_ops = torch.ops.sparseops

__all__ = ["topk_block_mask"]


def topk_block_mask(q: Tensor, k: Tensor, *, block_size: Union[int, Sequence[int]], topk: int, causal: bool = False,
                    sink_blocks: int = 0, local_blocks: int = 1) -> BlockMask:
    """A :class:`BlockMask` keeping, per (batch, query head, query block), the KV blocks whose mean-pooled
    keys score highest against the mean-pooled query block (dot product, float64), plus forced blocks.

    Kept per query block ``i``, among the blocks visible under ``causal`` (block level, aligned
    bottom-right like :func:`block_sparse_attention`): the first ``sink_blocks`` KV blocks, the
    ``local_blocks`` ending at the diagonal block (the one holding key position ``last query of the block
    + Skv - Sq``), and the ``topk`` best-scoring others (ties to the lower index). Indices ascending.

    Args:
        q: ``[B, Hq, Sq, D]``; k: ``[B, Hkv, Skv, D]`` (GQA: the group's KV head scores each query head).
        block_size: ``bq`` or ``(bq, bk)``, in [1, 1024].

    Cost: one read of q and k plus ``O(nQ * nKV * D)`` per head; not differentiable. Output width nKV.
    """
    fn = "topk_block_mask"
    bq, bk = _pair(block_size, fn)
    for name, val in (("topk", topk), ("sink_blocks", sink_blocks), ("local_blocks", local_blocks)):
        if not isinstance(val, int) or val < 0:
            raise ValueError(f"{fn}: expected {name} to be an int >= 0 (got {val!r})")
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"{fn}: expected q and k to be 4-D tensors [B, H, S, D]")
    num, idx = _ops.topk_block_mask(q, k, bq, bk, topk, bool(causal), sink_blocks, local_blocks)
    return BlockMask(num, idx, (bq, bk), q.shape[2], k.shape[2])


@torch.library.register_fake("sparseops::topk_block_mask")
def _topk_block_mask_fake(q, k, block_q, block_k, topk, causal=False, sink_blocks=0, local_blocks=1):
    op = "topk_block_mask"
    torch._check(q.dim() == 4 and k.dim() == 4, lambda: f"{op}: expected 4-D q and k")
    torch._check(q.dtype == k.dtype and q.dtype in (torch.float32, torch.float16, torch.bfloat16),
                 lambda: f"{op}: expected q and k of one float dtype")
    B, Hq, Sq, D = q.shape
    torch._check(k.shape[0] == B and k.shape[3] == D, lambda: f"{op}: expected k [B, Hkv, Skv, D] matching q")
    torch._check(Hq % k.shape[1] == 0, lambda: f"{op}: expected Hq to be a multiple of Hkv")
    torch._check(1 <= block_q <= 1024 and 1 <= block_k <= 1024, lambda: f"{op}: expected block sizes in [1, 1024]")
    torch._check(topk >= 0 and sink_blocks >= 0 and local_blocks >= 0, lambda: f"{op}: expected counts >= 0")
    nq = (Sq + block_q - 1) // block_q
    nkv = (k.shape[2] + block_k - 1) // block_k
    return q.new_empty((B, Hq, nq), dtype=torch.int32), q.new_empty((B, Hq, nq, nkv), dtype=torch.int32)
