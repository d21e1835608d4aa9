"""nm_mask, compress_24, decompress_24 against the pure-torch references, on every device."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import sparseops
from sparseops.reference import compress_24_ref, decompress_24_ref, nm_mask_ref

from conftest import devices

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def two_four(rows: int, cols: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A random matrix that is exactly 2:4 sparse, including groups with fewer than 2 non-zeros."""
    w = torch.randn(rows, cols, device=device).to(dtype)
    w = w * nm_mask_ref(w, 2, 4)
    w[::3, :4] = 0  # some groups with no non-zero at all
    return w


# ---- nm_mask -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 16), (1, 2)])
@pytest.mark.parametrize("shape", [(1, 16), (7, 48), (33, 16), (3, 5, 32)])
def test_nm_mask_matches_reference(device, dtype, n, m, shape):
    w = torch.randn(shape, device=device).to(dtype)
    got = sparseops.nm_mask(w, n, m)
    assert got.dtype == torch.bool and got.shape == w.shape
    assert torch.equal(got, nm_mask_ref(w, n, m))
    assert torch.equal(got.reshape(-1, m).sum(-1), torch.full((w.numel() // m,), n, device=device))


@pytest.mark.parametrize("device", devices())
def test_nm_mask_ties_go_to_lower_index(device):
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0, -3.0, 2.0]], device=device)
    got = sparseops.nm_mask(w, 2, 4)
    expected = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0]], dtype=torch.bool, device=device)
    assert torch.equal(got, expected)
    # Many exact ties (small integers): still identical to the stable-sort reference.
    w = torch.randint(-2, 3, (64, 64), device=device).float()
    assert torch.equal(sparseops.nm_mask(w, 2, 4), nm_mask_ref(w, 2, 4))


@pytest.mark.parametrize("device", devices())
def test_nm_mask_score_and_noncontiguous(device):
    w = torch.randn(32, 24, device=device)
    score = torch.randn(24, 32, device=device).t()  # non-contiguous
    assert torch.equal(sparseops.nm_mask(w, 2, 4, score=score), nm_mask_ref(w, 2, 4, score))
    wt = torch.randn(24, 32, device=device).t()
    assert torch.equal(sparseops.nm_mask(wt, 2, 4), nm_mask_ref(wt, 2, 4))
    inf = torch.tensor([[float("inf"), 1.0, float("-inf"), 2.0]], device=device)
    assert torch.equal(sparseops.nm_mask(inf, 2, 4), torch.tensor([[True, False, True, False]], device=device))


@pytest.mark.parametrize("device", devices())
def test_nm_mask_empty(device):
    assert sparseops.nm_mask(torch.empty(0, 8, device=device)).shape == (0, 8)
    assert sparseops.nm_mask(torch.empty(5, 0, device=device)).shape == (5, 0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(w=torch.randn(4, 8), n=2, m=1), RuntimeError, r"nm_mask: expected 2 <= m <= 16 \(got m=1\)"),
        (dict(w=torch.randn(4, 34), n=2, m=17), RuntimeError, r"nm_mask: expected 2 <= m <= 16"),
        (dict(w=torch.randn(4, 8), n=4, m=4), RuntimeError, r"nm_mask: expected 1 <= n < m \(got n=4, m=4\)"),
        (dict(w=torch.randn(4, 8), n=0, m=4), RuntimeError, r"nm_mask: expected 1 <= n < m"),
        (dict(w=torch.randn(4, 10), n=2, m=4), RuntimeError, r"nm_mask: expected w.size\(-1\) to be divisible by m=4 \(got 10\)"),
        (dict(w=torch.ones(4, 8, dtype=torch.int32), n=2, m=4), TypeError, r"nm_mask: expected w to have dtype in"),
        (dict(w=torch.randn(()), n=2, m=4), RuntimeError, r"nm_mask: expected w to have at least 1 dimension"),
        (dict(w=torch.randn(4, 8), n=2, m=4, score=torch.randn(4, 4)), RuntimeError, r"nm_mask: expected score.shape == w.shape"),
    ],
)
def test_nm_mask_bad_input(kwargs, exc, match):
    w = kwargs.pop("w")
    with pytest.raises(exc, match=match):
        sparseops.nm_mask(w, **kwargs)


