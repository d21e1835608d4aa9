"""Block-sparse attention cases (CPU and CUDA).

prefill: ``block_sparse_attention`` with random per-head block masks (block 128, FlexAttention's default;
the same number of kept blocks in every row) against dense ``scaled_dot_product_attention`` (the primary
peer: what a user runs without a mask; on CUDA pinned to its flash backend) and against FlexAttention
compiled with the same mask (forward only: FlexAttention has no backward on CPU). B*H = 16, non-causal,
S = 1024 and 4096 (and 16384 on CPU, full runs only); the dropped fraction in each label is the actual one
(a row keeps round((1 - drop) * nKV) blocks, at least 1; a drop level that keeps as many blocks as the
previous one is left out). flops count the kept work only (4 * S * kept_keys * D per head forward, 2.5x
that for forward+backward).

decode: one query token per head against an 8192-token cache and, in full runs, a 65536-token one (only
that one on CUDA), GQA
32/8 heads, D = 128, 90 % of the KV
blocks dropped (one list per KV head), against SDPA on the full cache with k/v expanded to the 32 heads
beforehand (untimed; the primary peer: SDPA's enable_gqa=True path is also reported, it is far slower
on CPU); bytes = the kept K/V blocks read.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

import sparseops
from sparseops.bench import Case, register, unavailable

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_BLOCK = 128


def _random_mask(heads: int, sq: int, skv: int, bq: int, bk: int, drop: float, device: str) -> sparseops.BlockMask:
    nq, nkv = math.ceil(sq / bq), math.ceil(skv / bk)
    keep = max(1, round((1.0 - drop) * nkv))
    g = torch.Generator().manual_seed(nq * 131 + keep)
    chosen = torch.rand(1, heads, nq, nkv, generator=g).topk(keep, dim=-1).indices
    blocks = torch.zeros(1, heads, nq, nkv, dtype=torch.bool).scatter_(-1, chosen, True)
    return sparseops.block_mask_from_dense(blocks, (bq, bk), sq, skv).to(device)


def _flex_impl(q: Tensor, k: Tensor, v: Tensor, m: sparseops.BlockMask):
    """FlexAttention compiled with the same mask (kept blocks as partial blocks with no mask_mod: the
    CPU path fails to compile when they are given as full blocks in torch 2.14.1). Compiled lazily, on the
    harness's untimed first call, so that building the case list (all of it, before --filter) compiles
    nothing; dynamo's caches are reset first, so that the compilations of earlier cases do not reach
    its recompile limit (past it, flex_attention silently runs unfused)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as exc:
        return unavailable(f"FlexAttention not available in this torch: {exc}")
    compiled = []

    def run():
        if not compiled:
            try:
                torch._dynamo.reset()
                fbm = FlexBlockMask.from_kv_blocks(m.kv_num_blocks, m.kv_indices, BLOCK_SIZE=m.block_size,
                                                   seq_lengths=(m.q_len, m.kv_len))
                flex = torch.compile(flex_attention, dynamic=False)
                flex(q, k, v, block_mask=fbm)
            except Exception as exc:  # reported as skipped, with the reason
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                raise NotImplementedError(f"FlexAttention failed here: {type(exc).__name__}: {first}") from exc
            compiled.append((flex, fbm))
        flex, fbm = compiled[0]
        return flex(q, k, v, block_mask=fbm)

    return run


def _sdpa(device: str):
    """Dense SDPA; on CUDA pinned to FlashAttention-2 (the named GPU peer)."""
    if device != "cuda":
        return F.scaled_dot_product_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    return flash


def _drop_levels(heads: int, s: int, device: str):
    """(drop, mask) for 0 / 50 / 90 / 97 % dropped (CUDA: not 97 %), leaving out a level that keeps as many blocks as the
    previous one (at S = 1024, 90 % and 97 % both keep one block of eight)."""
    seen = set()
    # CUDA: the three levels the one-call GPU check has time for.
    for drop in (0.0, 0.5, 0.9) if device == "cuda" else (0.0, 0.5, 0.9, 0.97):
        keep = max(1, round((1.0 - drop) * math.ceil(s / _BLOCK)))
        if keep not in seen:
            seen.add(keep)
            yield drop, _random_mask(heads, s, s, _BLOCK, _BLOCK, drop, device)


def _fwd_bwd(fn, q: Tensor, k: Tensor, v: Tensor, grad: Tensor):
    def step() -> None:
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(grad)

    return step


def _prefill_shapes(device: str, quick: bool):
    seqs = [1024] if quick else ([1024, 4096] if device == "cuda" else [1024, 4096, 16384])
    # CUDA: bf16 only (the tensor-core kernel's fp16 twin differs in one mma instruction; keeps the
    # one-call GPU check short).
    dtypes = {"bf16": torch.bfloat16} if device == "cuda" else _DTYPES
    for s in seqs:
        for d in (64, 128):
            for dname, dtype in dtypes.items():
                yield s, d, dname, dtype


