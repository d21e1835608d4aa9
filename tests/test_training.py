"""nm_srste / nm_srste_backward / transposable_mask_24 and GradientFlowSchedule: kernels vs the
references, opcheck, torch.compile, bad inputs."""
from __future__ import annotations

import math

import pytest
import torch

import sparseops  # noqa: F401
from sparseops.reference import (
    nm_mask_ref,
    nm_srste_backward_ref,
    nm_srste_ref,
    transposable_mask_24_ref,
    transposable_patterns_ref,
)
from sparseops import GradientFlowSchedule, nm_srste, transposable_mask_24

from conftest import devices

ops = torch.ops.sparseops
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NM = [(2, 4), (1, 4), (4, 8)]


def _shapes(m: int):
    # Odd leading dims, a single group, several groups, 3-D, empty.
    return [(1, m), (7, 3 * m), (33, 2 * m), (3, 5, 4 * m), (257, m), (0, m)]


# ---------------------------------------------------------------------------------------------
# nm_srste forward


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", NM)
def test_nm_srste_forward_matches_reference(device, dtype, n, m):
    for shape in _shapes(m):
        w = torch.randn(shape, dtype=dtype, device=device)
        out, mask = ops.nm_srste(w, n, m)
        ref_out, ref_mask = nm_srste_ref(w, n, m)
        assert out.dtype == dtype and mask.dtype == torch.bool and out.shape == w.shape
        assert torch.equal(mask, ref_mask), shape
        assert torch.equal(out, ref_out), shape
        if w.numel():
            assert (mask.reshape(-1, m).sum(-1) == n).all()
        # Same mask as nm_mask for NaN-free input.
        assert torch.equal(mask, nm_mask_ref(w, n, m))


