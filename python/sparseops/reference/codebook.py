"""References for the codebook (vector quantisation) ops: plain torch, float64, readable first."""
from __future__ import annotations

import torch
from torch import Tensor


def codebook_lookup_ref(z: Tensor, codebook: Tensor, metric: str = "l2") -> tuple[Tensor, Tensor, Tensor]:
    """(indices, quantized, dist) for z [N, D]: the exact distances in float64, direct form (z - c)^2 (or
    1 - cos with x / max(|x|, 1e-12)), computed over chunks of codes; ties to the lowest index."""
    z64, c64 = z.double(), codebook.double()
    n, d = z64.shape
    if metric == "cosine":
        z64 = z64 / z64.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c64 = c64 / c64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = torch.full((n,), float("inf"), dtype=torch.float64, device=z.device)
    best_idx = torch.zeros(n, dtype=torch.int64, device=z.device)
    chunk = max(1, (1 << 22) // max(1, n * d))
    for k0 in range(0, c64.shape[0], chunk):
        c = c64[k0:k0 + chunk]
        if metric == "cosine":
            dist = 1.0 - z64 @ c.T
        else:
            dist = ((z64[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        val, idx = dist.min(dim=1)  # the first minimum: lowest index within the chunk
        better = val < best         # strict: earlier chunks win ties
        best = torch.where(better, val, best)
        best_idx = torch.where(better, idx + k0, best_idx)
    return best_idx, codebook[best_idx], best.float()


def codebook_grad_ref(grad_quantized: Tensor, indices: Tensor, num_codes: int) -> Tensor:
    """grad_codebook[k] = sum of grad_quantized rows i with indices[i] == k (float64 sum, cast back)."""
    out = torch.zeros(num_codes, grad_quantized.shape[1], dtype=torch.float64, device=grad_quantized.device)
    out.index_add_(0, indices, grad_quantized.double())
    return out.to(grad_quantized.dtype)


def codebook_usage_ref(indices: Tensor, num_codes: int) -> Tensor:
    """How many times each code is used: int64 [num_codes]."""
    return torch.bincount(indices.reshape(-1), minlength=num_codes)


def codebook_ema_update_ref(codebook: Tensor, cluster_size: Tensor, embed_sum: Tensor, z: Tensor, indices: Tensor,
                            decay: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The EMA codebook update (van den Oord et al. 2017, with Laplace smoothing), out of place:
    cluster_size' = decay cluster_size + (1 - decay) counts; embed_sum' = decay embed_sum + (1 - decay) sums;
    codebook' = embed_sum' / ((cluster_size' + eps) / (n + K eps) n), n = sum(cluster_size')."""
    k = codebook.shape[0]
    counts = torch.bincount(indices, minlength=k).double()
    sums = torch.zeros(k, z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, indices, z.double())
    cs = decay * cluster_size.double() + (1 - decay) * counts
    es = decay * embed_sum.double() + (1 - decay) * sums
    n = cs.sum()
    smoothed = (cs + eps) / (n + k * eps) * n
    return (es / smoothed[:, None]).to(codebook.dtype), cs.float(), es.float()
