"""sparseops.ot Sinkhorn: the sinkhorn_log / ot_plan / ot_dual ops against the plain-torch reference,
awkward shapes, batching, unbalanced marginals, forbidden pairs, zero masses, small eps, gradients,
opcheck, torch.compile and bad inputs."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import sparseops
from sparseops.reference import ot_dual_ref, ot_plan_ref, sinkhorn_log_ref

from conftest import devices

_ops = torch.ops.sparseops
SHAPES = [(1, 1), (1, 7), (7, 1), (7, 33), (33, 7), (65, 257)]


def _problem(B, n, m, dtype, device="cpu", shared=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, n, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=gen, dtype=torch.float64) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    C = torch.rand(n, m, generator=gen, dtype=torch.float64) if shared else torch.rand(B, n, m, generator=gen, dtype=torch.float64)
    return a.to(device, dtype), b.to(device, dtype), C.to(device, dtype)


def _close(x, y, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(x.cpu().double(), y.cpu().double(), atol=tol, rtol=tol, equal_nan=True)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m", SHAPES)
@pytest.mark.parametrize("rho", [None, 0.5])
def test_sinkhorn_log_matches_reference(device, dtype, n, m, rho):
    a, b, C = _problem(2, n, m, dtype, device)
    eps, tol = 0.1, (1e-12 if dtype == torch.float64 else 1e-5)
    out = _ops.sinkhorn_log(a, b, C, eps, 300, tol, 5, rho)
    ref = sinkhorn_log_ref(a.cpu(), b.cpu(), C.cpu(), eps, 300, tol, 5, rho)
    for name, x, y in zip(("f", "g", "cost"), out[:3], ref[:3]):
        _close(x, y, dtype)
    if dtype == torch.float64:
        assert torch.equal(out[3].cpu(), ref[3]), (out[3], ref[3])
        _close(out[4], ref[4], dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shared", [False, True])
def test_batched_matches_looped(device, shared):
    a, b, C = _problem(5, 17, 23, torch.float64, device, shared=shared)
    out = _ops.sinkhorn_log(a, b, C, 0.05, 500, 1e-12, 10)
    for e in range(5):
        Ce = C if shared else C[e]
        one = _ops.sinkhorn_log(a[e:e + 1], b[e:e + 1], Ce, 0.05, 500, 1e-12, 10)
        for x, y in zip(out, one):
            torch.testing.assert_close(x[e:e + 1], y, rtol=0, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_marginals_satisfied_and_plan(device, dtype):
    a, b, C = _problem(3, 12, 9, dtype, device)
    res = sparseops.ot.sinkhorn(a, b, C, 0.05, tol=1e-6 if dtype == torch.float32 else 1e-12, max_iter=5000)
    assert bool(res.converged.all())
    P = res.plan()
    assert P.shape == (3, 12, 9)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(P.sum(2), a, atol=tol, rtol=0)
    torch.testing.assert_close(P.sum(1), b, atol=tol, rtol=0)
    _close(P, ot_plan_ref(a.cpu(), b.cpu(), C.cpu(), res.f.cpu(), res.g.cpu(), 0.05), dtype)
    # The dual objective equals the primal <C, P> + eps KL(P | a x b) at convergence.
    kl = (P * (P / (a[:, :, None] * b[:, None, :])).log()).sum((1, 2)) - P.sum((1, 2)) + 1
    torch.testing.assert_close(res.cost, (C * P).sum((1, 2)) + 0.05 * kl, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=0)


def test_unbatched_inputs_give_unbatched_result():
    a, b, C = _problem(1, 6, 5, torch.float64)
    res = sparseops.ot.sinkhorn(a[0], b[0], C[0], 0.1)
    assert res.f.shape == (6,) and res.g.shape == (5,) and res.cost.dim() == 0 and res.converged.dim() == 0
    assert res.plan().shape == (6, 5)


@pytest.mark.parametrize("device", devices())
def test_forbidden_pairs_and_zero_masses(device):
    a, b, C = _problem(2, 9, 8, torch.float64, device)
    C[:, 0, 1:] = math.inf  # row 0 may only go to column 0
    C[:, 3, 2] = math.inf
    a[:, 4] = 0
    b[:, 5] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    res = sparseops.ot.sinkhorn(a, b, C, 0.05, tol=1e-12, max_iter=5000)
    assert bool(res.converged.all())
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    P = res.plan()
    assert torch.equal(P[:, 0, 1:], torch.zeros_like(P[:, 0, 1:]))
    assert torch.equal(P[:, 3, 2], torch.zeros_like(P[:, 3, 2]))
    assert torch.equal(P[:, 4], torch.zeros_like(P[:, 4])) and torch.equal(P[:, :, 5], torch.zeros_like(P[:, :, 5]))
    torch.testing.assert_close(P.sum(2), a, atol=1e-11, rtol=0)
    ref = sinkhorn_log_ref(a.cpu(), b.cpu(), C.cpu(), 0.05, 5000, 1e-12, 10)
    torch.testing.assert_close(res.cost.cpu(), ref[2], atol=1e-12, rtol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n, m", [(7, 33), (65, 257)])
def test_zero_mass_columns_match_reference(device, n, m):
    """Zero-mass target entries (as the empty pixels of an image): the fused iteration leaves those
    columns out and computes their potentials once at the end; every output matches the reference."""
    a, b, C = _problem(2, n, m, torch.float64, device)
    b[:, ::3] = 0
    a[:, 1] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    out = _ops.sinkhorn_log(a, b, C, 0.05, 400, 1e-12, 5)
    ref = sinkhorn_log_ref(a.cpu(), b.cpu(), C.cpu(), 0.05, 400, 1e-12, 5)
    for x, y in zip(out[:3], ref[:3]):
        _close(x, y, torch.float64)
    assert torch.equal(out[3].cpu(), ref[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_eps_is_stable(dtype):
    """eps = 1e-4 of the cost scale: finite potentials and plan, exact column marginals, and the same
    iterates as the torch.logsumexp reference."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(40, 2, generator=gen, dtype=torch.float64), torch.rand(30, 2, generator=gen, dtype=torch.float64)
    C = sparseops.ot.cost_matrix(x, y)
    C = (C / C.max()).to(dtype)
    a, b = torch.full((40,), 1 / 40, dtype=dtype), torch.full((30,), 1 / 30, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sparseops.ot.sinkhorn(a, b, C, 1e-4, max_iter=300, tol=0.0)
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all() and torch.isfinite(res.cost)
    P = res.plan()
    assert torch.isfinite(P).all()
    torch.testing.assert_close(P.sum(0), b, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    ref = sinkhorn_log_ref(a[None].double(), b[None].double(), C.double(), 1e-4, 300, 0.0, 10)
    # fp32: C / eps is ~1e4, so one rounding of C moves a potential by ~1e-7 per iteration, accumulating.
    torch.testing.assert_close(res.f.double(), ref[0][0], atol=1e-3 if dtype == torch.float32 else 1e-10, rtol=0)
    assert torch.isfinite(res.err_history).all() and res.err_history[-1] < res.err_history[0]


def test_unbalanced_mass_and_reference():
    a, b, C = _problem(2, 10, 14, torch.float64)
    b = b * 2.0  # different masses are fine when rho is given
    res = sparseops.ot.sinkhorn(a, b, C, 0.05, rho=0.3, tol=1e-13, max_iter=5000)
    ref = sinkhorn_log_ref(a, b, C, 0.05, 5000, 1e-13, 10, 0.3)
    torch.testing.assert_close(res.f, ref[0], atol=1e-11, rtol=0)
    torch.testing.assert_close(res.cost, ref[2], atol=1e-11, rtol=0)
    # The relaxed marginals lie between the two masses.
    mass = res.plan().sum((1, 2))
    assert bool(((mass > 1) & (mass < 2)).all())


def test_non_convergence_warns():
    a, b, C = _problem(2, 30, 30, torch.float64)
    with pytest.warns(RuntimeWarning, match=r"sinkhorn: 2 of 2 problems did not reach tol=1e-12 in max_iter=3"):
        res = sparseops.ot.sinkhorn(a, b, C, 1e-3, max_iter=3, tol=1e-12, check_every=1)
    assert not bool(res.converged.any())
    assert res.err_history.shape == (2, 3) and torch.isfinite(res.err_history).all()
    assert torch.equal(res.n_iter, torch.tensor([3, 3]))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True])
