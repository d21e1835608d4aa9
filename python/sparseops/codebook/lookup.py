"""Nearest-code lookup for vector quantisation: ``codebook_lookup`` and its fake kernel and autograd.

Python face of the ``sparseops::codebook_lookup`` op (which returns ``(quantized, indices, dist)``) (kernels: ``csrc/codebook/lookup_*``; reference:
``sparseops.reference.codebook``).

Precision policy (CPU). The scan ranks codes by the expanded distance ``|c|^2 - 2 z.c`` in fp32 (inputs of
any float dtype converted exactly to fp32; fp32 accumulation; bf16 l2 inputs on AVX-512 use VDPBF16PS,
whose bf16 products are exact in fp32), fused with the argmin, and keeps as candidates every code within
a rigorous bound on twice that form's rounding error of the row's best
(``4 (D + 8) 2^-24 (3 max|c|^2 + |z|^2)``, plus a term for flushed denormals). On AVX-512 BF16 CPUs, l2
with D >= 64 and a roughly centred codebook (``|mean c|^2 <= E|c|^2 / 2``) screens fp32/fp16 inputs too
with bf16-rounded ``-2 z`` and ``c`` (twice the fp32 FMA rate); the bound then also covers that rounding
(``+ 4 (2^-7 + 2^-16) |z| max|c|``, with slack), so the re-check below still decides exactly. On AVX2
CPUs without AVX-512 BF16, lookups with 16 <= D <= 4096 (l2 with a roughly centred codebook; cosine on
the normalised vectors) rank on integer grids instead: ``-2 z`` on one grid per row and ``c`` on one for the codebook, with steps chosen so that the int32
dot of the int16 values is exact (Cauchy-Schwarz), at twice the fp32 FMA rate (VPMADDWD); the bound then
also covers the grids' rounding (``sc/2 |2z|_1 + sz/2 (max|c|_1 + D sc/2)``, twice, with slack;
``csrc/codebook/lookup_quant.h``). 32 rows screened first decide: more than 4 candidates per row (crowded
codes) keeps the fp32 scan. ``SPARSEOPS_CODEBOOK_GRID=0`` / ``=1`` turns it off / on. The candidates are
then re-checked with the exact form
``sum((z - c)^2)`` in float64 (cosine: ``1 - z.c / (|z| |c|)``), and the smallest wins, ties to the lowest
index. So the result is the nearest code to float64 rounding, even for near-ties that the expanded form
mis-orders, and it is the same on every ISA path (AVX-512, AVX2, portable). A row with more than 8
candidates within the bound (duplicate or near-identical codes, common in codebooks initialised from
data) spills the others into a per-thread buffer that is re-checked exactly after its block; only when
that buffer (32768 entries) fills up are the row's codes re-collected from the packed block (and the
row spills no more).
``dist`` is that float64 distance rounded to fp32.

CUDA, l2: the same policy on tensor cores -- a bf16 WMMA screen of ``|c|^2 - 2 z.c`` (fp32 accumulation),
a threshold of best + the same kind of bound (bf16 rounding, tensor-core sums), every code under it
re-checked in float64 with the CPU's exact distance and tie rule (``csrc/codebook/lookup_bound.h``), all
K codes for a row with more than 32 candidates: the indices and distances equal the CPU's. (Compiled for
sm_80/sm_90a; not yet run on a GPU.) CUDA, cosine: a tiled fp32 kernel on normalised copies, ties to the
lowest index; it can differ from the CPU result only where two codes' distances are within fp32
rounding of each other.

NaN / Inf: an error (``codebook_lookup: expected finite ... values``) naming the first bad row of ``z`` or
``codebook``; so is a squared norm beyond float32 range (l2). On CUDA the check reads back one flag (a
device sync).
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)

_ops = torch.ops.sparseops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_METRICS = ("l2", "cosine")

__all__ = ["codebook_lookup"]


def codebook_lookup(
    z: Tensor, codebook: Tensor, *, metric: str = "l2", return_dist: bool = False, process_group=None
) -> Union[tuple[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Nearest code of every vector of ``z``: the fused, tiled distance + argmin of vector quantisation.

    Args:
        z: ``[..., D]`` float32/float16/bfloat16 (any strides; a non-contiguous ``z`` is copied once).
        codebook: ``[K, D]`` with ``K >= 1``, ``z``'s dtype and device.
        metric: ``"l2"`` (squared Euclidean) or ``"cosine"`` (``1 - cos``; a zero vector has cosine 0 to
            everything, so a zero ``z`` row picks code 0).
        return_dist: also return the distance to the chosen code.
        process_group: a ``torch.distributed`` group over which ``codebook`` is sharded by rows, contiguous
            in rank order (this rank's shard); the indices are then global and the winning vectors come
            from whichever rank owns them (:mod:`sparseops.codebook.sharded`). Every rank passes its own
            ``z`` with the same number of vectors and the same D.

    Returns:
        ``(indices, quantized)`` or ``(indices, quantized, dist)``: ``indices`` int64 ``[...]`` (the nearest
        code, ties to the lowest index), ``quantized = codebook[indices]`` ``[..., D]`` in the codebook's dtype
        (differentiable w.r.t. ``codebook``: its gradient is the deterministic scatter-add
        :func:`sparseops.codebook_grad`; ``z`` gets no gradient here, use :func:`sparseops.vq_ste`), ``dist``
        float32 ``[...]`` (no gradient; compute ``((z - quantized) ** 2).sum(-1)`` for a differentiable one).

    The precision and NaN/Inf policy are in this module's docstring. Extra memory (CPU): O(N + K) (norms,
    about 88 bytes of candidate state per row and code split), one packed block of codes (fp32, or int16
    / bf16 for the faster screens; at most 16 MiB, shared by the threads; before it, the int16 screen's
    probe packs <= 2 MiB) and per thread <= 256 rows of ``z`` in fp32; the N x K distance matrix is
    never formed. In few dimensions (l2, D <= 10, K >= 65536, N >= max(2048, K / 128); bf16 with
    AVX-512: D <= 8, N >= max(8192, K / 32)) the CPU instead builds a k-d tree over the codes and skips
    the leaves that cannot hold the answer, with the same result bit for bit: at its peak it holds two
    fp32 copies of the codebook while building (K x D each, plus a third for fp16 / bf16 inputs), then
    one packed for the scan, and the tree (at most K / 16 floats per dimension): ~24 MiB at K = 262144,
    D = 8, fp32. ``SPARSEOPS_CODEBOOK_TREE=0`` / ``=1`` turns it off / on for every l2 lookup. CUDA l2:
    bf16 copies of ``z`` and the codebook plus O(N + K); cosine: fp32 normalised copies.
    """
    if not isinstance(z, Tensor) or not isinstance(codebook, Tensor):
        raise TypeError(f"codebook_lookup: expected z and codebook to be tensors (got {type(z).__name__}, "
                        f"{type(codebook).__name__})")
    if metric not in _METRICS:
        raise ValueError(f"codebook_lookup: expected metric to be \"l2\" or \"cosine\" (got {metric!r})")
    if z.dim() < 1:
        raise ValueError("codebook_lookup: expected z to have at least 1 dimension (got a 0-D tensor)")
    if codebook.dim() != 2:
        raise ValueError(f"codebook_lookup: expected codebook to be 2-D [K, D] (got shape {tuple(codebook.shape)})")
    if z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"codebook_lookup: expected z.size(-1) == codebook.size(1) (got {z.shape[-1]} vs "
                         f"{codebook.shape[-1]})")
    lead = z.shape[:-1]
    if process_group is not None:
        from .sharded import sharded_codebook_lookup

        quantized, indices, dist = sharded_codebook_lookup(z.reshape(-1, z.shape[-1]), codebook, metric, process_group)
    else:
        quantized, indices, dist = _ops.codebook_lookup(z.reshape(-1, z.shape[-1]), codebook, metric)
    indices = indices.reshape(lead)
    quantized = quantized.reshape(*lead, codebook.shape[-1])
    if return_dist:
        return indices, quantized, dist.reshape(lead)
    return indices, quantized


