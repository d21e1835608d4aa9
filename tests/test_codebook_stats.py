"""codebook_grad (and the lookup's autograd), vq_ste, codebook_usage with perplexity/utilisation, and
codebook_ema_update_: references, determinism, opcheck, torch.compile, bad inputs."""
from __future__ import annotations

import pytest
import torch

import sparseops
from sparseops.reference import codebook_ema_update_ref, codebook_grad_ref, codebook_usage_ref
from conftest import devices

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _skewed_indices(n, k, device="cpu"):
    """Many rows on a few codes (long buckets), some codes unused."""
    idx = torch.randint(0, k, (n,), device=device)
    return torch.where(torch.rand(n, device=device) < 0.5, idx % 3, idx)


# ---- codebook_grad and autograd ------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (7, 33, 5), (257, 16, 64), (1000, 300, 33)])
def test_grad_matches_reference(n, k, d, dtype, device):
    g = torch.randn(n, d, device=device).to(dtype)
    idx = _skewed_indices(n, k, device)
    got = sparseops.codebook_grad(g, idx, k)
    want = codebook_grad_ref(g, idx, k)
    torch.testing.assert_close(got, want, rtol=_TOL[dtype], atol=_TOL[dtype] * 4)
    assert torch.equal(got, sparseops.codebook_grad(g, idx, k))  # deterministic


@pytest.mark.parametrize("device", devices())
def test_lookup_autograd_reaches_codebook(device):
    z = torch.randn(3, 40, 8, device=device)
    c = torch.randn(50, 8, device=device, requires_grad=True)
    idx, q, dist = sparseops.codebook_lookup(z, c, return_dist=True)
    assert not idx.requires_grad and not dist.requires_grad and q.requires_grad
    w = torch.randn_like(q)
    (q * w).sum().backward()
    c_ref = c.detach().clone().requires_grad_()
    (c_ref[idx] * w).sum().backward()
    torch.testing.assert_close(c.grad, c_ref.grad, rtol=1e-5, atol=1e-5)


def test_vq_ste():
    z = torch.randn(4, 6, requires_grad=True)
    c = torch.randn(10, 6, requires_grad=True)
    _, q = sparseops.codebook_lookup(z, c)
    out = sparseops.vq_ste(z, q)
    torch.testing.assert_close(out, q.detach(), rtol=1e-6, atol=1e-6)  # z + (q - z): one rounding off
    out.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z)) and c.grad is None
    with pytest.raises(ValueError, match=r"vq_ste: expected z.shape == quantized.shape \(got \(4, 6\) vs \(4, 5\)\)"):
        sparseops.vq_ste(z, q[:, :5])


def test_grad_bad_inputs():
    g, idx = torch.randn(5, 4), torch.tensor([0, 1, 2, 9, 1])
    with pytest.raises(RuntimeError, match=r"codebook_grad: expected indices in \[0, 8\) \(got 9 at position 3\)"):
        sparseops.codebook_grad(g, idx, 8)
    with pytest.raises(RuntimeError, match=r"codebook_grad: expected indices in \[0, 8\) \(got -1 at position 0\)"):
        torch.ops.sparseops.codebook_grad(g, torch.tensor([-1, 0, 0, 0, 0]), 8)
    with pytest.raises(TypeError, match="codebook_grad: expected indices to be an int64 tensor"):
        sparseops.codebook_grad(g, idx.int(), 10)
    with pytest.raises(ValueError, match=r"codebook_grad: expected indices.shape == grad_quantized.shape\[:-1\]"):
        sparseops.codebook_grad(g, idx[:4], 10)
    with pytest.raises(RuntimeError, match=r"codebook_grad: expected num_codes >= 1 \(got 0\)"):
        torch.ops.sparseops.codebook_grad(g, idx, 0)
    with pytest.raises(TypeError, match=r"codebook_grad: expected grad_quantized to have dtype in .* \(got Int\)"):
        torch.ops.sparseops.codebook_grad(g.int(), idx, 10)


# ---- codebook_usage ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n,k", [(0, 1), (1, 1), (33, 7), (200000, 1000), (5000, 1 << 16)])
def test_usage_matches_bincount(n, k, device):
    idx = _skewed_indices(n, k, device)
    got = sparseops.codebook_usage(idx.reshape(-1, 1) if n else idx, k)
    assert got.dtype == torch.int64 and torch.equal(got, codebook_usage_ref(idx, k))


def test_perplexity_and_utilisation():
    counts = torch.tensor([5, 5, 0, 0])
    assert sparseops.codebook_utilisation(counts).item() == 0.5
    torch.testing.assert_close(sparseops.codebook_perplexity(counts), torch.tensor(2.0))
    torch.testing.assert_close(sparseops.codebook_perplexity(torch.ones(64, dtype=torch.int64)), torch.tensor(64.0))
    assert sparseops.codebook_perplexity(torch.zeros(3, dtype=torch.int64)).item() == 0.0


def test_usage_bad_inputs():
    with pytest.raises(RuntimeError, match=r"codebook_usage: expected indices in \[0, 4\) \(got 4 at position 70001\)"):
        idx = torch.zeros(200000, dtype=torch.int64)
        idx[70001] = 4
        idx[150000] = 7
        sparseops.codebook_usage(idx, 4)
    with pytest.raises(TypeError, match="codebook_usage: expected indices to be an int64 tensor"):
        sparseops.codebook_usage(torch.zeros(3), 4)
    with pytest.raises(RuntimeError, match=r"codebook_usage: expected num_codes >= 1 \(got 0\)"):
        sparseops.codebook_usage(torch.zeros(3, dtype=torch.int64), 0)


