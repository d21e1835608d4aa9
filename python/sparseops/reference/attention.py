"""Pure-PyTorch references for the attention family: dense token masks and softmax (small shapes only:
they materialise Sq x Skv), the oracle the tests compare the kernels to."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from sparseops.attention.block_mask import BlockMask, _window_pair, block_mask_from_dense

__all__ = ["block_sparse_attention_ref", "token_mask_ref", "topk_block_mask_ref"]


def token_mask_ref(block_mask: BlockMask, *, causal: bool = False,
                   window: Union[None, int, Tuple[int, int]] = None) -> Tensor:
    """bool ``[B|1, H|1, Sq, Skv]``: True where key j is visible to query i (block kept and the token rule)."""
    bq, bk = block_mask.block_size
    sq, skv = block_mask.q_len, block_mask.kv_len
    dense = block_mask.to_dense_blocks()
    tok = dense.repeat_interleave(bq, dim=-2)[..., :sq, :].repeat_interleave(bk, dim=-1)[..., :skv]
    dev = tok.device
    p = torch.arange(sq, device=dev)[:, None] + (skv - sq)
    j = torch.arange(skv, device=dev)[None, :]
    rule = torch.ones(sq, skv, dtype=torch.bool, device=dev)
    if causal:
        rule &= j <= p
    if window is not None:
        left, right = _window_pair(window, causal, "token_mask_ref")
        rule &= (j >= p - left) & (j <= p + right)
    return tok & rule


def block_sparse_attention_ref(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask, *, causal: bool = False,
                               window: Union[None, int, Tuple[int, int]] = None, scale: Optional[float] = None,
                               return_lse: bool = False):
    """Dense masked softmax attention in float32 (float64 for float64 inputs), result in q's dtype.
    Rows that see no key give 0 and lse -inf. Differentiable (used as the backward's oracle)."""
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    kf = k.to(dt).repeat_interleave(g, dim=1)
    vf = v.to(dt).repeat_interleave(g, dim=1)
    s = (q.to(dt) @ kf.transpose(-1, -2)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    visible = token_mask_ref(block_mask, causal=causal, window=window)
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    p = p.masked_fill(~visible, 0.0)
    out = (p @ vf).to(q.dtype)
    return (out, lse.float() if dt == torch.float32 else lse) if return_lse else out


def topk_block_mask_ref(q: Tensor, k: Tensor, *, block_size, topk: int, causal: bool = False, sink_blocks: int = 0,
                        local_blocks: int = 1) -> BlockMask:
    """The selection rule of :func:`sparseops.topk_block_mask`, in float64 with Python loops."""
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    B, Hq, sq, D = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    nq, nkv = math.ceil(sq / bq), math.ceil(skv / bk)
    pad_q = q.double().new_zeros(B, Hq, nq * bq, D)
    pad_q[:, :, :sq] = q.double()
    cnt_q = torch.clamp(sq - torch.arange(nq) * bq, max=bq).double()
    pq = pad_q.view(B, Hq, nq, bq, D).sum(3) / cnt_q[:, None]
    pad_k = k.double().new_zeros(B, hkv, nkv * bk, D)
    pad_k[:, :, :skv] = k.double()
    cnt_k = torch.clamp(skv - torch.arange(nkv) * bk, max=bk).double()
    pk = (pad_k.view(B, hkv, nkv, bk, D).sum(3) / cnt_k[:, None]).repeat_interleave(Hq // hkv, dim=1)
    scores = pq @ pk.transpose(-1, -2)  # [B, Hq, nq, nkv]
    off = skv - sq
    keep = torch.zeros(B, Hq, nq, nkv, dtype=torch.bool)
    for i in range(nq):
        last = min((i + 1) * bq, sq) - 1
        diag = min(max((last + off) // bk, 0), nkv - 1)
        visible = [not causal or kb * bk <= last + off for kb in range(nkv)]
        forced = [visible[kb] and (kb < sink_blocks or diag - local_blocks < kb <= diag) for kb in range(nkv)]
        for b in range(B):
            for h in range(Hq):
                cands = [kb for kb in range(nkv) if visible[kb] and not forced[kb]]
                s = scores[b, h, i].nan_to_num(nan=-math.inf)
                cands.sort(key=lambda kb: (-float(s[kb]), kb))
                for kb in cands[:topk]:
                    keep[b, h, i, kb] = True
                for kb in range(nkv):
                    if forced[kb]:
                        keep[b, h, i, kb] = True
    m = block_mask_from_dense(keep, (bq, bk), sq, skv)
    return m._replace(kv_num_blocks=m.kv_num_blocks.to(q.device), kv_indices=m.kv_indices.to(q.device))
