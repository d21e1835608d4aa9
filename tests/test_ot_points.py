"""sinkhorn_points / ot_points_grad: point clouds without the cost matrix, against the matrix solver and
the reference, gradients w.r.t. the points, opcheck, compile, bad inputs."""
from __future__ import annotations

import pytest
import torch

import sparseops
from sparseops.reference import ot_plan_ref, sinkhorn_log_ref

from conftest import devices

_ops = torch.ops.sparseops


def _clouds(B, n, m, d, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(B, n, d, generator=gen, dtype=torch.float64)
    y = torch.rand(B, m, d, generator=gen, dtype=torch.float64)
    a = torch.rand(B, n, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=gen, dtype=torch.float64) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return [t.to(device, dtype) for t in (x, y, a, b)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m, d", [(1, 1, 1), (7, 33, 3), (33, 7, 2), (65, 600, 3)])
@pytest.mark.parametrize("p", [1, 2])
def test_points_match_matrix_solver(device, dtype, n, m, d, p):
    """m = 600 > the 512-column tile: the tile-by-tile log-sum-exp merge is exercised."""
    x, y, a, b = _clouds(2, n, m, d, dtype, device)
    eps, tol = 0.1, (1e-12 if dtype == torch.float64 else 1e-5)
    out = _ops.sinkhorn_points(x, y, a, b, eps, p, 300, tol, 5)
    C = sparseops.ot.cost_matrix(x.cpu().double(), y.cpu().double(), p)
    ref = sinkhorn_log_ref(a.cpu().double(), b.cpu().double(), C, eps, 300, tol, 5)
    atol = 1e-10 if dtype == torch.float64 else 2e-4
    for got, want in zip(out[:3], ref[:3]):
        torch.testing.assert_close(got.cpu().double(), want, atol=atol, rtol=atol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("p", [1, 2])
def test_points_grad_matches_plan(device, p):
    x, y, a, b = _clouds(2, 9, 700, 3, torch.float64, device)
    f = 0.01 * torch.randn(2, 9, dtype=torch.float64, device=device)
    g = 0.01 * torch.randn(2, 700, dtype=torch.float64, device=device)
    gx, gy = _ops.ot_points_grad(x, y, a, b, f, g, 0.2, p)
    xc, yc = x.cpu(), y.cpu()
    P = ot_plan_ref(a.cpu(), b.cpu(), sparseops.ot.cost_matrix(xc, yc, p), f.cpu(), g.cpu(), 0.2)
    diff = xc[:, :, None, :] - yc[:, None, :, :]
    dc = 2 * diff if p == 2 else diff.sign()
    torch.testing.assert_close(gx.cpu(), (P[..., None] * dc).sum(2), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(gy.cpu(), -(P[..., None] * dc).sum(1), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("p", [1, 2])
def test_gradcheck_points(p):
    x, y, a, b = _clouds(1, 5, 4, 2, torch.float64, seed=3)

    def fn(x, y):
        return sparseops.ot.sinkhorn_points(x, y, 0.3, a=a, b=b, p=p, tol=1e-14, max_iter=20000).cost

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), y.requires_grad_()), atol=1e-6, rtol=1e-4)


def test_unbatched_defaults_and_plan():
    x, y, _, _ = _clouds(1, 12, 10, 3, torch.float64)
    res = sparseops.ot.sinkhorn_points(x[0], y[0], 0.05, tol=1e-12)
    assert bool(res.converged) and res.f.shape == (12,) and res.C is None
    P = res.plan()
    torch.testing.assert_close(P.sum(1), torch.full((12,), 1 / 12, dtype=torch.float64), atol=1e-11, rtol=0)
    torch.testing.assert_close(P.sum(0), torch.full((10,), 1 / 10, dtype=torch.float64), atol=1e-12, rtol=0)


def test_unbalanced_points():
    x, y, a, b = _clouds(2, 8, 11, 2, torch.float64)
    out = _ops.sinkhorn_points(x, y, a, 2 * b, 0.05, 2, 3000, 1e-13, 10, 0.4)
    ref = sinkhorn_log_ref(a, 2 * b, sparseops.ot.cost_matrix(x, y), 0.05, 3000, 1e-13, 10, 0.4)
    torch.testing.assert_close(out[2], ref[2], atol=1e-11, rtol=0)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    x, y, a, b = _clouds(2, 6, 5, 3, torch.float64)
    x.requires_grad_(requires_grad)
    y.requires_grad_(requires_grad)
    torch.library.opcheck(_ops.sinkhorn_points, (x, y, a, b, 0.1, 2, 50, 1e-9, 5, None))
    f, g = 0.01 * torch.randn(2, 6, dtype=torch.float64), 0.01 * torch.randn(2, 5, dtype=torch.float64)
    torch.library.opcheck(_ops.ot_points_grad, (x.detach(), y.detach(), a, b, f, g, 0.1, 1))


def test_compile_sinkhorn_points():
    x, y, _, _ = _clouds(1, 9, 7, 2, torch.float64)

    def fn(x, y):
        res = sparseops.ot.sinkhorn_points(x, y, 0.1)
        return res.cost, res.g

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, y), fn(x, y)):
        torch.testing.assert_close(got, want)


def test_bad_inputs():
    x, y, a, b = _clouds(1, 4, 3, 2, torch.float64)
    with pytest.raises(ValueError, match=r"sinkhorn_points: expected p in \{1, 2\} \(got 3\)"):
        sparseops.ot.sinkhorn_points(x, y, 0.1, p=3)
    with pytest.raises(ValueError, match=r"sinkhorn_points: expected eps to be finite and > 0 \(got -0.5\)"):
        sparseops.ot.sinkhorn_points(x, y, -0.5)
    with pytest.raises(ValueError, match=r"sinkhorn_points: expected x \[B, n, d\] and y \[B, m, d\] with one B and d"):
        sparseops.ot.sinkhorn_points(x, y[..., :1], 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn_points: expected finite coordinates in y"):
        sparseops.ot.sinkhorn_points(x, y.clone().fill_(float("nan")), 0.1)
    with pytest.raises(ValueError, match=r"sinkhorn_points: expected sum\(a\) == sum\(b\)"):
        sparseops.ot.sinkhorn_points(x, y, 0.1, a=a, b=2 * b)
    with pytest.raises(RuntimeError, match=r"sinkhorn_points: expected b of shape \[1, 3\] \(got \[1, 4\]\)"):
        _ops.sinkhorn_points(x, y, a, a, 0.1)
    with pytest.raises(RuntimeError, match=r"ot_points_grad: expected f of shape \[1, 4\] \(got \[1, 3\]\)"):
        _ops.ot_points_grad(x, y, a, b, b, b, 0.1)