@pytest.mark.parametrize("device", devices())
def test_nm_mask_nan_is_an_error(device):
    w = torch.randn(4, 8, device=device)
    w[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match=r"nm_mask: w contains NaN \(first in the group starting at flat index 20\)"):
        sparseops.nm_mask(w)
    with pytest.raises(RuntimeError, match=r"nm_mask: score contains NaN"):
        sparseops.nm_mask(torch.randn(4, 8, device=device), score=w)


# ---- compress_24 / decompress_24 -----------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4), (7, 12), (33, 36), (64, 256), (5, 260)])
def test_compress_roundtrip_and_reference(device, dtype, shape):
    w = two_four(*shape, dtype=dtype, device=device)
    s = sparseops.compress_24(w)
    values, meta = compress_24_ref(w)
    assert s.layout == "packed" and s.shape == w.shape and s.dtype == dtype
    assert torch.equal(s.values, values) and torch.equal(s.meta, meta)
    assert torch.equal(sparseops.decompress_24(s), w)
    assert torch.equal(decompress_24_ref(s.values, s.meta), w)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_compress_prune_matches_reference(device, dtype):
    w = torch.randn(33, 68, device=device).to(dtype)
    s = sparseops.compress_24(w, prune=True)
    values, meta = compress_24_ref(w, prune=True)
    assert torch.equal(s.values, values) and torch.equal(s.meta, meta)
    assert torch.equal(sparseops.decompress_24(s), w * nm_mask_ref(w, 2, 4))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(32, 32), (64, 128), (96, 96)])