def test_ot_plan_and_dual_match_reference(device, dtype, shared):
    a, b, C = _problem(2, 33, 19, dtype, device, shared=shared)
    a[0, 3] = 0
    gen = torch.Generator().manual_seed(5)
    f = (0.1 * torch.randn(2, 33, generator=gen, dtype=torch.float64)).to(device, dtype)
    g = (0.1 * torch.randn(2, 19, generator=gen, dtype=torch.float64)).to(device, dtype)
    _close(_ops.ot_plan(a, b, C, f, g, 0.2), ot_plan_ref(a.cpu(), b.cpu(), C.cpu(), f.cpu(), g.cpu(), 0.2), dtype)
    for x, y in zip(_ops.ot_dual(a, b, C, f, g, 0.2), ot_dual_ref(a.cpu(), b.cpu(), C.cpu(), f.cpu(), g.cpu(), 0.2)):
        _close(x, y, dtype)


def test_one_f_update_matches_torch_logsumexp():
    """The vectorised exp / log-sum-exp: one f-update from g_init is -eps * logsumexp(log b + (g - C) / eps)."""
    for dtype, tol in ((torch.float32, 2e-6), (torch.float64, 1e-14)):
        gen = torch.Generator().manual_seed(7)
        a, b, C = _problem(3, 37, 1000, dtype)
        g0 = (torch.randn(3, 1000, generator=gen, dtype=torch.float64) * 30).to(dtype)
        eps = 0.01
        f = _ops.sinkhorn_log(a, b, C, eps, 1, 0.0, 1, None, g0)[0]
        expect = -eps * torch.logsumexp(b.double().log()[:, None, :] + (g0.double()[:, None, :] - C.double()) / eps, dim=2)
        torch.testing.assert_close(f.double(), expect, atol=0, rtol=tol)


