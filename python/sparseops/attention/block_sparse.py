"""Block-sparse attention: the Python face of ``sparseops::block_sparse_attention`` and its backward
(typed wrapper, fake kernels, autograd). Kernels: ``csrc/attention/``; reference:
``sparseops.reference.attention``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from .block_mask import BlockMask, _window_pair

_ops = torch.ops.sparseops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["block_sparse_attention"]

WindowLike = Union[None, int, Tuple[int, int]]


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_mask: BlockMask,
    *,
    causal: bool = False,
    window: WindowLike = None,
    scale: Optional[float] = None,
    return_lse: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Attention restricted to the KV blocks ``block_mask`` keeps (FlashAttention-2, fp32 accumulation).

    ``out = softmax(scale * q k^T + mask) v``, where a key is visible to a query iff its block is kept for
    the query's block and, at token level, the ``causal`` / ``window`` rule allows it. Positions are
    aligned bottom-right (query ``i`` sits at key position ``p = i + Skv - Sq``, as flash-attn does for
    decoding): causal keeps ``j <= p``; ``window=(left, right)`` keeps ``p - left <= j <= p + right``
    (an int ``w`` means ``(w, 0)`` when causal, else ``(w, w)``).

    Args:
        q: ``[B, Hq, Sq, D]``; k, v: ``[B, Hkv, Skv, D]`` with ``Hq % Hkv == 0`` (GQA/MQA: k and v are
            never expanded); float32/float16/bfloat16, one dtype and device; ``1 <= D <= 256``.
        block_mask: a :class:`BlockMask` with ``q_len == Sq`` and ``kv_len == Skv``, on q's device, its
            head dim 1 or Hq (query heads).
        scale: default ``D ** -0.5``.
        return_lse: also return the log-sum-exp ``[B, Hq, Sq]`` (fp32; differentiable).

    Returns:
        ``out`` of q's shape and dtype (and ``lse``). A query row that sees no key gives 0 (lse -inf).

    Never materialises ``Sq x Skv``; reads only the kept blocks. Extra memory (CPU): fp32 copies of the
    K/V blocks the mask uses (up to 2x K's element count in floats; per-thread copies of one block
    instead when the query blocks hardly share them: decoding, or under 2 uses per used block). The
    backward recomputes the probabilities from lse and copies nothing at the size of q/k/v: it takes
    ``delta`` (``B*Hq*Sq`` floats) plus, per worker thread, one KV block's fp32 K^T / V^T panels and one
    tile's scratch (``2*D*bk + 2*bq*bk + 2*bk*D`` floats, sizes rounded up to 16), and, unless the inputs
    are float32 with ``D`` a multiple of 16 (then read in place), fp32 rows of q, dO and dq for the
    ``Hq/Hkv * Sq`` query rows of one KV head (``3 * Hq/Hkv * Sq * D`` floats; ``Hq/Hkv * bq`` rows when
    ``B*Hkv`` is too small to keep the threads busy). NaN in q/k/v propagates.

    Mask validation: on CPU the op checks the mask's contents (indices in range and distinct, counts
    within the index width) and raises. On CUDA it does not copy the mask to the host (that would cost a
    sync per call): the kernels clamp each count to ``[0, width]`` and skip indices outside
    ``[0, nKV)`` as they read them, so nothing out of bounds is read, and a duplicated index counts its
    block twice. Set ``SPARSEOPS_CHECK_MASK=1`` to get the CPU's checks and errors on CUDA too (one
    device-to-host copy and sync per call). CUDA kernels: tensor cores (mma.sync) on sm80+ for
    fp16/bf16 with D a multiple of 8 (backward: D <= 128) and 16-byte aligned data; CUDA cores otherwise
    (fp32 included). When the forward's grid has fewer thread blocks than the GPU has SMs (decoding),
    each row's kept blocks are split over up to 64 thread blocks and the partial rows merged with their
    lse (flash-decoding), which takes ``splits * B*Hq*Sq*(D+1)`` floats more
    (``SPARSEOPS_ATTENTION_KV_SPLITS=n`` sets the split count).

    CPU precision: fp32 accumulation everywhere. bf16 inputs on AVX-512 BF16 CPUs multiply in bf16 pairs
    (q K^T and P V, with P rounded to bf16); on CPUs with AMX-BF16 those products run on AMX tiles, and so
    do the backward's five (P and dS rounded to bf16, as FlashAttention's backward does);
    ``SPARSEOPS_CPU_AMX=0`` keeps them on AVX-512. Other dtypes and CPUs compute in fp32.
    """
    fn = "block_sparse_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: expected {name} to be a Tensor (got {type(t).__name__})")
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"{fn}: expected block_mask to be a sparseops.BlockMask (got {type(block_mask).__name__})")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{fn}: expected q, k, v to be 4-D [B, H, S, D] (got {q.dim()}-D, {k.dim()}-D, {v.dim()}-D)")
    if (block_mask.q_len, block_mask.kv_len) != (q.shape[2], k.shape[2]):
        raise ValueError(f"{fn}: expected block_mask for q_len={q.shape[2]}, kv_len={k.shape[2]} "
                         f"(got q_len={block_mask.q_len}, kv_len={block_mask.kv_len})")
    left, right = (-1, -1) if window is None else _window_pair(window, causal, fn)
    bq, bk = block_mask.block_size
    out, lse = _ops.block_sparse_attention(q, k, v, block_mask.kv_num_blocks, block_mask.kv_indices, bq, bk,
                                           bool(causal), left, right, None if scale is None else float(scale))
    return (out, lse) if return_lse else out


