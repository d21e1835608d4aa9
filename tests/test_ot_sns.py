"""Sinkhorn-Newton-Sparse: the ot_sparse_plan and ot_newton_cg ops against references, the solver's
convergence on random assignment at small eps, agreement with Sinkhorn, opcheck, compile, bad inputs."""
from __future__ import annotations

import pytest
import torch

import sparseops
from sparseops.reference import ot_newton_cg_ref, ot_sparse_plan_ref

from conftest import devices

_ops = torch.ops.sparseops


def _potentials(B, n, m, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, n, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(B, m, generator=gen, dtype=torch.float64) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    C = torch.rand(B, n, m, generator=gen, dtype=torch.float64)
    f, g, *_ = _ops.sinkhorn_log(a, b, C, 0.05, 10, 0.0, 10)
    return [t.to(device, dtype) for t in (a, b, C, f, g)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, m, k", [(1, 1, 1), (7, 33, 3), (33, 7, 7), (65, 257, 4)])
def test_sparse_plan_matches_topk(device, dtype, n, m, k):
    a, b, C, f, g = _potentials(2, n, m, dtype, device)
    idx, val = _ops.ot_sparse_plan(a, b, C, f, g, 0.05, k)
    ref_idx, ref_val = ot_sparse_plan_ref(a.cpu(), b.cpu(), C.cpu(), f.cpu(), g.cpu(), 0.05, k)
    order = val.cpu().argsort(dim=2, descending=True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(val.cpu().gather(2, order), ref_val, rtol=tol, atol=0)
    torch.testing.assert_close(idx.cpu().gather(2, order), ref_idx)  # random data: no ties


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 5, 40, 97])
def test_sparse_plan_ties_forbidden_pairs_and_wide_rows_cpu(dtype, k):
    """The CPU rule, row by row: the k best (log-value descending, then column ascending), returned in
    column order. Integer costs make many ties; +inf costs (forbidden pairs) rank last; one huge cost
    per row stretches the row's spread, so most entries share a histogram bucket."""
    gen = torch.Generator().manual_seed(3)
    n, m, eps = 13, 97, 0.5
    C = torch.randint(0, 6, (1, n, m), generator=gen).to(torch.float64)
    C[0, :, ::7] = float("inf")
    C[0, 1:, 3] = 1e6
    C[0, 0] = float("inf")  # a row with no allowed pair: its top k are its first k columns
    a = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    b = torch.full((1, m), 1.0 / m, dtype=torch.float64)
    f = torch.zeros(1, n, dtype=torch.float64)
    g = torch.zeros(1, m, dtype=torch.float64)
    g[0, 10:20] = 0.5  # exactly representable: ties survive the scaling
    a, b, C, f, g = (t.to(dtype) for t in (a, b, C, f, g))
    idx, val = _ops.ot_sparse_plan(a, b, C, f, g, eps, k)
    x = (g[0] - C[0]) / eps  # each row's log-values up to its constant
    for i in range(n):
        ranked = sorted(range(m), key=lambda j: (-float(x[i, j]), j))
        assert idx[0, i].tolist() == sorted(ranked[:k]), f"row {i}"
    ref = ot_sparse_plan_ref(a, b, C, f, g, eps, m)[1].sort(dim=2, descending=True).values[..., :k]
    got = val.sort(dim=2, descending=True).values
    torch.testing.assert_close(got, ref, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_cg_matches_dense_solve(device, dtype):
    a, b, C, f, g = _potentials(3, 20, 13, dtype, device)
    idx, val = _ops.ot_sparse_plan(a, b, C, f, g, 0.05, 3)
    mass, row, col = _ops.ot_dual(a, b, C, f, g, 0.05)
    r, c = a * row, b * col
    gen = torch.Generator().manual_seed(1)
    rf = torch.randn(3, 20, generator=gen, dtype=torch.float64).to(device, dtype)
    rg = torch.randn(3, 13, generator=gen, dtype=torch.float64).to(device, dtype)
    shift = 1e-3
    xf, xg, iters = _ops.ot_newton_cg(idx, val, r, c, rf, rg, shift, 500, 1e-12 if dtype == torch.float64 else 1e-6)
    ef, eg = ot_newton_cg_ref(idx.cpu(), val.cpu().double(), r.cpu().double(), c.cpu().double(),
                              rf.cpu().double(), rg.cpu().double(), shift)
    tol = 1e-8 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(xf.cpu().double(), ef, rtol=tol, atol=tol)
    torch.testing.assert_close(xg.cpu().double(), eg, rtol=tol, atol=tol)
    assert bool((iters > 0).all() and (iters < 500).all())


def test_random_assignment_converges_where_sinkhorn_is_slow():
    """The seed paper's experiment: n = 500, uniform random costs, eps = 1e-3. Sinkhorn needs ~25,000
    iterations for 1e-9 here (not run: minutes); SNS reaches it in a few tens of Newton steps."""
    gen = torch.Generator().manual_seed(0)
    n = 500
    C = torch.rand(n, n, generator=gen, dtype=torch.float64)
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    res = sparseops.ot.sinkhorn_newton_sparse(a, a, C, 1e-3, tol=1e-9)
    assert bool(res.converged) and int(res.n_iter) <= 50
    P = res.plan()
    err = (P.sum(1) - a).abs().sum() + (P.sum(0) - a).abs().sum()
    assert err <= 1e-9
    # Sinkhorn after the same wall of iterations is nowhere near.
    slow = _ops.sinkhorn_log(a[None], a[None], C, 1e-3, 200, 0.0, 200)
    assert slow[4][0, -1] > 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sinkhorn_budget", [0, 500])
def test_sns_agrees_with_sinkhorn(dtype, sinkhorn_budget):
    """Budget 0: Newton steps after the warm start; 500: this easy problem (eps = 0.02) is finished by
    the continued Sinkhorn stage, without Newton steps."""
    a, b, C, _, _ = _potentials(2, 40, 30, torch.float64, seed=4)
    a, b, C = a.to(dtype), b.to(dtype), C.to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    sns = sparseops.ot.sinkhorn_newton_sparse(a, b, C, 0.02, tol=tol, sinkhorn_budget=sinkhorn_budget)
    assert bool((sns.n_iter > 0).all()) if sinkhorn_budget == 0 else bool((sns.n_iter == 0).all())
    sk = sparseops.ot.sinkhorn(a, b, C, 0.02, tol=tol, max_iter=20000)
    assert bool(sns.converged.all()) and bool(sk.converged.all())
    ctol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(sns.cost, sk.cost, atol=ctol, rtol=0)
    torch.testing.assert_close(sns.plan(), sk.plan(), atol=ctol, rtol=0)
    assert sns.err_history.shape == (2, 51)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_entries_solved_in_parallel_match_one_by_one(threads):
    """On CPU small batch entries go to threads, one each: the result is that of solving them alone,
    bit for bit (each entry is a deterministic chain of single-threaded kernels)."""
    a, b, C, _, _ = _potentials(5, 30, 24, torch.float64, seed=7)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = sparseops.ot.sinkhorn_newton_sparse(a, b, C, 0.01, tol=1e-10, sinkhorn_budget=0)
    finally:
        torch.set_num_threads(before)
    for e in range(5):
        one = sparseops.ot.sinkhorn_newton_sparse(a[e], b[e], C[e], 0.01, tol=1e-10, sinkhorn_budget=0)
        assert torch.equal(one.f, batch.f[e]) and torch.equal(one.g, batch.g[e])
        assert float(one.cost) == float(batch.cost[e]) and int(one.n_iter) == int(batch.n_iter[e]) > 0
        torch.testing.assert_close(one.err_history, batch.err_history[e], equal_nan=True, rtol=0, atol=0)


def test_opcheck():
    """Without requires_grad only: the Newton kernels are not differentiable (SNS runs them under
    no_grad; its cost is documented as not differentiable)."""
    a, b, C, f, g = _potentials(2, 9, 11, torch.float64)
    torch.library.opcheck(_ops.ot_sparse_plan, (a, b, C, f, g, 0.05, 3))
    with torch.no_grad():
        idx, val = _ops.ot_sparse_plan(a, b, C, f, g, 0.05, 3)
        _, row, col = _ops.ot_dual(a, b, C, f, g, 0.05)
    rf, rg = torch.randn(2, 9, dtype=torch.float64), torch.randn(2, 11, dtype=torch.float64)
    torch.library.opcheck(_ops.ot_newton_cg, (idx, val, a.detach() * row, b.detach() * col, rf, rg, 1e-6, 100, 1e-10))
    torch.library.opcheck(_ops.sinkhorn_newton_sparse, (a, b, C, 0.05, 5, 10, 3, 1e-10, 100, 0))
    torch.library.opcheck(_ops.sinkhorn_newton_sparse, (a, b, C[0], 0.05, 20, 4, 2, 1e-6, 100, 500))
    g0 = torch.randn(2, 11, dtype=torch.float64)
    torch.library.opcheck(_ops.sinkhorn_newton_sparse, (a, b, C, 0.05, 5, 10, 3, 1e-10, 100, 0, g0))


def test_warm_start_from_earlier_potentials():
    """g_init starts the warm start's Sinkhorn there: from a solution it stops at once, from a nearby
    problem's it needs fewer Newton steps, and either way it reaches the same optimum as a cold start."""
    a, b, C, _, _ = _potentials(2, 40, 30, torch.float64, seed=5)
    cold = sparseops.ot.sinkhorn_newton_sparse(a, b, C, 0.005, tol=1e-10, sinkhorn_budget=0)
    again = sparseops.ot.sinkhorn_newton_sparse(a, b, C, 0.005, tol=1e-10, sinkhorn_budget=0, g_init=cold.g)
    assert bool((cold.n_iter > 0).all()) and bool((again.n_iter == 0).all()) and bool(again.converged.all())
    torch.testing.assert_close(again.cost, cold.cost, atol=1e-12, rtol=0)
    C2 = C * (1 + 0.02 * torch.rand(C.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    near_cold = sparseops.ot.sinkhorn_newton_sparse(a, b, C2, 0.005, tol=1e-10, sinkhorn_budget=0)
    near_warm = sparseops.ot.sinkhorn_newton_sparse(a, b, C2, 0.005, tol=1e-10, sinkhorn_budget=0, g_init=cold.g)
    assert bool(near_warm.converged.all()) and bool((near_warm.n_iter < near_cold.n_iter).all())
    torch.testing.assert_close(near_warm.cost, near_cold.cost, atol=1e-12, rtol=0)
    one = sparseops.ot.sinkhorn_newton_sparse(a[1], b[1], C2[1], 0.005, tol=1e-10, sinkhorn_budget=0, g_init=cold.g[1])
    assert torch.equal(one.f, near_warm.f[1]) and torch.equal(one.g, near_warm.g[1])  # [m] when unbatched
    sk = sparseops.ot.sinkhorn(a, b, C, 0.005, tol=1e-10, max_iter=100000)
    sk_warm = sparseops.ot.sinkhorn(a, b, C2, 0.005, tol=1e-10, max_iter=100000, g_init=sk.g)
    sk_cold = sparseops.ot.sinkhorn(a, b, C2, 0.005, tol=1e-10, max_iter=100000)
    assert bool((sk_warm.n_iter < sk_cold.n_iter).all())
    torch.testing.assert_close(sk_warm.cost, sk_cold.cost, atol=1e-9, rtol=0)


def test_bad_g_init():
    a, b, C, _, _ = _potentials(2, 5, 4, torch.float64)
    for fn in (sparseops.ot.sinkhorn, sparseops.ot.sinkhorn_newton_sparse):
        name = fn.__name__
        with pytest.raises(ValueError, match=name + r": expected g_init of shape \[2, 4\] like b \(got \[2, 5\]\)"):
            fn(a, b, C, 0.05, g_init=torch.zeros(2, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match=name + r": expected g_init of shape \[4\] like b \(got \[1, 4\]\)"):
            fn(a[0], b[0], C[0], 0.05, g_init=torch.zeros(1, 4, dtype=torch.float64))
        with pytest.raises(TypeError, match=name + r": expected g_init to have C's dtype torch.float64 \(got torch.float32\)"):
            fn(a, b, C, 0.05, g_init=torch.zeros(2, 4))
    op = _ops.sinkhorn_newton_sparse
    with pytest.raises(RuntimeError, match=r"sinkhorn_newton_sparse: expected g_init of shape \[B, m\] = \[2, 4\] \(got \[2, 3\]\)"):
        op(a, b, C, 0.05, 20, 10, 2, 1e-9, 100, 500, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"sinkhorn_newton_sparse: expected g_init to be finite"):
        op(a, b, C, 0.05, 20, 10, 2, 1e-9, 100, 500, torch.full((2, 4), float("inf"), dtype=torch.float64))


def test_compile_newton_kernels():
    """The whole solve (one op with a fake kernel) and the kernels it drives trace without graph breaks."""
    a, b, C, f, g = _potentials(1, 9, 11, torch.float64)

    def solve(a, b, C):
        warm = _ops.sinkhorn_newton_sparse(a, b, C, 0.05, 5, 10, 3, 1e-6, 100, 0)[1]
        return _ops.sinkhorn_newton_sparse(a, b, C, 0.05, 5, 10, 3, 1e-10, 100, 0, warm)

    compiled_solve = torch.compile(solve, fullgraph=True, backend="aot_eager")
    for x, y in zip(compiled_solve(a, b, C), solve(a, b, C)):
        torch.testing.assert_close(x, y)

    def newton_direction(a, b, C, f, g):
        _, row, col = _ops.ot_dual(a, b, C, f, g, 0.05)
        r, c = a * row, b * col
        idx, val = _ops.ot_sparse_plan(a, b, C, f, g, 0.05, 2)
        return _ops.ot_newton_cg(idx, val, r, c, 0.05 * (a - r), 0.05 * (b - c), 1e-8, 100, 1e-10)[:2]

    compiled = torch.compile(newton_direction, fullgraph=True, backend="aot_eager")
    for x, y in zip(compiled(a, b, C, f, g), newton_direction(a, b, C, f, g)):
        torch.testing.assert_close(x, y)


def test_bad_inputs():
    a, b, C, f, g = _potentials(1, 5, 4, torch.float64)
    with pytest.raises(RuntimeError, match=r"ot_sparse_plan: expected 1 <= k <= m = 4 \(got k=5\)"):
        _ops.ot_sparse_plan(a, b, C, f, g, 0.05, 5)
    idx, val = _ops.ot_sparse_plan(a, b, C, f, g, 0.05, 2)
    bad = idx.clone()
    bad[0, 2, 1] = 4
    r, c = torch.ones(1, 5, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"ot_newton_cg: expected idx in \[0, m\) = \[0, 4\) \(got min 0, max 4\)"):
        _ops.ot_newton_cg(bad, val, r, c, r, c, 0.0, 10, 1e-6)
    # A negative index in a later batch entry, entries spread over threads: still caught, never read.
    idx3, val3 = idx.expand(3, -1, -1).clone(), val.expand(3, -1, -1).contiguous()
    idx3[2, 4, 0] = -1
    r3, c3 = r.expand(3, -1).contiguous(), c.expand(3, -1).contiguous()
    with pytest.raises(RuntimeError, match=r"ot_newton_cg: expected idx in \[0, m\) = \[0, 4\) \(got min -1, max 3\)"):
        _ops.ot_newton_cg(idx3, val3, r3, c3, r3, c3, 0.0, 10, 1e-6)
    with pytest.raises(RuntimeError, match=r"ot_newton_cg: expected rhs_g of shape \[1, 4\] \(got \[1, 5\]\)"):
        _ops.ot_newton_cg(idx, val, r, c, r, r, 0.0, 10, 1e-6)
    with pytest.raises(RuntimeError, match=r"ot_newton_cg: expected shift to be finite and >= 0 \(got -1\)"):
        _ops.ot_newton_cg(idx, val, r, c, r, c, -1.0, 10, 1e-6)
    with pytest.raises(ValueError, match=r"sinkhorn_newton_sparse: expected 0 < density <= 1 \(got 2.0\)"):
        sparseops.ot.sinkhorn_newton_sparse(a[0], b[0], C[0], 0.05, density=2.0)
    with pytest.raises(ValueError, match=r"sinkhorn_newton_sparse: expected eps to be finite and > 0 \(got 0.0\)"):
        sparseops.ot.sinkhorn_newton_sparse(a[0], b[0], C[0], 0.0)
    with pytest.raises(ValueError, match=r"sinkhorn_newton_sparse: expected sum\(a\) == sum\(b\)"):
        sparseops.ot.sinkhorn_newton_sparse(a[0], 2 * b[0], C[0], 0.05)
    with pytest.raises(ValueError, match=r"sinkhorn_newton_sparse: expected cg_max_iter >= 1 \(got 0\)"):
        sparseops.ot.sinkhorn_newton_sparse(a[0], b[0], C[0], 0.05, cg_max_iter=0)
    with pytest.raises(ValueError, match=r"expected warmup_iters, max_newton and sinkhorn_budget >= 0 \(got 20, 50, -1\)"):
        sparseops.ot.sinkhorn_newton_sparse(a[0], b[0], C[0], 0.05, sinkhorn_budget=-1)


def test_raw_solver_op_validates_everything():
    """The raw op is reachable without the Python wrapper: every setting and value it relies on is checked."""
    a, b, C, _, _ = _potentials(1, 5, 4, torch.float64)
    op = _ops.sinkhorn_newton_sparse
    ok = (a, b, C, 0.05, 20, 10, 2, 1e-9, 100, 500)
    for pos, value, message in [
        (3, -1.0, r"expected eps to be finite and > 0 \(got -1\)"),
        (4, -1, r"expected warmup_iters, max_newton and sinkhorn_budget >= 0 \(got -1, 10, 500\)"),
        (6, 5, r"expected 1 <= k <= m = 4 \(got k=5\)"),
        (6, 0, r"expected 1 <= k <= m = 4 \(got k=0\)"),
        (7, float("nan"), r"expected tol to be finite and >= 0 \(got nan\)"),
        (8, 0, r"expected cg_max_iter >= 1 \(got 0\)"),
        (9, -3, r"expected warmup_iters, max_newton and sinkhorn_budget >= 0 \(got 20, 10, -3\)"),
    ]:
        args = list(ok)
        args[pos] = value
        with pytest.raises(RuntimeError, match="sinkhorn_newton_sparse: " + message):
            op(*args)
    bad_C = C.clone()
    bad_C[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"sinkhorn_newton_sparse: expected C without NaN"):
        op(a, b, bad_C, *ok[3:])
    with pytest.raises(RuntimeError, match=r"sinkhorn_newton_sparse: expected C's last two dims to be \(n, m\) = \(5, 4\)"):
        op(a, b, C[:, :, :3], *ok[3:])


def test_zero_tol_runs_to_max_newton_and_warns():
    """tol = 0 is reachable only by an exact solve: the Sinkhorn stage cannot predict it (no log(0)), the
    Newton steps run to max_newton, and the result says it did not converge."""
    a, b, C, _, _ = _potentials(1, 6, 5, torch.float64)
    with pytest.warns(RuntimeWarning, match="did not reach tol=0 in max_newton=3 steps"):
        res = sparseops.ot.sinkhorn_newton_sparse(a, b, C, 0.05, tol=0.0, max_newton=3)
    assert int(res.n_iter[0]) == 3 and not bool(res.converged[0])
    assert bool(torch.isfinite(res.err_history[0]).all()) and float(res.err_history[0, -1]) < 1e-8


@pytest.mark.requires_cuda
def test_sns_on_cuda_matches_cpu():
    a, b, C, _, _ = _potentials(2, 60, 50, torch.float64, seed=2)
    cpu = sparseops.ot.sinkhorn_newton_sparse(a, b, C, 0.01, tol=1e-10)
    gpu = sparseops.ot.sinkhorn_newton_sparse(a.cuda(), b.cuda(), C.cuda(), 0.01, tol=1e-10)
    assert bool(gpu.converged.all())
    torch.testing.assert_close(gpu.cost.cpu(), cpu.cost, atol=1e-10, rtol=0)
