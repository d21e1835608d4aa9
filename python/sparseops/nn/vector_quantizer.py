"""``VectorQuantizer``: a VQ layer on sparseops' fused nearest-code lookup (no N x K distance matrix),
with the straight-through estimator, a commitment loss, optional EMA codebook updates, dead-code revival
and an optional projector applied to the codebook before the lookup (FVQ / VQBridge: "Scalable Training
for Vector-Quantized Networks with 100% Codebook Utilization")."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..codebook import codebook_ema_update_, codebook_lookup, codebook_usage, vq_ste

__all__ = ["VQOutput", "VectorQuantizer"]


class VQOutput(NamedTuple):
    quantized: Tensor  # [..., D]: the codes, with z's gradient (straight-through)
    indices: Tensor    # int64 [...]
    loss: Tensor       # scalar: commitment_weight * |z - sg(q)|^2 (+ |sg(z) - q|^2 without EMA)


class VectorQuantizer(nn.Module):
    """Vector quantisation of the last dim of its input.

    Args:
        dim: code dimension D.
        codebook_size: number of codes K.
        metric: ``"l2"`` or ``"cosine"`` (nearest by cosine; the quantized vectors are the raw codes).
        commitment_weight: weight of ``mean((z - sg(q))^2)`` in the loss.
        ema: update the codebook by exponential moving averages of assigned inputs
            (:func:`sparseops.codebook_ema_update_`, in training mode) instead of by gradient; the codebook
            is then a buffer. Not combinable with ``projector``.
        decay, eps: EMA decay (also of the usage statistics) and Laplace smoothing.
        dead_code_threshold: in training mode, codes whose usage EMA (expected assignments per batch, over
            the previous batches) is below this value are re-seeded with random inputs of the current batch
            at the start of the forward (0: off). No host sync: a masked ``torch.where`` over the codebook.
        projector: optional module mapping the raw codebook ``[K, D]`` to the one used for the lookup
            (e.g. ``nn.Linear(D, D)``): every code then moves with the projector's gradient, which keeps
            all codes in use (FVQ's VQBridge idea). Revived codes are seeded in the raw space.

    ``forward(z)`` returns :class:`VQOutput` ``(quantized, indices, loss)``. Memory: the lookup needs
    O(N + K) beyond its outputs; the codebook gradient is a deterministic scatter-add.
    """

    def __init__(self, dim: int, codebook_size: int, *, metric: str = "l2", commitment_weight: float = 0.25,
                 ema: bool = False, decay: float = 0.99, eps: float = 1e-5, dead_code_threshold: float = 0.0,
                 projector: Optional[nn.Module] = None) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 1:
            raise ValueError(f"VectorQuantizer: expected dim >= 1 and codebook_size >= 1 (got {dim}, {codebook_size})")
        if metric not in ("l2", "cosine"):
            raise ValueError(f"VectorQuantizer: expected metric to be \"l2\" or \"cosine\" (got {metric!r})")
        if ema and projector is not None:
            raise ValueError("VectorQuantizer: expected ema=False when a projector is given (EMA moves the raw codes "
                             "to the inputs' means, which the projector would then move again)")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"VectorQuantizer: expected 0 <= decay <= 1 (got {decay})")
        if dead_code_threshold < 0:
            raise ValueError(f"VectorQuantizer: expected dead_code_threshold >= 0 (got {dead_code_threshold})")
        self.dim, self.codebook_size, self.metric = dim, codebook_size, metric
        self.commitment_weight, self.ema, self.decay, self.eps = commitment_weight, ema, decay, eps
        self.dead_code_threshold = dead_code_threshold
        self.projector = projector
        embed = torch.randn(codebook_size, dim)
        if ema:
            self.register_buffer("embed", embed)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        # Expected assignments per batch, per code (EMA): the dead-code test.
        self.register_buffer("usage", torch.ones(codebook_size))

    def codebook(self) -> Tensor:
        """The codebook the lookup uses: ``projector(embed)`` or ``embed``."""
        return self.projector(self.embed) if self.projector is not None else self.embed

    def forward(self, z: Tensor) -> VQOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer: expected z.size(-1) == dim={self.dim} (got {z.shape[-1]})")
        flat = z.reshape(-1, self.dim)
        if self.training and self.dead_code_threshold > 0 and flat.shape[0] > 0:
            # Before the lookup, so that no tensor autograd saved (e.g. the projector's input) changes.
            self._revive(flat.detach())
        codebook = self.codebook()
        indices, q = codebook_lookup(flat.detach().to(codebook.dtype), codebook, metric=self.metric)
        q = q.to(z.dtype)
        if self.training:
            self._update_statistics(flat.detach(), indices)
        loss = self.commitment_weight * F.mse_loss(flat, q.detach())
        if not self.ema:
            loss = loss + F.mse_loss(q, flat.detach())
        return VQOutput(vq_ste(flat, q).reshape(z.shape), indices.reshape(z.shape[:-1]), loss)

    @torch.no_grad()
    def _update_statistics(self, flat: Tensor, indices: Tensor) -> None:
        counts = codebook_usage(indices, self.codebook_size).to(self.usage.dtype)
        self.usage.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.ema:
            codebook_ema_update_(self.embed, self.cluster_size, self.embed_sum, flat.to(self.embed.dtype), indices,
                                 decay=self.decay, eps=self.eps)

    @torch.no_grad()
    def _revive(self, flat: Tensor) -> None:
        dead = self.usage < self.dead_code_threshold
        seeds = flat[torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)].to(self.embed.dtype)
        self.embed.copy_(torch.where(dead[:, None], seeds, self.embed))
        self.usage.copy_(torch.where(dead, torch.ones_like(self.usage), self.usage))
        if self.ema:
            self.cluster_size.copy_(torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size))
            self.embed_sum.copy_(torch.where(dead[:, None], seeds.float(), self.embed_sum))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, metric={self.metric!r}, ema={self.ema}, "
                f"commitment_weight={self.commitment_weight}, dead_code_threshold={self.dead_code_threshold}")
