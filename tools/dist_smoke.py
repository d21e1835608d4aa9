"""Smoke test of an installed sparseops, run from outside the source tree (tools/check_dist.sh): the
package imports from site-packages (not a checkout), its build matches the running torch, its wheel
metadata pins that torch, and one small call of every op family runs and agrees with plain torch."""
from __future__ import annotations

import importlib.metadata
import os
import sys

import torch

import sparseops


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"dist_smoke: FAILED: {what}")
    print(f"dist_smoke: ok: {what}")


def main() -> None:
    where = os.path.dirname(sparseops.__file__)
    check("site-packages" in where, f"sparseops imported from an installation ({where})")
    info = sparseops.build_info()
    check(info["torch_built_against"] == torch.__version__, f"built against the running torch {torch.__version__}")
    requires = importlib.metadata.requires("sparseops") or []
    public = torch.__version__.split("+")[0]
    if "--pinned" in sys.argv:
        check(f"torch=={public}" in requires, f"metadata requires torch=={public} (got {requires})")

    # sparse24: compress, linear (forward + backward), the SR-STE training op.
    w = torch.randn(64, 128)
    s = sparseops.compress_24(w, prune=True)
    x = torch.randn(3, 128, requires_grad=True)
    y = sparseops.sparse24_linear(x, s)
    torch.testing.assert_close(y, x @ sparseops.decompress_24(s).t(), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    check(x.grad is not None and x.grad.shape == x.shape, "sparse24: compress_24, sparse24_linear forward + backward")
    masked, mask = torch.ops.sparseops.nm_srste(w, 2, 4)
    check(bool(mask.sum() == w.numel() // 2), "sparse24: nm_srste")

    # attention: causal block-sparse attention with every causal block kept equals causal SDPA.
    q, k, v = (torch.randn(1, 2, 40, 32, requires_grad=True) for _ in range(3))
    out = sparseops.block_sparse_attention(q, k, v, sparseops.causal_block_mask(40, 40, 16), causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    check(q.grad is not None, "attention: block_sparse_attention forward + backward")

    # codebook: the fused lookup finds the same nearest codes as a dense distance matrix.
    z, book = torch.randn(50, 16), torch.randn(300, 16)
    indices, quantized = sparseops.codebook_lookup(z, book)[:2]
    check(torch.equal(indices, torch.cdist(z, book).argmin(1)) and torch.equal(quantized, book[indices]),
          "codebook: codebook_lookup")

    # ot: balanced Sinkhorn meets both marginals.
    a = torch.full((1, 20), 1 / 20, dtype=torch.float64)
    b = torch.full((1, 30), 1 / 30, dtype=torch.float64)
    res = sparseops.ot.sinkhorn(a, b, torch.rand(20, 30, dtype=torch.float64), 0.1, tol=1e-9)
    plan = res.plan()
    torch.testing.assert_close(plan.sum(-1), a, rtol=0, atol=1e-8)
    torch.testing.assert_close(plan.sum(-2), b, rtol=0, atol=1e-8)
    check(bool(res.converged.all()), "ot: sinkhorn")


if __name__ == "__main__":
    main()