# ---- codebook_ema_update_ --------------------------------------------------------------------------


def _ema_state(k, d, dtype, device):
    codebook = torch.randn(k, d, device=device).to(dtype)
    cluster_size = torch.rand(k, device=device) * 3
    embed_sum = codebook.float() * cluster_size[:, None]
    return codebook, cluster_size, embed_sum


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (33, 7, 5), (500, 64, 33)])
def test_ema_update_matches_reference(n, k, d, dtype, device):
    codebook, cluster_size, embed_sum = _ema_state(k, d, dtype, device)
    z = torch.randn(n, d, device=device).to(dtype)
    idx = _skewed_indices(n, k, device)
    want = codebook_ema_update_ref(codebook, cluster_size, embed_sum, z, idx, 0.9, 1e-5)
    sparseops.codebook_ema_update_(codebook, cluster_size, embed_sum, z, idx, decay=0.9, eps=1e-5)
    tol = _TOL[dtype]
    torch.testing.assert_close(cluster_size, want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embed_sum, want[2], rtol=max(tol, 1e-5), atol=max(tol, 1e-5) * 4)
    torch.testing.assert_close(codebook, want[0], rtol=tol * 2, atol=tol * 8)


def test_ema_update_bad_inputs():
    codebook, cluster_size, embed_sum = _ema_state(8, 4, torch.float32, "cpu")
    z, idx = torch.randn(5, 4), torch.tensor([0, 1, 8, 2, 3])
    op = torch.ops.sparseops.codebook_ema_update_
    with pytest.raises(RuntimeError, match=r"codebook_ema_update_: expected indices in \[0, 8\) \(got 8 at position 2\)"):
        op(codebook, cluster_size, embed_sum, z, idx, 0.9, 1e-5)
    idx[2] = 0
    with pytest.raises(RuntimeError, match="codebook_ema_update_: expected codebook to be contiguous"):
        op(torch.randn(4, 8).T, cluster_size, embed_sum, z, idx, 0.9, 1e-5)
    with pytest.raises(RuntimeError, match=r"codebook_ema_update_: expected 0 <= decay <= 1 \(got 1.5\)"):
        op(codebook, cluster_size, embed_sum, z, idx, 1.5, 1e-5)
    with pytest.raises(RuntimeError, match=r"codebook_ema_update_: expected eps > 0 and finite \(got 0\)"):
        op(codebook, cluster_size, embed_sum, z, idx, 0.9, 0.0)
    with pytest.raises(TypeError, match=r"codebook_ema_update_: expected cluster_size to have dtype in \{Float\} \(got Double\)"):
        op(codebook, cluster_size.double(), embed_sum, z, idx, 0.9, 1e-5)
    with pytest.raises(RuntimeError, match=r"codebook_ema_update_: expected z.size\(1\) == codebook.size\(1\) \(got 3 vs 4\)"):
        op(codebook, cluster_size, embed_sum, z[:, :3], idx, 0.9, 1e-5)
    with pytest.raises(ValueError, match=r"codebook_ema_update_: expected indices.shape == z.shape\[:-1\]"):
        sparseops.codebook_ema_update_(codebook, cluster_size, embed_sum, z, idx[:3])


# ---- opcheck and torch.compile -----------------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_grad_opcheck(requires_grad):
    for dtype in DTYPES:
        g = torch.randn(20, 6).to(dtype).requires_grad_(requires_grad)
        torch.library.opcheck(torch.ops.sparseops.codebook_grad, (g, _skewed_indices(20, 9), 9))


def test_usage_opcheck():
    torch.library.opcheck(torch.ops.sparseops.codebook_usage, (_skewed_indices(50, 9), 9))
    torch.library.opcheck(torch.ops.sparseops.codebook_usage, (_skewed_indices(12, 3).reshape(3, 4), 5))


def test_ema_update_opcheck():
    for dtype in DTYPES:
        codebook, cluster_size, embed_sum = _ema_state(9, 5, dtype, "cpu")
        args = (codebook, cluster_size, embed_sum, torch.randn(30, 5).to(dtype), _skewed_indices(30, 9), 0.95, 1e-5)
        torch.library.opcheck(torch.ops.sparseops.codebook_ema_update_, args)


def test_stats_compile():
    @torch.compile(fullgraph=True)
    def step(z, codebook, cluster_size, embed_sum):
        idx, q = sparseops.codebook_lookup(z, codebook)
        counts = sparseops.codebook_usage(idx, codebook.shape[0])
        g = sparseops.codebook_grad(q, idx, codebook.shape[0])
        sparseops.codebook_ema_update_(codebook, cluster_size, embed_sum, z, idx, decay=0.9)
        return sparseops.vq_ste(z, q), counts, g, sparseops.codebook_perplexity(counts), sparseops.codebook_utilisation(counts)

    codebook, cluster_size, embed_sum = _ema_state(16, 4, torch.float32, "cpu")
    state = [t.clone() for t in (codebook, cluster_size, embed_sum)]
    z = torch.randn(40, 4)
    got = step(z, *state)
    idx, q = sparseops.codebook_lookup(z, codebook)
    counts = sparseops.codebook_usage(idx, 16)
    assert torch.equal(got[1], counts) and torch.equal(got[2], sparseops.codebook_grad(q, idx, 16))
    sparseops.codebook_ema_update_(codebook, cluster_size, embed_sum, z, idx, decay=0.9)
    assert torch.equal(state[0], codebook) and torch.equal(state[1], cluster_size)