# ---- gradients ------------------------------------------------------------------------------


def _cost_fn(a, b, eps, rho=None):
    def fn(C):
        return sparseops.ot.sinkhorn(a, b, C, eps, tol=1e-14, max_iter=20000, rho=rho).cost
    return fn


@pytest.mark.parametrize("rho", [None, 0.7])
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck_cost(rho, shared):
    a, b, C = _problem(2, 4, 3, torch.float64, shared=shared)
    C.requires_grad_(True)
    assert torch.autograd.gradcheck(_cost_fn(a, b, 0.3, rho), (C,), atol=1e-6, rtol=1e-4)


def test_gradcheck_marginals_balanced():
    a, b, C = _problem(1, 4, 3, torch.float64)

    def fn(a_raw, b_raw):  # on the simplex: normalise (the balanced cost needs equal masses)
        return sparseops.ot.sinkhorn(a_raw / a_raw.sum(), b_raw / b_raw.sum(), C, 0.3, tol=1e-14, max_iter=20000).cost

    assert torch.autograd.gradcheck(fn, (a.clone().requires_grad_(), b.clone().requires_grad_()), atol=1e-6, rtol=1e-4)


def test_gradcheck_marginals_unbalanced():
    a, b, C = _problem(2, 4, 3, torch.float64)

    def fn(a, b):
        return sparseops.ot.sinkhorn(a, b, C, 0.3, rho=0.5, tol=1e-14, max_iter=20000).cost

    assert torch.autograd.gradcheck(fn, (a.requires_grad_(), b.requires_grad_()), atol=1e-6, rtol=1e-4)