def test_nm_srste_forward_ties_and_non_contiguous():
    # Ties go to the lower index.
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    out, mask = ops.nm_srste(w, 2, 4)
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]
    assert out.tolist() == [[1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    base = torch.randn(16, 24)
    wt = base.t()[:, :16]  # non-contiguous [24, 16]
    out, mask = ops.nm_srste(wt, 2, 4)
    ref_out, ref_mask = nm_srste_ref(wt.contiguous(), 2, 4)
    assert torch.equal(out, ref_out) and torch.equal(mask, ref_mask)


def test_nm_srste_forward_nan_ranks_largest():
    w = torch.tensor([[0.5, float("nan"), 2.0, 1.0], [float("inf"), float("nan"), 1.0, 3.0]])
    out, mask = ops.nm_srste(w, 2, 4)
    ref_out, ref_mask = nm_srste_ref(w, 2, 4)
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert torch.equal(mask, ref_mask)
    assert torch.equal(out.isnan(), ref_out.isnan())
    assert out[0, 1].isnan() and out[1, 0] == float("inf")


# ---------------------------------------------------------------------------------------------
# nm_srste backward


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", NM)
def test_nm_srste_backward_matches_reference(device, dtype, n, m):
    for shape in _shapes(m):
        w = torch.randn(shape, dtype=dtype, device=device)
        grad = torch.randn(shape, dtype=dtype, device=device)
        _, mask = ops.nm_srste(w, n, m)
        for decay, scale in [(2e-4, 1.0), (0.0, 1.0), (0.3, 0.25), (1e-2, 0.0)]:
            scale_t = torch.tensor(scale)
            got = ops.nm_srste_backward(grad, w, mask, decay, scale_t)
            ref = nm_srste_backward_ref(grad, w, mask, decay, scale)
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
            # The literal SR-STE formula, in float64, agrees to the dtype's rounding.
            mf = mask.double()
            formula = grad.double() * (mf + scale * (1 - mf)) + decay * (1 - mf) * w.double()
            torch.testing.assert_close(got.double(), formula, rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=1e-6)
        # None means pruned_grad_scale = 1.
        assert torch.equal(ops.nm_srste_backward(grad, w, mask, 0.1, None), nm_srste_backward_ref(grad, w, mask, 0.1, 1.0))


@pytest.mark.parametrize("device", devices())
def test_nm_srste_backward_scale_on_device(device):
    w = torch.randn(6, 16, device=device)
    grad = torch.randn(6, 16, device=device)
    _, mask = ops.nm_srste(w)
    got = ops.nm_srste_backward(grad, w, mask, 0.05, torch.tensor([0.5], device=device))
    assert torch.equal(got, nm_srste_backward_ref(grad, w, mask, 0.05, 0.5))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_srste_autograd(device, dtype):
    w = torch.randn(12, 32, dtype=dtype, device=device, requires_grad=True)
    x = torch.randn(5, 32, dtype=dtype, device=device)
    y = x @ nm_srste(w, decay=0.01, pruned_grad_scale=0.5).t()
    g_out = torch.randn_like(y)
    y.backward(g_out)
    ws, mask = nm_srste_ref(w.detach())
    grad_ws = g_out.t() @ x  # d(x @ ws^T)/d ws
    expected = nm_srste_backward_ref(grad_ws, w.detach(), mask, 0.01, 0.5)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(w.grad, expected, rtol=tol, atol=tol)


def test_nm_srste_plain_ste_passes_gradient_everywhere():
    w = torch.randn(4, 8, requires_grad=True)
    nm_srste(w, decay=0.0).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    w.grad = None
    nm_srste(w, decay=0.0, pruned_grad_scale=0.0).sum().backward()
    _, mask = nm_srste_ref(w.detach())
    assert torch.equal(w.grad, mask.float())


def test_nm_srste_no_grad_saves_nothing_needed():
    w = torch.randn(4, 8)
    out = nm_srste(w)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_srste_opcheck(device, dtype):
    for n, m, shape in [(2, 4, (3, 8)), (1, 4, (5, 4)), (4, 8, (2, 3, 16))]:
        for requires_grad in (False, True):
            w = torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad)
            torch.library.opcheck(ops.nm_srste, (w, n, m, 2e-4, None))
            torch.library.opcheck(ops.nm_srste, (w, n, m, 0.1, torch.tensor(0.5)))
        w = torch.randn(shape, dtype=dtype, device=device)
        grad = torch.randn(shape, dtype=dtype, device=device)
        _, mask = ops.nm_srste(w, n, m)
        torch.library.opcheck(ops.nm_srste_backward, (grad, w, mask, 0.1, torch.tensor(0.5)))
        torch.library.opcheck(ops.nm_srste_backward, (grad, w, mask, 0.0, None))


def test_nm_srste_compile_fullgraph_no_recompile_per_scale():
    torch._dynamo.reset()

    def step(w, x, scale):
        return (x @ nm_srste(w, decay=0.01, pruned_grad_scale=scale).t()).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(3, 16)
    scale = torch.tensor(1.0)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for value in (1.0, 0.7, 0.3):
        scale.fill_(value)
        w.grad = None
        compiled(w, x, scale).backward()
        got = w.grad.clone()
        w.grad = None
        step(w, x, value).backward()
        torch.testing.assert_close(got, w.grad, rtol=1e-5, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before == 1


def test_nm_srste_bad_inputs():
    w = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match=r"nm_srste: expected w.size\(-1\) to be divisible by m=4 \(got 6\)"):
        nm_srste(torch.randn(4, 6))
    with pytest.raises(RuntimeError, match=r"nm_srste: expected 1 <= n < m \(got n=4, m=4\)"):
        nm_srste(w, 4, 4)
    with pytest.raises(RuntimeError, match=r"nm_srste: expected 2 <= m <= 16 \(got m=32\)"):
        nm_srste(torch.randn(2, 32), 2, 32)
    with pytest.raises(TypeError, match=r"nm_srste: expected w to have dtype in \{Float, Half, BFloat16\} \(got Double\)"):
        nm_srste(w.double())
    with pytest.raises(RuntimeError, match=r"nm_srste: expected w to have at least 1 dimension"):
        nm_srste(torch.tensor(1.0), 1, 4)
    with pytest.raises(RuntimeError, match=r"nm_srste: expected decay to be finite and >= 0 \(got -1"):
        nm_srste(w, decay=-1.0)
    with pytest.raises(RuntimeError, match=r"nm_srste: expected pruned_grad_scale to be finite and >= 0 \(got -0.5"):
        nm_srste(w, pruned_grad_scale=-0.5)
    with pytest.raises(TypeError, match=r"nm_srste: expected pruned_grad_scale to have dtype in \{Float\} \(got Double\)"):
        nm_srste(w, pruned_grad_scale=torch.tensor(0.5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"nm_srste: expected pruned_grad_scale to be a one-element tensor \(got shape \[2\]\)"):
        nm_srste(w, pruned_grad_scale=torch.ones(2))
    with pytest.raises(TypeError, match=r"nm_srste: expected pruned_grad_scale to be a float or a one-element float32 tensor \(got str\)"):
        nm_srste(w, pruned_grad_scale="1")


def test_nm_srste_backward_reads_any_nonzero_mask_byte_as_kept():
    """A bool mask made from other bytes (uint8.view(torch.bool)) may hold 2, 255, ...: such a byte
    is kept, like 1 (reading it as a C++ bool would be undefined behaviour)."""
    w, grad = torch.randn(4, 16), torch.randn(4, 16)
    raw = torch.randint(0, 4, (4, 16), dtype=torch.uint8) * 85  # 0, 85, 170, 255
    got = ops.nm_srste_backward(grad, w, raw.view(torch.bool), 0.5, None)
    torch.testing.assert_close(got, ops.nm_srste_backward(grad, w, raw != 0, 0.5, None), rtol=0, atol=0)


def test_nm_srste_backward_bad_inputs():
    w = torch.randn(4, 8)
    grad = torch.randn(4, 8)
    _, mask = ops.nm_srste(w)
    with pytest.raises(RuntimeError, match=r"nm_srste_backward: expected grad.shape == w.shape \(got \[4, 4\] vs \[4, 8\]\)"):
        ops.nm_srste_backward(grad[:, :4], w, mask, 0.0, None)
    with pytest.raises(RuntimeError, match=r"nm_srste_backward: expected mask.shape == w.shape"):
        ops.nm_srste_backward(grad, w, mask[:2], 0.0, None)
    with pytest.raises(TypeError, match=r"nm_srste_backward: expected mask to have dtype in \{Bool\} \(got Float\)"):
        ops.nm_srste_backward(grad, w, mask.float(), 0.0, None)
    with pytest.raises(TypeError, match=r"nm_srste_backward: expected grad to have w's dtype Float \(got Half\)"):
        ops.nm_srste_backward(grad.half(), w, mask, 0.0, None)
    with pytest.raises(RuntimeError, match=r"nm_srste_backward: expected decay to be finite and >= 0 \(got inf\)"):
        ops.nm_srste_backward(grad, w, mask, math.inf, None)


# ---------------------------------------------------------------------------------------------
# transposable_mask_24


def test_transposable_pattern_table():
    patterns = transposable_patterns_ref()
    assert patterns.shape == (90, 4, 4)
    assert (patterns.sum(1) == 2).all() and (patterns.sum(2) == 2).all()
    assert len({tuple(p.flatten().tolist()) for p in patterns}) == 90
    # The documented first and last patterns.
    assert patterns[0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert patterns[89].int().tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]


def _assert_transposable(mask):
    r, c = mask.shape
    assert (mask.reshape(r, c // 4, 4).sum(-1) == 2).all()
    assert (mask.t().reshape(c, r // 4, 4).sum(-1) == 2).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_transposable_mask_matches_brute_force(device, dtype):
    for shape in [(4, 4), (8, 12), (36, 20), (4, 64), (0, 4), (4, 0)]:
        w = torch.randn(shape, device=device).to(dtype)
        mask = transposable_mask_24(w)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        ref = transposable_mask_24_ref(w)
        assert torch.equal(mask, ref), shape
        if w.numel():
            _assert_transposable(mask)


@pytest.mark.parametrize("device", devices())
def test_transposable_mask_ties_follow_enumeration_order(device):
    # Small integers: many exact ties between patterns; the first pattern in the order must win.
    w = torch.randint(-2, 3, (64, 64), device=device).float()
    assert torch.equal(transposable_mask_24(w), transposable_mask_24_ref(w))
    # All equal: pattern 0 everywhere.
    mask = transposable_mask_24(torch.ones(4, 8, device=device))
    p0 = transposable_patterns_ref(mask.device)[0]
    assert torch.equal(mask, torch.cat([p0, p0], dim=1))


def test_transposable_mask_is_optimal():
    w = torch.randn(16, 16)
    mask = transposable_mask_24(w)
    blocks = w.abs().reshape(4, 4, 4, 4).permute(0, 2, 1, 3)  # [4, 4, 4, 4]
    kept = (blocks * mask.reshape(4, 4, 4, 4).permute(0, 2, 1, 3)).sum((-1, -2))
    all_scores = (blocks.unsqueeze(2) * transposable_patterns_ref().float()).sum((-1, -2))  # [4, 4, 90]
    torch.testing.assert_close(kept, all_scores.max(-1).values)
    # Never keeps more than the row-wise 2:4 mask (which has fewer constraints).
    assert (w.abs() * mask).sum() <= (w.abs() * nm_mask_ref(w, 2, 4)).sum() + 1e-4


def test_transposable_mask_non_contiguous_and_inf():
    w = torch.randn(12, 8).t()  # [8, 12] non-contiguous
    assert torch.equal(transposable_mask_24(w), transposable_mask_24_ref(w.contiguous()))
    w = torch.randn(4, 4)
    w[1, 2] = float("inf")
    mask = transposable_mask_24(w)
    assert mask[1, 2] and torch.equal(mask, transposable_mask_24_ref(w))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_transposable_mask_opcheck(device, dtype):
    for shape in [(4, 4), (8, 12)]:
        torch.library.opcheck(ops.transposable_mask_24, (torch.randn(shape, device=device).to(dtype),))


def test_transposable_mask_compile_fullgraph():
    torch._dynamo.reset()

    def f(w):
        return w * transposable_mask_24(w)

    w = torch.randn(16, 32)
    assert torch.equal(torch.compile(f, fullgraph=True)(w), f(w))


def test_transposable_mask_bad_inputs():
    with pytest.raises(RuntimeError, match=r"transposable_mask_24: expected w to be 2-D \(got 3-D"):
        transposable_mask_24(torch.randn(2, 4, 4))
    with pytest.raises(RuntimeError, match=r"transposable_mask_24: expected both dimensions of w to be divisible by 4 \(got shape \[6, 8\]\)"):
        transposable_mask_24(torch.randn(6, 8))
    with pytest.raises(TypeError, match=r"transposable_mask_24: expected w to have dtype in \{Float, Half, BFloat16\} \(got Int\)"):
        transposable_mask_24(torch.ones(4, 4, dtype=torch.int32))
    w = torch.randn(8, 8)
    w[5, 6] = float("nan")
    with pytest.raises(RuntimeError, match=r"transposable_mask_24: w contains NaN \(first in the 4x4 block at rows 4..7, columns 4..7\)"):
        transposable_mask_24(w)


@pytest.mark.requires_cuda
def test_cuda_matches_cpu_bit_for_bit():
    w = torch.randn(64, 128)
    assert torch.equal(transposable_mask_24(w.cuda()).cpu(), transposable_mask_24(w))
    out_c, mask_c = ops.nm_srste(w.cuda(), 2, 4)
    out, mask = ops.nm_srste(w, 2, 4)
    assert torch.equal(mask_c.cpu(), mask) and torch.equal(out_c.cpu(), out)
    grad = torch.randn_like(w)
    got = ops.nm_srste_backward(grad.cuda(), w.cuda(), mask.cuda(), 0.01, torch.tensor(0.3))
    assert torch.equal(got.cpu(), ops.nm_srste_backward(grad, w, mask, 0.01, torch.tensor(0.3)))


# ---------------------------------------------------------------------------------------------
# GradientFlowSchedule


@pytest.mark.parametrize("kind", ["cosine", "linear", "exponential"])
def test_gradient_flow_schedule(kind):
    end = 1e-3 if kind == "exponential" else 0.0
    s = GradientFlowSchedule(start_step=10, end_step=110, start=1.0, end=end, kind=kind)
    assert s(0) == 1.0 and s(10) == 1.0
    assert s(110) == end and s(1000) == end
    values = [s(t) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    mid = s(60)
    expected = {"cosine": 0.5, "linear": 0.5, "exponential": math.sqrt(1e-3)}[kind]
    assert mid == pytest.approx(expected)
    assert GradientFlowSchedule(kind="constant", start=0.3)(5) == 0.3


def test_gradient_flow_schedule_bad_args():
    with pytest.raises(ValueError, match=r"GradientFlowSchedule: expected kind in .* \(got 'step'\)"):
        GradientFlowSchedule(kind="step")
    with pytest.raises(ValueError, match=r"GradientFlowSchedule: expected end_step > start_step \(got start_step=5, end_step=5\)"):
        GradientFlowSchedule(start_step=5, end_step=5)
    with pytest.raises(ValueError, match=r"GradientFlowSchedule: expected end to be finite and >= 0 \(got -1"):
        GradientFlowSchedule(end=-1.0)
    with pytest.raises(ValueError, match=r"GradientFlowSchedule: kind='exponential' expects start > 0 and end > 0"):
        GradientFlowSchedule(kind="exponential", end=0.0)