def test_cutlass_layout_matches_torch_conversion(device, dtype, shape):
    """Independent oracle: torch's own CUTLASS metadata reordering (used by to_sparse_semi_structured)."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    w = torch.randn(shape, device=device).to(dtype)
    w = w * nm_mask_ref(w, 2, 4)  # exactly two non-zeros per group: the encoding is then unique
    s = sparseops.compress_24(w, layout="cutlass")
    values, meta = sparse_semi_structured_from_dense_cutlass(w)
    assert s.meta.dtype == torch.int16 and s.meta.shape == (shape[0], shape[1] // 16)
    assert torch.equal(s.values, values) and torch.equal(s.meta, meta)
    assert torch.equal(sparseops.decompress_24(s), w)


@pytest.mark.parametrize("device", devices())
def test_compress_empty(device):
    s = sparseops.compress_24(torch.empty(0, 8, device=device))
    assert s.values.shape == (0, 4) and s.meta.shape == (0, 1)
    s = sparseops.compress_24(torch.empty(3, 0, device=device))
    assert s.values.shape == (3, 0) and s.meta.shape == (3, 0)
    assert sparseops.decompress_24(s).shape == (3, 0)


@pytest.mark.parametrize("device", devices())
def test_compress_not_24_names_first_offender(device):
    w = two_four(8, 16, device=device)
    w[5, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    w[6, 0:4] = 1.0
    with pytest.raises(RuntimeError, match=r"compress_24: w is not 2:4 sparse: row 5, group 2 \(columns 8..11\).*prune=True"):
        sparseops.compress_24(w)


@pytest.mark.parametrize(
    "w,kwargs,exc,match",
    [
        (torch.randn(4, 4, 4), {}, RuntimeError, r"compress_24: expected w to be 2-D \(got 3-D"),
        (torch.randn(4, 6), {}, RuntimeError, r"compress_24: expected w.size\(1\) to be divisible by 4 \(got 6\)"),
        (torch.ones(4, 8, dtype=torch.int64), {}, TypeError, r"compress_24: expected w to have dtype in"),
        (torch.randn(32, 16), {"layout": "cutlass"}, TypeError, r"compress_24: expected w \(layout=\"cutlass\"\) to have dtype"),
        (torch.randn(32, 16).half(), {"layout": "cutlass"}, RuntimeError, r"layout=\"cutlass\" expects w.size\(0\) % 32"),
        (torch.randn(4, 8), {"layout": "csr"}, ValueError, r"compress_24: expected layout in"),
        (torch.randn(16, 16).half(), {"layout": "cusparselt"}, ValueError,
         r"compress_24: layout='cusparselt' is CUDA-only .* on the CPU use layout='packed'"),
    ],
)
def test_compress_bad_input(w, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sparseops.compress_24(w, **kwargs)


@pytest.mark.parametrize("device", devices())
def test_compress_prune_nan_is_an_error(device):
    w = torch.randn(4, 8, device=device)
    w[3, 6] = float("nan")
    with pytest.raises(RuntimeError, match=r"compress_24: w contains NaN \(row 3, columns 4..7\)"):
        sparseops.compress_24(w, prune=True)


def test_decompress_bad_input():
    s = sparseops.compress_24(torch.randn(8, 16), prune=True)
    with pytest.raises(RuntimeError, match=r"decompress_24: expected meta of shape \[8, 2\]"):
        torch.ops.sparseops.decompress_24(s.values, s.meta[:, :1])
    with pytest.raises(TypeError, match=r"decompress_24: expected meta to have dtype in \{Byte\}"):
        torch.ops.sparseops.decompress_24(s.values, s.meta.to(torch.int16))
    bad = s.meta.clone()
    bad[2, 1] = 0x05  # code 5 = (1, 1): not a valid pair
    with pytest.raises(RuntimeError, match=r"decompress_24: meta holds an invalid 2:4 code at row 2, group 2"):
        torch.ops.sparseops.decompress_24(s.values, bad)
    with pytest.raises(TypeError, match=r"decompress_24: expected a Sparse24"):
        sparseops.decompress_24((s.values, s.meta))


# ---- autograd, opcheck, compile ----------------------------------------------------------


def test_compress_decompress_gradients():
    w = torch.randn(8, 16, requires_grad=True)
    s = sparseops.compress_24(w, prune=True)
    g = torch.randn_like(s.values)
    (s.values * g).sum().backward()
    mask = nm_mask_ref(w.detach(), 2, 4)
    expected = torch.zeros_like(w).masked_scatter_(mask, g.reshape(-1))
    torch.testing.assert_close(w.grad, expected)

    values = s.values.detach().requires_grad_()
    dense = sparseops.decompress_24(sparseops.Sparse24(values, s.meta))
    gd = torch.randn_like(dense)
    (dense * gd).sum().backward()
    torch.testing.assert_close(values.grad, gd[mask].reshape(8, 8))


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    ops = torch.ops.sparseops
    w = torch.randn(32, 48, device=device)
    opcheck(ops.nm_mask, (w, 2, 4, None))
    opcheck(ops.nm_mask, (w, 4, 8, torch.randn_like(w)))
    for grad in (False, True):
        wg = w.clone().requires_grad_(grad)
        opcheck(ops.compress_24, (wg, True, "packed"))
        values, meta = ops.compress_24(w, True, "packed")
        opcheck(ops.decompress_24, (values.clone().requires_grad_(grad), meta, "packed"))
    wh = torch.randn(64, 32, device=device, dtype=torch.float16)
    opcheck(ops.compress_24, (wh, True, "cutlass"))
    values, meta = ops.compress_24(wh, True, "cutlass")
    opcheck(ops.decompress_24, (values, meta, "cutlass"))


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph(device):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def f(w):
        mask = sparseops.nm_mask(w, 2, 4)
        s = sparseops.compress_24(w * mask)
        return mask, s, sparseops.decompress_24(s)

    w = torch.randn(16, 32, device=device)
    mask, s, dense = f(w)
    assert torch.equal(mask, nm_mask_ref(w, 2, 4))
    assert isinstance(s, sparseops.Sparse24)
    assert torch.equal(dense, w * mask)