def test_gradient_wrt_cost_is_the_plan():
    a, b, C = _problem(2, 6, 5, torch.float64)
    C.requires_grad_(True)
    res = sparseops.ot.sinkhorn(a, b, C, 0.1, tol=1e-13)
    res.cost.sum().backward()
    torch.testing.assert_close(C.grad, res.plan(), atol=1e-14, rtol=0)
    assert not res.f.requires_grad and not res.g.requires_grad


# ---- opcheck, compile --------------------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_opcheck(requires_grad, shared):
    a, b, C = _problem(2, 7, 5, torch.float64, shared=shared)
    for t in (a, b, C):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(_ops.sinkhorn_log, (a, b, C, 0.1, 50, 1e-9, 5, None))
    torch.library.opcheck(_ops.sinkhorn_log, (a, b, C, 0.1, 50, 1e-9, 5, 0.5, torch.zeros(2, 5, dtype=torch.float64)))
    f, g = torch.randn(2, 7, dtype=torch.float64) * 0.1, torch.randn(2, 5, dtype=torch.float64) * 0.1
    torch.library.opcheck(_ops.ot_plan, (a.detach(), b.detach(), C.detach(), f, g, 0.1))
    torch.library.opcheck(_ops.ot_dual, (a.detach(), b.detach(), C.detach(), f, g, 0.1))


def test_compile_sinkhorn_and_cost_matrix():
    x, y = torch.rand(9, 2, dtype=torch.float64), torch.rand(11, 2, dtype=torch.float64)
    a, b = torch.full((9,), 1 / 9, dtype=torch.float64), torch.full((11,), 1 / 11, dtype=torch.float64)

    def fn(x, y):
        C = sparseops.ot.cost_matrix(x, y)
        res = sparseops.ot.sinkhorn(a, b, C, 0.1)
        return res.cost, res.f, res.converged

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, y), fn(x, y)):
        torch.testing.assert_close(got, want)


def test_cost_matrix():
    x, y = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(sparseops.ot.cost_matrix(x, y), ((x[:, :, None] - y[:, None]) ** 2).sum(-1))
    torch.testing.assert_close(sparseops.ot.cost_matrix(x, y, p=1), (x[:, :, None] - y[:, None]).abs().sum(-1))
    with pytest.raises(ValueError, match=r"cost_matrix: expected p in \{1, 2\} \(got 3\)"):
        sparseops.ot.cost_matrix(x, y, p=3)
    with pytest.raises(ValueError, match=r"cost_matrix: expected x and y with the same point dimension \(got 3 vs 2\)"):
        sparseops.ot.cost_matrix(x, y[..., :2])


