"""``codebook_lookup`` over a codebook sharded by rows across ``torch.distributed`` ranks.

Every rank holds a contiguous block of codes, in rank order (rank 0 the first ``K_0`` codes, rank 1 the
next ``K_1``, ...), and its own ``z``. Each rank searches *all* ranks' rows (gathered) against its own shard
with the fused kernel, the ``(distance, global index)`` candidates of every shard are gathered, and the
winner of every row is the smallest distance, ties to the lowest global index. Every rank gets its own
rows' global indices, distances and winning code vectors; the vectors are summed from the owning shards
with a differentiable ``all_reduce``, so the codebook gradient lands in the shard that owns the code.

Collectives per call: an ``all_gather`` of the shard shapes (checks that every rank has the same D and
the same number of rows), of ``z`` (``world x N x D``), of the candidates (``world x world x N``), and an
``all_reduce`` of ``world x N x D`` code vectors. Works on gloo (CPU) and NCCL (CUDA).

Precision: each shard's distances are the per-shard lookup's (on CPU: float64 re-checked, rounded to
fp32), so codes in different shards whose distances round to the same fp32 value tie, and the lower
global index wins; otherwise the result equals an unsharded lookup.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)

_ops = torch.ops.sparseops


def _gather(t: Tensor, world: int, group) -> Tensor:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous(), group=group)
    return torch.stack(out)


def sharded_codebook_lookup(z2d: Tensor, shard: Tensor, metric: str, group) -> tuple[Tensor, Tensor, Tensor]:
    """(quantized [N, D], global indices [N], dist [N]) of this rank's rows z2d against the sharded codebook."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n, d = z2d.shape
    meta = torch.tensor([n, shard.shape[1], shard.shape[0]], dtype=torch.int64, device=shard.device)
    metas = _gather(meta, world, group).tolist()
    for r, (n_r, d_r, k_r) in enumerate(metas):
        if d_r != d:
            raise ValueError(f"codebook_lookup: expected every rank's codebook.size(1) to equal this rank's D={d} "
                             f"(rank {r} has {d_r})")
        if n_r != n:
            raise ValueError(f"codebook_lookup: expected the same number of vectors on every rank (this rank {n}, "
                             f"rank {r} {n_r}) with process_group")
        if k_r < 1:
            raise ValueError(f"codebook_lookup: expected a non-empty codebook shard on every rank (rank {r} has 0 codes)")
    offset = sum(k for _, _, k in metas[:rank])
    z_all = _gather(z2d.detach().to(shard.dtype), world, group).reshape(world * n, d)
    q_local, idx_local, dist_local = _ops.codebook_lookup(z_all, shard, metric)
    dists = _gather(dist_local, world, group)              # [world shards, world * n rows]
    gidx = _gather(idx_local + offset, world, group)
    win_rank = dists.argmin(0)                             # first minimum: the lowest shard, so the lowest index
    win_idx = gidx.gather(0, win_rank[None])[0]
    win_dist = dists.gather(0, win_rank[None])[0]
    mine = (win_rank == rank)[:, None]
    contrib = torch.where(mine, q_local, torch.zeros((), dtype=q_local.dtype, device=q_local.device))
    q_all = dist_fn.all_reduce(contrib, group=group)       # differentiable: grads return to the owning shard
    rows = slice(rank * n, (rank + 1) * n)
    return q_all[rows], win_idx[rows], win_dist[rows]
