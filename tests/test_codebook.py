"""codebook_lookup: the exact nearest code (float64 re-check) against the float64 reference, near-ties
the expanded form mis-orders, exact ties, awkward shapes, opcheck, torch.compile and bad inputs."""
from __future__ import annotations

import pytest
import torch

import sparseops
from sparseops.reference import codebook_lookup_ref
from conftest import devices

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1), (7, 33, 5), (33, 7, 8), (257, 1000, 64), (40, 300, 257), (9, 65, 1024), (300, 5000, 3)]


def _exact_dist(z, c, metric):
    """float64 distance of each row of z to the same row of c."""
    z, c = z.double(), c.double()
    if metric == "cosine":
        return 1 - (z * c).sum(1) / (z.norm(dim=1).clamp_min(1e-12) * c.norm(dim=1).clamp_min(1e-12))
    return ((z - c) ** 2).sum(1)


def _inputs(n, k, d, dtype, device="cpu"):
    return torch.randn(n, d, device=device).to(dtype), torch.randn(k, d, device=device).to(dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_lookup_matches_reference(n, k, d, dtype, metric, device):
    z, c = _inputs(n, k, d, dtype, device)
    idx, q, dist = sparseops.codebook_lookup(z, c, metric=metric, return_dist=True)
    ref_idx, ref_q, ref_dist = codebook_lookup_ref(z, c, metric)
    assert idx.dtype == torch.int64 and q.dtype == dtype and dist.dtype == torch.float32
    if device == "cpu" or metric == "l2":  # exact: the float64 re-check (CUDA l2: after the tensor-core screen)
        torch.testing.assert_close(idx, ref_idx.to(device), rtol=0, atol=0)
        torch.testing.assert_close(dist, ref_dist.to(device), rtol=1e-6, atol=1e-6)
    else:  # CUDA cosine, fp32 direct form: the chosen code is the best up to fp32 rounding of the distances
        chosen = _exact_dist(z, c[idx], metric)
        scale = 1e-5 * d * (1.0 if metric == "cosine" else float((z.double() ** 2).sum(1).max() + (c.double() ** 2).sum(1).max()))
        assert (chosen <= ref_dist.double() + scale).all()
        torch.testing.assert_close(dist.double(), chosen, rtol=0, atol=scale)
    torch.testing.assert_close(q, c[idx], rtol=0, atol=0)


def test_lookup_leading_dims_and_noncontiguous():
    z = torch.randn(3, 5, 16).transpose(0, 1)  # [5, 3, 16], not contiguous
    c = torch.randn(40, 32)[:, ::2]             # [40, 16], strided
    idx, q = sparseops.codebook_lookup(z, c)
    ref_idx, _, _ = codebook_lookup_ref(z.reshape(-1, 16), c)
    assert idx.shape == (5, 3) and q.shape == (5, 3, 16)
    assert torch.equal(idx.reshape(-1), ref_idx)
    assert torch.equal(q, c[idx])


@pytest.mark.parametrize("d", [4, 64])
@pytest.mark.parametrize("crowd", [2, 30])
def test_lookup_near_ties_far_from_origin(d, crowd):
    """Codes crowded around a point far from the origin: |c|^2 - 2 z.c cancels ~12 digits, so fp32
    mis-orders the expanded form; the float64 re-check still finds the exact winner. crowd=30 puts more
    codes within the error bound than there are candidate slots: the spill buffer's path."""
    gen = torch.Generator().manual_seed(3)
    center = torch.full((d,), 1000.0)
    c = torch.cat([center + 1e-2 * torch.randn(crowd, d, generator=gen), torch.randn(50, d, generator=gen)])
    c = c[torch.randperm(c.shape[0], generator=gen)]
    z = center + 1e-2 * torch.randn(20, d, generator=gen)
    idx, _, dist = sparseops.codebook_lookup(z, c, return_dist=True)
    ref_idx, _, ref_dist = codebook_lookup_ref(z, c)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-6, atol=0)
    # the expanded form in fp32 does get some of these wrong (what the re-check is for)
    naive = ((c.pow(2).sum(1)[None] - 2 * z @ c.T)).argmin(1)
    assert (naive != ref_idx).any() or crowd == 2


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_lookup_cuda_l2_equals_cpu(dtype):
    """CUDA l2 (bf16 tensor-core screen + the same exact re-check) gives the CPU's indices and distances
    bit for bit: random codes, near-ties far from the origin, more near-identical codes than the 32
    candidate slots (the all-codes re-check), N/K/D off the 64/64/16 tiles."""
    gen = torch.Generator().manual_seed(13)
    center = torch.full((40,), 300.0)
    p = torch.randn(33, generator=gen)
    cases = [
        (torch.randn(100, 72, generator=gen), torch.randn(5000, 72, generator=gen)),
        (center + 1e-2 * torch.randn(20, 40, generator=gen),
         torch.cat([center + 1e-2 * torch.randn(50, 40, generator=gen), torch.randn(70, 40, generator=gen)])),
        (p + 1e-3 * torch.randn(9, 33, generator=gen),
         torch.cat([torch.randn(200, 33, generator=gen), p + 1e-4 * torch.randn(100, 33, generator=gen), p.expand(40, 33)])),
        (torch.randn(1, 5, generator=gen), torch.randn(3, 5, generator=gen)),
    ]
    for z, c in cases:
        z, c = z.to(dtype), c.to(dtype)
        idx, _, dist = sparseops.codebook_lookup(z, c, return_dist=True)
        cidx, _, cdist = sparseops.codebook_lookup(z.cuda(), c.cuda(), return_dist=True)
        assert torch.equal(cidx.cpu(), idx) and torch.equal(cdist.cpu(), dist)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [64, 200])