# ---- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_wrapper():
    a, b, C = _problem(1, 4, 3, torch.float64)
    a, b, C = a[0], b[0], C[0]
    s = sparseops.ot.sinkhorn
    with pytest.raises(ValueError, match=r"sinkhorn: expected eps to be finite and > 0 \(got 0.0\)"):
        s(a, b, C, 0.0)
    with pytest.raises(ValueError, match=r"sinkhorn: expected eps to be finite and > 0 \(got -1.0\)"):
        s(a, b, C, -1.0)
    with pytest.raises(ValueError, match=r"sinkhorn: expected C's last two dims to be \(n, m\) = \(4, 3\) from a and b \(got \(3, 4\)\)"):
        s(a, b, C.T, 0.1)
    with pytest.raises(TypeError, match=r"sinkhorn: expected a, b and C to have one dtype"):
        s(a.float(), b, C, 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn: expected rho > 0 or None \(got 0\)"):
        s(a, b, C, 0.1, rho=0)
    with pytest.raises(ValueError, match=r"sinkhorn_log: expected a \(a marginal\) to be >= 0 \(got min -0.1\)"):
        s(torch.cat((a[:3], a.new_tensor([-0.1]))), b, C, 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn_log: expected sum\(a\) == sum\(b\) for balanced transport"):
        s(a, b * 2, C, 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn_log: expected C without NaN \(got a NaN cost\)"):
        s(a, b, C.clone().index_fill_(0, torch.tensor([1]), math.nan), 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn_log: expected C > -inf"):
        s(a, b, C.clone().index_fill_(0, torch.tensor([1]), -math.inf), 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn_log: expected b \(a marginal\) to be finite"):
        s(a, b.clone().index_fill_(0, torch.tensor([0]), math.nan), C, 0.1)


@pytest.mark.filterwarnings("ignore:sinkhorn.*did not reach")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m", [(1, 1), (3, 5), (7, 37), (61, 67)])
def test_nan_or_minus_inf_cost_found_anywhere(dtype, n, m):
    """The input check's vector min scan: a bad cost in its first, middle or last entry (the tails of
    every vector width) is an error, and a clean C passes."""
    a = torch.full((n,), 1.0 / n, dtype=dtype)
    b = torch.full((m,), 1.0 / m, dtype=dtype)
    C = torch.rand(n, m, generator=torch.Generator().manual_seed(0)).to(dtype)
    sparseops.ot.sinkhorn(a, b, C, 0.5, max_iter=1)
    for flat in sorted({0, (n * m) // 2, n * m - 1}):
        for bad, message in ((math.nan, "expected C without NaN"), (-math.inf, "expected C > -inf")):
            Cb = C.clone()
            Cb.view(-1)[flat] = bad
            with pytest.raises(ValueError, match=f"sinkhorn_log: {message}"):
                sparseops.ot.sinkhorn(a, b, Cb, 0.5, max_iter=1)


def test_bad_inputs_raw_op():
    a, b, C = _problem(2, 4, 3, torch.float64)
    with pytest.raises(RuntimeError, match=r"sinkhorn_log: expected b.size\(0\) == a.size\(0\) \(batch\) \(got 1 vs 2\)"):
        _ops.sinkhorn_log(a, b[:1], C, 0.1)
    with pytest.raises(RuntimeError, match=r"sinkhorn_log: expected eps to be finite and > 0 \(got 0\)"):
        _ops.sinkhorn_log(a, b, C, 0.0)
    with pytest.raises(RuntimeError, match=r"sinkhorn_log: expected max_iter >= 1 \(got 0\)"):
        _ops.sinkhorn_log(a, b, C, 0.1, 0)
    with pytest.raises(RuntimeError, match=r"sinkhorn_log: expected check_every >= 1 \(got 0\)"):
        _ops.sinkhorn_log(a, b, C, 0.1, 10, 1e-9, 0)
    with pytest.raises(TypeError, match=r"sinkhorn_log: expected C to have dtype in \{Float, Double\} \(got Half\)"):
        _ops.sinkhorn_log(a.half(), b.half(), C.half(), 0.1)
    with pytest.raises(RuntimeError, match=r"sinkhorn_log: expected g_init of shape \[B, m\] = \[2, 3\] \(got \[2, 4\]\)"):
        _ops.sinkhorn_log(a, b, C, 0.1, 10, 1e-9, 1, None, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"ot_plan: expected f of shape \[2, 4\] \(got \[2, 3\]\)"):
        _ops.ot_plan(a, b, C, torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), 0.1)
    with pytest.raises(RuntimeError, match=r"ot_dual: expected C's last two dims to be \(n, m\) = \(4, 3\) from a and b"):
        _ops.ot_dual(a, b, C.transpose(1, 2), torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64), 0.1)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("rho", [None, 0.5])
def test_cuda_matches_cpu_batched(rho):
    a, b, C = _problem(4, 100, 130, torch.float64)
    cpu = _ops.sinkhorn_log(a, b, C, 0.02, 400, 1e-12, 10, rho)
    gpu = _ops.sinkhorn_log(a.cuda(), b.cuda(), C.cuda(), 0.02, 400, 1e-12, 10, rho)
    for x, y in zip(cpu[:3], gpu[:3]):
        torch.testing.assert_close(y.cpu(), x, atol=1e-10, rtol=1e-10)
    assert (gpu[3].cpu() - cpu[3]).abs().max() <= 10
