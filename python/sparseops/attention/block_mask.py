"""Block masks for :func:`sparseops.block_sparse_attention`, in FlexAttention's semantics, and cheap
builders (they work on the ``nQ x nKV`` block grid, never on ``Sq x Skv`` tokens).

A :class:`BlockMask` is a ``NamedTuple`` of plain tensors and ints (so it pickles, moves between devices
with :meth:`BlockMask.to`, and passes through ``torch.compile`` as ordinary inputs):

* ``kv_num_blocks`` int32 ``[B|1, H|1, nQ]``: how many KV blocks query block ``i`` keeps;
* ``kv_indices`` int32 ``[B|1, H|1, nQ, W]``: their indices (the first ``kv_num_blocks`` entries of each
  row; distinct, ``< nKV``; the rest is ignored);
* ``block_size = (bq, bk)``, ``q_len``, ``kv_len``: ``nQ = ceil(q_len / bq)``, ``nKV = ceil(kv_len / bk)``.

A size-1 batch or head dim is broadcast. ``H`` counts query heads.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "BlockMask",
    "block_mask_from_dense",
    "block_mask_from_flex",
    "causal_block_mask",
    "full_block_mask",
    "sliding_window_block_mask",
]

DeviceLike = Union[str, torch.device, None]


def _pair(block_size: Union[int, Sequence[int]], fn: str) -> Tuple[int, int]:
    if isinstance(block_size, int):
        bq = bk = block_size
    elif isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        bq, bk = block_size
    else:
        raise TypeError(f"{fn}: expected block_size to be an int or a pair (bq, bk) (got {block_size!r})")
    if not (isinstance(bq, int) and isinstance(bk, int)) or not (1 <= bq <= 1024 and 1 <= bk <= 1024):
        raise ValueError(f"{fn}: expected block sizes to be ints in [1, 1024] (got {block_size!r})")
    return int(bq), int(bk)


def _check_lengths(q_len: int, kv_len: int, fn: str) -> None:
    if not (isinstance(q_len, int) and isinstance(kv_len, int)) or q_len < 1 or kv_len < 1:
        raise ValueError(f"{fn}: expected q_len and kv_len to be ints >= 1 (got {q_len!r}, {kv_len!r})")


class BlockMask(NamedTuple):
    """Which KV blocks each query block attends to (see the module docstring)."""

    kv_num_blocks: Tensor
    kv_indices: Tensor
    block_size: Tuple[int, int]
    q_len: int
    kv_len: int

    @property
    def num_q_blocks(self) -> int:
        return math.ceil(self.q_len / self.block_size[0])

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.kv_len / self.block_size[1])

    def to(self, device: DeviceLike) -> "BlockMask":
        return self._replace(kv_num_blocks=self.kv_num_blocks.to(device), kv_indices=self.kv_indices.to(device))

    def to_dense_blocks(self) -> Tensor:
        """bool ``[B|1, H|1, nQ, nKV]``: True where the block is kept."""
        nkv = self.num_kv_blocks
        width = self.kv_indices.shape[-1]
        valid = torch.arange(width, device=self.kv_indices.device) < self.kv_num_blocks.unsqueeze(-1)
        dense = torch.zeros(*self.kv_indices.shape[:-1], nkv + 1, dtype=torch.bool, device=self.kv_indices.device)
        # Entries past the count go to the spare column nkv, dropped below.
        target = torch.where(valid, self.kv_indices.long(), torch.full_like(self.kv_indices, nkv, dtype=torch.long))
        dense.scatter_(-1, target, valid)
        return dense[..., :nkv]

    def density(self) -> float:
        """Fraction of (query block, KV block) pairs kept, averaged over batch and heads."""
        return float(self.kv_num_blocks.float().mean()) / self.num_kv_blocks

    def to_flex(self, mask_mod=None):
        """This mask as a FlexAttention ``BlockMask`` (every kept block a partial block, so that
        ``mask_mod`` -- default: none -- applies inside it; pass e.g. a causal ``mask_mod`` for what
        ``causal=True`` does here). Needs ``torch.nn.attention.flex_attention``."""
        from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

        return FlexBlockMask.from_kv_blocks(self.kv_num_blocks, self.kv_indices, BLOCK_SIZE=self.block_size,
                                            mask_mod=mask_mod, seq_lengths=(self.q_len, self.kv_len))

    def __or__(self, other: "BlockMask") -> "BlockMask":  # union
        return _combine(self, other, torch.logical_or)

    def __and__(self, other: "BlockMask") -> "BlockMask":  # intersection
        return _combine(self, other, torch.logical_and)


def _combine(a: BlockMask, b: BlockMask, fn) -> BlockMask:
    if (a.block_size, a.q_len, a.kv_len) != (b.block_size, b.q_len, b.kv_len):
        raise ValueError(f"BlockMask: cannot combine masks with different block_size/q_len/kv_len "
                         f"({a.block_size}, {a.q_len}, {a.kv_len}) vs ({b.block_size}, {b.q_len}, {b.kv_len})")
    return block_mask_from_dense(fn(a.to_dense_blocks(), b.to_dense_blocks()), a.block_size, a.q_len, a.kv_len)


def block_mask_from_dense(blocks: Tensor, block_size: Union[int, Sequence[int]], q_len: int, kv_len: int) -> BlockMask:
    """A :class:`BlockMask` from a bool block grid ``[B|1, H|1, nQ, nKV]`` (True = keep the block).

    Kept indices are listed in ascending order. Cost: one sort of the block grid.
    """
    fn = "block_mask_from_dense"
    bq, bk = _pair(block_size, fn)
    _check_lengths(q_len, kv_len, fn)
    if not isinstance(blocks, Tensor) or blocks.dtype != torch.bool:
        raise TypeError(f"{fn}: expected blocks to be a bool tensor (got {getattr(blocks, 'dtype', type(blocks))})")
    if blocks.dim() == 2:
        blocks = blocks[None, None]
    nq, nkv = math.ceil(q_len / bq), math.ceil(kv_len / bk)
    if blocks.dim() != 4 or tuple(blocks.shape[-2:]) != (nq, nkv):
        raise ValueError(f"{fn}: expected blocks of shape [B|1, H|1, {nq}, {nkv}] (ceil(q_len/bq), ceil(kv_len/bk)) "
                         f"(got {tuple(blocks.shape)})")
    num = blocks.sum(-1, dtype=torch.int32)
    # Stable sort of "not kept": kept blocks first, in ascending order.
    idx = torch.sort((~blocks).to(torch.uint8), dim=-1, stable=True).indices.to(torch.int32)
    return BlockMask(num.contiguous(), idx.contiguous(), (bq, bk), q_len, kv_len)


def block_mask_from_flex(flex_block_mask) -> BlockMask:
    """A :class:`BlockMask` keeping the blocks a FlexAttention ``BlockMask`` keeps (its partial and full
    blocks together). Its ``mask_mod`` is not carried over: express the token-level rule with
    ``causal`` / ``window`` of :func:`block_sparse_attention`."""
    fn = "block_mask_from_flex"
    for attr in ("kv_num_blocks", "kv_indices", "BLOCK_SIZE", "seq_lengths"):
        if not hasattr(flex_block_mask, attr):
            raise TypeError(f"{fn}: expected a torch.nn.attention.flex_attention.BlockMask (no attribute {attr!r} on "
                            f"{type(flex_block_mask).__name__})")
    bq, bk = flex_block_mask.BLOCK_SIZE
    q_len, kv_len = (int(x) for x in flex_block_mask.seq_lengths)
    size = (bq, bk)
    dense = BlockMask(flex_block_mask.kv_num_blocks.int(), flex_block_mask.kv_indices.int(), size, q_len,
                      kv_len).to_dense_blocks()
    if flex_block_mask.full_kv_num_blocks is not None:
        dense = dense | BlockMask(flex_block_mask.full_kv_num_blocks.int(), flex_block_mask.full_kv_indices.int(),
                                  size, q_len, kv_len).to_dense_blocks()
    return block_mask_from_dense(dense, size, q_len, kv_len)


def _token_ranges(n_blocks: int, block: int, length: int, device) -> Tuple[Tensor, Tensor]:
    start = torch.arange(n_blocks, device=device) * block
    return start, torch.clamp(start + block, max=length) - 1


def _band_blocks(q_len: int, kv_len: int, bq: int, bk: int, left: Optional[int], right: Optional[int],
                 device) -> Tensor:
    """Blocks holding at least one pair with p - left <= j <= p + right, p = i + kv_len - q_len (None:
    unbounded), from the block corners only."""
    nq, nkv = math.ceil(q_len / bq), math.ceil(kv_len / bk)
    i0, i1 = _token_ranges(nq, bq, q_len, device)
    j0, j1 = _token_ranges(nkv, bk, kv_len, device)
    off = kv_len - q_len
    keep = torch.ones(nq, nkv, dtype=torch.bool, device=device)
    if right is not None:
        keep &= j0[None, :] <= (i1 + off + right)[:, None]
    if left is not None:
        keep &= j1[None, :] >= (i0 + off - left)[:, None]
    return keep


def full_block_mask(q_len: int, kv_len: int, block_size: Union[int, Sequence[int]] = 128, *,
                    device: DeviceLike = None) -> BlockMask:
    """Every block kept (dense attention through the block-sparse kernel)."""
    fn = "full_block_mask"
    bq, bk = _pair(block_size, fn)
    _check_lengths(q_len, kv_len, fn)
    nq, nkv = math.ceil(q_len / bq), math.ceil(kv_len / bk)
    return block_mask_from_dense(torch.ones(1, 1, nq, nkv, dtype=torch.bool, device=device), (bq, bk), q_len, kv_len)


def causal_block_mask(q_len: int, kv_len: int, block_size: Union[int, Sequence[int]] = 128, *,
                      device: DeviceLike = None) -> BlockMask:
    """The blocks a causal mask touches, aligned bottom-right (query i sees keys j <= i + kv_len - q_len).
    Pass ``causal=True`` to the attention as well for exact token-level causality inside the diagonal
    blocks."""
    fn = "causal_block_mask"
    bq, bk = _pair(block_size, fn)
    _check_lengths(q_len, kv_len, fn)
    blocks = _band_blocks(q_len, kv_len, bq, bk, None, 0, device)
    return block_mask_from_dense(blocks[None, None], (bq, bk), q_len, kv_len)


def sliding_window_block_mask(q_len: int, kv_len: int, window: Union[int, Tuple[int, int]],
                              block_size: Union[int, Sequence[int]] = 128, *, causal: bool = True,
                              device: DeviceLike = None) -> BlockMask:
    """The blocks a sliding window touches: query i sees keys p - left <= j <= p + right with
    p = i + kv_len - q_len. ``window`` is ``left`` (then right = 0 if ``causal`` else ``left``) or a pair
    ``(left, right)``. Pass the same ``window`` (and ``causal``) to the attention for the exact
    token-level window."""
    fn = "sliding_window_block_mask"
    bq, bk = _pair(block_size, fn)
    _check_lengths(q_len, kv_len, fn)
    left, right = _window_pair(window, causal, fn)
    blocks = _band_blocks(q_len, kv_len, bq, bk, left, right, device)
    return block_mask_from_dense(blocks[None, None], (bq, bk), q_len, kv_len)


def _window_pair(window, causal: bool, fn: str) -> Tuple[int, int]:
    if isinstance(window, int):
        left, right = window, (0 if causal else window)
    elif isinstance(window, (tuple, list)) and len(window) == 2:
        left, right = window
    else:
        raise TypeError(f"{fn}: expected window to be an int or a pair (left, right) (got {window!r})")
    if not (isinstance(left, int) and isinstance(right, int)) or left < 0 or right < 0:
        raise ValueError(f"{fn}: expected window sizes to be ints >= 0 (got {window!r})")
    return left, right