@register("attention", "block_sparse_attention_prefill")
def prefill_cases(device: str, quick: bool):
    heads = 16
    for s, d, dname, dtype in _prefill_shapes(device, quick):
        q, k, v = (torch.randn(1, heads, s, d, device=device, dtype=dtype) for _ in range(3))
        sdpa = _sdpa(device)
        for drop, m in _drop_levels(heads, s, device):
            kept = m.density()
            yield Case(
                label=f"fwd {dname} S={s} D={d} dropped={1 - kept:.3f}",
                params={"dtype": dname, "s": s, "d": d, "heads": heads, "dropped": 1 - kept, "block": _BLOCK,
                        "job": "forward"},
                impls={
                    "sparseops": lambda q=q, k=k, v=v, m=m: sparseops.block_sparse_attention(q, k, v, m),
                    "torch_sdpa_dense": lambda q=q, k=k, v=v: sdpa(q, k, v),
                    # On CUDA only S=1024 of the full pass compiles it (the one-call GPU check's time budget).
                    "flex_attention_compiled": (unavailable("not compiled here on CUDA (GPU check time budget)")
                                                if device == "cuda" and (quick or s > 1024) else _flex_impl(q, k, v, m)),
                },
                baseline="torch_sdpa_dense",
                flops=int(4 * heads * s * s * kept * d),
            )


@register("attention", "block_sparse_attention_prefill_backward")
def prefill_backward_cases(device: str, quick: bool):
    heads = 16
    for s, d, dname, dtype in _prefill_shapes(device, quick):
        q, k, v = (torch.randn(1, heads, s, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(1, heads, s, d, device=device, dtype=dtype)
        for drop, m in _drop_levels(heads, s, device):
            kept = m.density()
            flex_note = "FlexAttention has no backward on CPU" if device == "cpu" else "not measured here"
            yield Case(
                label=f"fwd+bwd {dname} S={s} D={d} dropped={1 - kept:.3f}",
                params={"dtype": dname, "s": s, "d": d, "heads": heads, "dropped": 1 - kept, "block": _BLOCK,
                        "job": "forward+backward"},
                impls={
                    "sparseops": _fwd_bwd(lambda a, b, c, m=m: sparseops.block_sparse_attention(a, b, c, m), q, k, v,
                                          grad),
                    "torch_sdpa_dense": _fwd_bwd(_sdpa(device), q, k, v, grad),
                    "flex_attention_compiled": unavailable(flex_note),
                },
                baseline="torch_sdpa_dense",
                flops=int(2.5 * 4 * heads * s * s * kept * d),
            )


@register("attention", "block_sparse_attention_decode")
def decode_cases(device: str, quick: bool):
    hq, hkv, d, drop = 32, 8, 128, 0.9
    # CUDA full runs: the long cache only (the one-call GPU check's time budget).
    skvs = [8192] if quick else ([65536] if device == "cuda" else [8192, 65536])
    for skv, (dname, dtype) in itertools.product(skvs,
                                                 _DTYPES.items() if not quick else [("bf16", torch.bfloat16)]):
        q = torch.randn(1, hq, 1, d, device=device, dtype=dtype)
        k, v = (torch.randn(1, hkv, skv, d, device=device, dtype=dtype) for _ in range(2))
        m = _random_mask(hkv, 1, skv, 16, _BLOCK, drop, device)
        # One list per KV head, shared by its 4 query heads (the GQA group reads each block once).
        m = m._replace(kv_num_blocks=m.kv_num_blocks.repeat_interleave(hq // hkv, dim=1),
                       kv_indices=m.kv_indices.repeat_interleave(hq // hkv, dim=1))
        kept = m.density()
        k_full, v_full = (t.repeat_interleave(hq // hkv, dim=1) for t in (k, v))
        yield Case(
            label=f"decode {dname} Sq=1 Skv={skv} Hq={hq} Hkv={hkv} D={d} dropped={1 - kept:.3f}",
            params={"dtype": dname, "skv": skv, "hq": hq, "hkv": hkv, "d": d, "dropped": 1 - kept, "job": "decode"},
            impls={
                "sparseops": lambda q=q, k=k, v=v, m=m: sparseops.block_sparse_attention(q, k, v, m),
                "torch_sdpa_full_cache": lambda q=q, k=k_full, v=v_full: F.scaled_dot_product_attention(q, k, v),
                "torch_sdpa_enable_gqa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
            },
            baseline="torch_sdpa_full_cache",
            bytes=int(2 * hkv * skv * kept * d * k.element_size()),
        )