def _check_fake(op: str, q: Tensor, k: Tensor, v: Tensor, num: Tensor, idx: Tensor, block_q: int, block_k: int,
                window_left: int, window_right: int) -> None:
    torch._check(q.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected q float32/float16/bfloat16 (got {q.dtype})")
    torch._check(k.dtype == q.dtype and v.dtype == q.dtype,
                 lambda: f"{op}: expected q, k, v of one dtype (got {q.dtype}, {k.dtype}, {v.dtype})")
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: f"{op}: expected 4-D q, k, v")
    B, Hq, Sq, D = q.shape
    torch._check(k.shape[0] == B and v.shape == k.shape, lambda: f"{op}: expected v.shape == k.shape, one batch size")
    torch._check(k.shape[3] == D, lambda: f"{op}: expected k.size(3) == q.size(3) = {D} (got {k.shape[3]})")
    torch._check(1 <= D <= 256, lambda: f"{op}: expected head dim q.size(3) in [1, 256] (got {D})")
    Hkv, Skv = k.shape[1], k.shape[2]
    torch._check(Hkv >= 1 and Hq % Hkv == 0, lambda: f"{op}: expected q.size(1) (Hq={Hq}) to be a multiple of k.size(1) (Hkv={Hkv})")
    torch._check(Sq >= 1 and Skv >= 1, lambda: f"{op}: expected q_len and kv_len >= 1")
    torch._check(1 <= block_q <= 1024 and 1 <= block_k <= 1024, lambda: f"{op}: expected block_q and block_k in [1, 1024]")
    torch._check(num.dtype == torch.int32 and idx.dtype == torch.int32, lambda: f"{op}: expected int32 mask tensors")
    torch._check(num.dim() == 3 and idx.dim() == 4, lambda: f"{op}: expected kv_num_blocks 3-D and kv_indices 4-D")
    nq = (Sq + block_q - 1) // block_q
    torch._check(num.shape[0] in (1, B) and num.shape[1] in (1, Hq), lambda: f"{op}: mask batch/head dims must be 1 or B/Hq")
    torch._check(num.shape[2] == nq, lambda: f"{op}: expected kv_num_blocks.size(2) == ceil(q_len / block_q) = {nq}")
    torch._check(tuple(idx.shape[:3]) == tuple(num.shape), lambda: f"{op}: expected kv_indices.shape[:3] == kv_num_blocks.shape")
    torch._check(window_left >= -1 and window_right >= -1, lambda: f"{op}: expected window sizes >= -1")


@torch.library.register_fake("sparseops::block_sparse_attention")
def _block_sparse_attention_fake(q, k, v, kv_num_blocks, kv_indices, block_q, block_k, causal=False, window_left=-1,
                                 window_right=-1, scale=None):
    _check_fake("block_sparse_attention", q, k, v, kv_num_blocks, kv_indices, block_q, block_k, window_left,
                window_right)
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.register_fake("sparseops::block_sparse_attention_backward")
def _block_sparse_attention_backward_fake(grad_out, q, k, v, out, lse, kv_num_blocks, kv_indices, block_q, block_k,
                                          causal=False, window_left=-1, window_right=-1, scale=None, grad_lse=None):
    op = "block_sparse_attention_backward"
    _check_fake(op, q, k, v, kv_num_blocks, kv_indices, block_q, block_k, window_left, window_right)
    torch._check(grad_out.shape == q.shape and out.shape == q.shape,
                 lambda: f"{op}: expected grad_out.shape == out.shape == q.shape")
    torch._check(lse.dtype == torch.float32 and tuple(lse.shape) == tuple(q.shape[:3]),
                 lambda: f"{op}: expected lse float32 of shape [B, Hq, Sq]")
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output) -> None:
    q, k, v, num, idx, block_q, block_k, causal, wl, wr, scale = inputs
    out, lse = output
    ctx.args = (block_q, block_k, causal, wl, wr, scale)
    ctx.save_for_backward(q, k, v, num, idx, out, lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, num, idx, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _ops.block_sparse_attention_backward(grad_out.contiguous(), q, k, v, out, lse, num, idx, *ctx.args,
                                                      grad_lse)
    return dq, dk, dv, None, None, None, None, None, None, None, None


torch.library.register_autograd("sparseops::block_sparse_attention", _backward, setup_context=_setup)