@torch.library.register_fake("sparseops::codebook_lookup")
def _codebook_lookup_fake(z: Tensor, codebook: Tensor, metric: str = "l2"):
    op = "codebook_lookup"
    torch._check(metric in _METRICS, lambda: f"{op}: expected metric to be \"l2\" or \"cosine\" (got \"{metric}\")")
    torch._check(z.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected z float32/float16/bfloat16 (got {z.dtype})")
    torch._check(codebook.dtype == z.dtype, lambda: f"{op}: expected codebook to have z's dtype {z.dtype} (got {codebook.dtype})")
    torch._check(z.dim() == 2, lambda: f"{op}: expected z to be 2-D (got {z.dim()}-D)")
    torch._check(codebook.dim() == 2, lambda: f"{op}: expected codebook to be 2-D (got {codebook.dim()}-D)")
    torch._check(codebook.device == z.device, lambda: f"{op}: expected codebook on the same device as z ({z.device}), got {codebook.device}")
    torch._check(codebook.shape[0] >= 1, lambda: f"{op}: expected a non-empty codebook (got shape {tuple(codebook.shape)})")
    torch._check(codebook.shape[1] >= 1, lambda: f"{op}: expected codebook.size(1) >= 1 (got {codebook.shape[1]})")
    torch._check(z.shape[1] == codebook.shape[1],
                 lambda: f"{op}: expected z.size(1) == codebook.size(1) (got {z.shape[1]} vs {codebook.shape[1]})")
    n = z.shape[0]
    return (codebook.new_empty((n, codebook.shape[1])), z.new_empty((n,), dtype=torch.int64),
            z.new_empty((n,), dtype=torch.float32))