def test_lookup_rounded_screen_near_ties(d, dtype):
    """A centred codebook with D >= 64 is screened with bf16-rounded z and c on AVX-512 BF16 CPUs (fp32
    elsewhere): codes 0.02 apart around a point are mis-ordered by bf16 rounding, yet the margin keeps
    them all as candidates and the exact re-check picks the winner."""
    gen = torch.Generator().manual_seed(11)
    p = torch.randn(d, generator=gen)
    c = torch.cat([torch.randn(3000, d, generator=gen), p + 0.02 * torch.randn(40, d, generator=gen)])
    c = c[torch.randperm(c.shape[0], generator=gen)].to(dtype)
    z = (p + 0.02 * torch.randn(25, d, generator=gen)).to(dtype)
    idx, _, dist = sparseops.codebook_lookup(z, c, return_dist=True)
    ref_idx, _, ref_dist = codebook_lookup_ref(z, c)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-6, atol=0)
    zb, cb = z.bfloat16().double(), c.bfloat16().double()
    naive = (c.double().pow(2).sum(1)[None] - 2 * zb @ cb.T).argmin(1)
    assert (naive != ref_idx).any()  # bf16 rounding alone gets some wrong (what the margin is for)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lookup_duplicates_beyond_the_spill_buffer(dtype):
    """40000 copies of one code (more codes within a row's bound than the spill buffer holds: the re-scan
    of the task's packed codes) among near-identical and random ones: still the exact winner, and of the
    copies the lowest index."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(4, generator=gen)
    near = base + 1e-4 * torch.randn(300, 4, generator=gen)
    c = torch.cat([torch.randn(100, 4, generator=gen), base.expand(40000, 4), near]).to(dtype)
    z = torch.cat([base + 1e-3 * torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)]).to(dtype)
    idx, _, dist = sparseops.codebook_lookup(z, c, return_dist=True)
    ref_idx, _, ref_dist = codebook_lookup_ref(z, c)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-6, atol=0)
    assert ((idx < 100) | (idx == 100) | (idx >= 40100)).all()  # a copy wins only as the first copy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lookup_near_ties_low_precision(dtype):
    """bf16 / fp16 codes on a coarse grid far from the origin (the AVX-512 bf16 path ranks with VDPBF16PS):
    many exact ties and near-ties, still the exact winner with the lowest index."""
    gen = torch.Generator().manual_seed(5)
    d = 48
    c = (64 + 0.25 * torch.randint(-3, 4, (300, d), generator=gen)).to(dtype)
    z = (64 + 0.25 * torch.randint(-3, 4, (70, d), generator=gen) + 0.125).to(dtype)
    idx, _, dist = sparseops.codebook_lookup(z, c, return_dist=True)
    ref_idx, _, ref_dist = codebook_lookup_ref(z, c)
    assert torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_lookup_exact_ties_pick_lowest_index(metric):
    c = torch.randn(37, 12)
    cb = torch.cat([c, c, c])          # every code three times
    z = torch.cat([torch.randn(50, 12), c[:5]])
    idx, _ = sparseops.codebook_lookup(z, cb, metric=metric)
    assert (idx < 37).all()
    # symmetric ties: z at the midpoint of two codes
    cb2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    idx2, _ = sparseops.codebook_lookup(torch.tensor([[0.0, -5.0], [0.0, 0.0]]), cb2)
    assert idx2.tolist() == [0, 0]


def test_lookup_cosine_zero_vectors():
    c = torch.cat([torch.zeros(1, 8), torch.randn(20, 8)])
    z = torch.cat([torch.zeros(1, 8), torch.randn(10, 8), 1e-14 * torch.randn(2, 8)])  # tiny: x / max(|x|, 1e-12)
    idx, _, dist = sparseops.codebook_lookup(z, c, metric="cosine", return_dist=True)
    ref_idx, _, ref_dist = codebook_lookup_ref(z, c, "cosine")
    assert idx[0].item() == 0 and dist[0].item() == 1.0
    assert torch.equal(idx, ref_idx)


def test_lookup_k1_and_empty_z():
    c = torch.randn(1, 6)
    idx, q = sparseops.codebook_lookup(torch.randn(4, 6), c)
    assert idx.tolist() == [0, 0, 0, 0] and torch.equal(q, c.expand(4, 6))
    idx, q, dist = sparseops.codebook_lookup(torch.randn(0, 6), c, return_dist=True)
    assert idx.shape == (0,) and q.shape == (0, 6) and dist.shape == (0,)


def test_lookup_many_codes_few_rows():
    """K much larger than N: the code range is split across threads and the candidates merged."""
    z, c = _inputs(3, 70000, 8, torch.float32)
    idx, _ = sparseops.codebook_lookup(z, c)
    assert torch.equal(idx, codebook_lookup_ref(z, c)[0])


def test_lookup_large_codebook_small_d():
    z, c = _inputs(16, 1 << 20, 2, torch.float32)
    idx, _ = sparseops.codebook_lookup(z, c)
    assert torch.equal(idx, codebook_lookup_ref(z, c)[0])


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["z", "codebook"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 3e38])
def test_lookup_rejects_non_finite(where, bad):
    z, c = torch.randn(10, 4), torch.randn(20, 4)
    (z if where == "z" else c)[3, 1] = bad
    row = "in row 3 of z" if where == "z" else "in codebook row 3"
    with pytest.raises(RuntimeError, match=f"codebook_lookup: expected finite {where} values .*{row}"):
        sparseops.codebook_lookup(z, c)


def test_lookup_bad_inputs():
    z, c = torch.randn(4, 8), torch.randn(16, 8)
    with pytest.raises(ValueError, match=r"codebook_lookup: expected z.size\(-1\) == codebook.size\(1\) \(got 8 vs 7\)"):
        sparseops.codebook_lookup(z, torch.randn(16, 7))
    with pytest.raises(RuntimeError, match=r"codebook_lookup: expected z.size\(1\) == codebook.size\(1\) \(got 8 vs 7\)"):
        torch.ops.sparseops.codebook_lookup(z, torch.randn(16, 7))
    with pytest.raises(RuntimeError, match=r"codebook_lookup: expected a non-empty codebook \(got codebook of shape \[0, 8\]\)"):
        sparseops.codebook_lookup(z, torch.randn(0, 8))
    with pytest.raises(TypeError, match=r"codebook_lookup: expected z to have dtype in \{Float, Half, BFloat16\} \(got Long\)"):
        sparseops.codebook_lookup(z.long(), c.long())
    with pytest.raises(TypeError, match=r"codebook_lookup: expected codebook to have z's dtype Float \(got BFloat16\)"):
        sparseops.codebook_lookup(z, c.bfloat16())
    with pytest.raises(ValueError, match="codebook_lookup: expected metric to be \"l2\" or \"cosine\" \\(got 'dot'\\)"):
        sparseops.codebook_lookup(z, c, metric="dot")
    with pytest.raises(RuntimeError, match="codebook_lookup: expected metric to be \"l2\" or \"cosine\" \\(got \"dot\"\\)"):
        torch.ops.sparseops.codebook_lookup(z, c, "dot")
    with pytest.raises(ValueError, match=r"codebook_lookup: expected codebook to be 2-D \[K, D\] \(got shape \(16,\)\)"):
        sparseops.codebook_lookup(z, c[:, 0])
    with pytest.raises(RuntimeError, match="codebook_lookup: expected z to be 2-D \\(got 3-D"):
        torch.ops.sparseops.codebook_lookup(z[None], c)
    with pytest.raises(RuntimeError, match="codebook_lookup: expected codebook on the same device as z"):
        sparseops.codebook_lookup(z, c.to("meta"))


# ---- opcheck and torch.compile --------------------------------------------------------------------


def _lookup_samples():
    for dtype in DTYPES:
        for metric in ("l2", "cosine"):
            z, c = _inputs(9, 40, 5, dtype)
            yield z, c, metric


@pytest.mark.parametrize("requires_grad", [False, True])
def test_lookup_opcheck(requires_grad):
    for z, c, metric in _lookup_samples():
        c.requires_grad_(requires_grad)
        torch.library.opcheck(torch.ops.sparseops.codebook_lookup, (z, c, metric))


def test_lookup_compiles():
    fn = torch.compile(lambda z, c: sparseops.codebook_lookup(z, c, return_dist=True), fullgraph=True)
    z, c = _inputs(12, 50, 7, torch.float32)
    for got, want in zip(fn(z, c), sparseops.codebook_lookup(z, c, return_dist=True)):
        assert torch.equal(got, want)
