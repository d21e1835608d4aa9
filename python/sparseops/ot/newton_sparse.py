"""Sinkhorn-Newton-Sparse (SNS): Sinkhorn warm start, then Newton steps on the dual with a sparsified
Hessian. After Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn
Algorithm with Sparse Newton Iterations" (ICLR 2024).

Python face of the ``sparseops::ot_sparse_plan`` and ``ot_newton_cg`` ops (fake kernels here; kernels
in ``csrc/ot/sns_*``), driving ``ot_dual`` (fused objective/gradient) and ``sinkhorn_log``.

The dual (balanced, conventions of :mod:`sparseops.ot.sinkhorn`) is the concave function
    D(f, g) = <a, f> + <b, g> - eps (sum_ij P_ij(f, g) - sum(a) sum(b)),
with gradient (a - P1, b - P^T1) and Hessian -(1/eps) [[diag(P1), P], [P^T, diag(P^T1)]]. A Newton step
solves M d = eps grad D with M = [[diag(P1), S], [S^T, diag(P^T1)]] + shift I, where S keeps the k largest
entries of each row of P (k = density * m, at least 1): M is symmetric and diagonally dominant (S <= P
entrywise), positive definite with the shift, which also fixes the gauge (the direction (1, -1) that
leaves P unchanged). CG (Jacobi-preconditioned, relative tolerance min(0.1, err), relaxed to
0.1 tol / err when that is looser: the last step need only reach tol; on CPU on the Schur
complement of the row block, which takes far fewer iterations) solves it; a
backtracking line search on D (Armijo, or a decrease of the marginal error near round-off level) picks
the step. A step that fails, needs t < 1/4, or does not halve the marginal error doubles k (a failed one
takes one Sinkhorn iteration instead): the density adapts to the problem from a sparse start.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from ._problem import batch_problem, check_eps
from .sinkhorn import OTResult, _fake_potentials

_ops = torch.ops.sparseops

__all__ = ["sinkhorn_newton_sparse"]


def _dual_state(a: Tensor, b: Tensor, C: Tensor, f: Tensor, g: Tensor, eps: float, mass_ab: float):
    """(objective, marginal error, P1, P^T1) at (f, g): one fused pass over C."""
    mass, row, col = _ops.ot_dual(a, b, C, f, g, eps)
    r, c = a * row, b * col
    # Few and fused torch calls: at n ~ 300 each call's overhead is worth a tenth of the pass over C.
    marginal_terms = float(torch.dot(a.view(-1), f.view(-1)) + torch.dot(b.view(-1), g.view(-1)))
    obj = marginal_terms - eps * (float(mass.sum()) - mass_ab)
    err = float(torch.dist(a, r, 1) + torch.dist(b, c, 1))
    return obj, err, r, c


# The continued Sinkhorn solve runs in chunks of at most this many iterations, re-estimating its rate
# after each: Sinkhorn's rate slows as it goes (fast early progress predicts too little), and a chunk
# whose rate no longer predicts tol within the budget hands over to Newton steps.
_SINKHORN_CHUNK = 100


def _observed_rate(errs, every):
    """The per-iteration linear rate of a marginal-error history sampled every `every` iterations, over
    its later half (Sinkhorn's rate slows as it goes: the recent one predicts best); NaN when it cannot
    be told."""
    recent = errs[(len(errs) - 1) // 2:]
    if len(recent) < 2 or not recent[0] > 0:
        return math.nan
    return (recent[-1] / recent[0]) ** (1.0 / (every * (len(recent) - 1)))


def _warm_start(a, b, C, eps, warmup_iters, tol, sinkhorn_budget):
    """Stage 1: warmup_iters Sinkhorn iterations (tol applies: an easy problem may finish here), then,
    while the observed linear rate predicts tol within the rest of sinkhorn_budget (large eps, where
    Sinkhorn converges fast and a Newton step, ~4 passes over C plus CG, costs tens of iterations),
    Sinkhorn continued in chunks. Returns (f, g, done): done = (dual objective, marginal error) as
    Sinkhorn reported them when it reached tol (its g is computed from f, so the column marginals are
    exact and its row error is the whole error), else None."""
    w = max(1, warmup_iters)
    every = max(1, w // 4)
    f, g, cost, _, hist = _ops.sinkhorn_log(a, b, C, eps, w, tol, every)
    errs = [float(e) for e in hist[0] if float(e) >= 0]
    budget = int(sinkhorn_budget)
    while True:
        if errs and errs[-1] <= tol:
            return f, g, (float(cost[0]), errs[-1])
        rate = _observed_rate(errs, every)
        if budget <= 0 or not (0 < rate < 1):
            return f, g, None
        needed = math.log(tol / errs[-1]) / math.log(rate)
        if needed > budget:
            return f, g, None
        chunk = min(budget, _SINKHORN_CHUNK, 10 * math.ceil(1.25 * needed / 10) + 10)
        every = 10
        f, g, cost, _, hist = _ops.sinkhorn_log(a, b, C, eps, chunk, tol, every, None, g)
        errs = [errs[-1]] + [float(e) for e in hist[0] if float(e) >= 0]
        budget -= chunk


def _solve_one(a, b, C, eps, warmup_iters, max_newton, k, tol, cg_max_iter, sinkhorn_budget):
    m = b.shape[1]
    f, g, done = _warm_start(a, b, C, eps, warmup_iters, tol, sinkhorn_budget)
    if done is not None:  # Sinkhorn reached tol: no Newton step, and no extra pass over C for the state
        obj, err = done
        return f, g, obj, 0, err, [err]
    b = b * (a.sum() / b.sum())  # the warm start checked the masses; absorb a round-off mismatch as it does
    mass_ab = float(a.sum() * b.sum())
    obj, err, r, c = _dual_state(a, b, C, f, g, eps, mass_ab)
    hist = [err]
    steps = 0
    while err > tol and steps < max_newton:
        steps += 1
        idx, val = _ops.ot_sparse_plan(a, b, C, f, g, eps, k)
        shift = 1e-10 * max(float(r.max()), float(c.max()))
        # Forcing term: min(0.1, err) keeps the steps quadratic; a step whose error needs to fall only
        # by tol / err (the last one) needs no tighter a solve than a tenth of that.
        cg_tol = min(0.1, max(err, 0.1 * tol / err))
        grad_f, grad_g = a - r, b - c
        df, dg, _ = _ops.ot_newton_cg(idx, val, r, c, eps * grad_f, eps * grad_g, shift, cg_max_iter, cg_tol)
        slope = float(torch.dot(grad_f.view(-1), df.view(-1)) + torch.dot(grad_g.view(-1), dg.view(-1)))
        t, accepted = 1.0, False
        for _ in range(30):
            fn, gn = f + t * df, g + t * dg
            obj_n, err_n, r_n, c_n = _dual_state(a, b, C, fn, gn, eps, mass_ab)
            if math.isfinite(obj_n) and (obj_n >= obj + 1e-4 * t * slope or err_n < err):
                accepted = True
                break
            t *= 0.5
        slow = not accepted or t < 0.25 or err_n > 0.5 * err
        if accepted:
            f, g, obj, err, r, c = fn, gn, obj_n, err_n, r_n, c_n
        if slow:
            k = min(m, 2 * k)  # the sparse Hessian was too crude (slow or failed step): keep more of P
        if not accepted:
            f, g, _, _, _ = _ops.sinkhorn_log(a, b, C, eps, 1, 0.0, 1, None, g)
            obj, err, r, c = _dual_state(a, b, C, f, g, eps, mass_ab)
        hist.append(err)
    return f, g, obj, steps, err, hist


def sinkhorn_newton_sparse(
    a: Tensor,
    b: Tensor,
    C: Tensor,
    eps: float,
    *,
    warmup_iters: int = 20,
    max_newton: int = 50,
    density: Optional[float] = None,
    tol: float = 1e-9,
    cg_max_iter: Optional[int] = None,
    sinkhorn_budget: int = 500,
) -> OTResult:
    """Balanced entropic OT by Sinkhorn-Newton-Sparse (module docstring): converges to small marginal
    errors at small eps in tens of Newton steps where Sinkhorn needs thousands of iterations.

    Args:
        a, b, C, eps: as :func:`sparseops.ot.sinkhorn` (balanced only). float64 is recommended for
            tol below ~1e-6.
        warmup_iters: Sinkhorn iterations before the first Newton step (at least 1 is run).
        max_newton: at most this many Newton steps (per batch entry).
        density: fraction of each row of P kept in the sparse Hessian (default 8 / n, at least one
            entry per row); doubled whenever a step fails or does not halve the marginal error.
        tol: stop when ``sum |P1 - a| + sum |P^T1 - b|`` <= tol.
        cg_max_iter: CG iterations per Newton step (default 2 (n + m)).
        sinkhorn_budget: after the warm start, while Sinkhorn's observed linear rate predicts tol within
            this many more iterations (large eps), Sinkhorn continues, in chunks of up to 100 iterations
            that re-estimate the rate (Newton steps are left for what remains, n_iter = 0 when none are
            needed); 0 always goes to Newton.

    Returns:
        :class:`OTResult` with ``n_iter`` = Newton steps, ``err_history`` [B, max_newton + 1] (the error
        after the warm start, then after each step; NaN after the stop). ``cost`` is the dual objective,
        not differentiable (use :func:`sparseops.ot.sinkhorn` for gradients). Batch entries are solved
        one after the other. A warning is emitted when some entry did not reach tol.

    Extra memory per Newton step: the sparse plan (n k values + indices), CG's by-column copy of it
    (~16 n k bytes on CPU) and ~12 (n + m) scalars; no n x m buffer. Each step reads C 2-3 times
    (objective and gradient, sparse plan, line search).
    """
    op = "sinkhorn_newton_sparse"
    a2, b2, C2, unbatched = batch_problem(op, a, b, C)
    eps = check_eps(op, eps)
    n, m = a2.shape[1], b2.shape[1]
    if density is None:
        # The seed paper keeps ~2 / n; from 2 the first steps mostly fail and double k anyway (random
        # assignment n=500 eps=1e-3: 9 steps from k=2, 5 from k=8, ~25% less time).
        density = min(1.0, 8.0 / n)
    if not (0 < density <= 1):
        raise ValueError(f"{op}: expected 0 < density <= 1 (got {density})")
    if warmup_iters < 0 or max_newton < 0:
        raise ValueError(f"{op}: expected warmup_iters >= 0 and max_newton >= 0 (got {warmup_iters}, {max_newton})")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{op}: expected tol finite and >= 0 (got {tol})")
    k = max(1, min(m, math.ceil(density * m)))
    cg_max_iter = cg_max_iter if cg_max_iter is not None else 2 * (n + m)
    fs, gs, costs, iters, hists = [], [], [], [], []
    with torch.no_grad():
        for e in range(a2.shape[0]):
            Ce = C2 if C2.dim() == 2 else C2[e:e + 1]
            ae, be = a2[e:e + 1], b2[e:e + 1]
            f, g, obj, steps, err, hist = _solve_one(ae, be, Ce, eps, warmup_iters, max_newton, k, tol, cg_max_iter,
                                                     sinkhorn_budget)
            fs.append(f)
            gs.append(g)
            costs.append(obj)
            iters.append(steps)
            hists.append(hist + [math.nan] * (max_newton + 1 - len(hist)))
    f, g = torch.cat(fs), torch.cat(gs)
    cost = torch.tensor(costs, dtype=C2.dtype, device=C2.device)
    n_iter = torch.tensor(iters, dtype=torch.int64, device=C2.device)
    hist = torch.tensor(hists, dtype=C2.dtype, device=C2.device)
    final = torch.tensor([h[s] for h, s in zip(hists, iters)], dtype=C2.dtype, device=C2.device)
    converged = final <= tol
    if not bool(converged.all()):
        import warnings

        warnings.warn(f"{op}: {int((~converged).sum())} of {converged.numel()} problems did not reach tol={tol:g} in "
                      f"max_newton={max_newton} steps (final marginal error up to {float(final.max()):.3g})",
                      RuntimeWarning, stacklevel=2)
    if unbatched:
        return OTResult(f[0], g[0], cost[0], n_iter[0], converged[0], hist[0], a, b, C, eps)
    return OTResult(f, g, cost, n_iter, converged, hist, a2, b2, C2, eps)


@torch.library.register_fake("sparseops::ot_sparse_plan")
def _ot_sparse_plan_fake(a, b, C, f, g, eps, k):
    B, n, m = _fake_potentials("ot_sparse_plan", a, b, C, f, g, eps)
    torch._check(1 <= k <= m, lambda: f"ot_sparse_plan: expected 1 <= k <= m = {m} (got k={k})")
    return C.new_empty(B, n, k, dtype=torch.int64), C.new_empty(B, n, k)


@torch.library.register_fake("sparseops::ot_newton_cg")
def _ot_newton_cg_fake(idx, val, row_diag, col_diag, rhs_f, rhs_g, shift, max_iter, tol):
    op = "ot_newton_cg"
    torch._check(val.dtype in (torch.float32, torch.float64), lambda: f"{op}: expected val float32/float64 (got {val.dtype})")
    torch._check(idx.dtype == torch.int64, lambda: f"{op}: expected idx int64 (got {idx.dtype})")
    torch._check(idx.dim() == 3 and val.shape == idx.shape, lambda: f"{op}: expected idx [B, n, k] and val of its shape")
    B, n, m = idx.shape[0], idx.shape[1], col_diag.shape[-1]
    for name, t, length in (("row_diag", row_diag, n), ("rhs_f", rhs_f, n), ("col_diag", col_diag, m), ("rhs_g", rhs_g, m)):
        torch._check(t.dtype == val.dtype and t.dim() == 2 and t.shape[0] == B and t.shape[1] == length,
                     lambda: f"{op}: expected {name} of shape [{B}, {length}] in val's dtype")
    torch._check(shift >= 0 and math.isfinite(shift), lambda: f"{op}: expected shift to be finite and >= 0 (got {shift})")
    torch._check(max_iter >= 1, lambda: f"{op}: expected max_iter >= 1 (got {max_iter})")
    return val.new_empty(B, n), val.new_empty(B, m), val.new_empty(B, dtype=torch.int64)


