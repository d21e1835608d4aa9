"""Sinkhorn-Newton-Sparse (SNS): Sinkhorn warm start, then Newton steps on the dual with a sparsified
Hessian. After Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn
Algorithm with Sparse Newton Iterations" (ICLR 2024).

Python face of the ``sparseops::sinkhorn_newton_sparse`` op (the whole solve, one op call:
``csrc/ot/sns_composite.cpp``, built from the ``sinkhorn_log`` warm start, ``ot_dual`` (fused
objective/gradient) and the Newton kernels ``ot_sparse_plan`` and ``ot_newton_cg`` in
``csrc/ot/sns_*``); the fake kernels of those three ops are here.

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
the step. Before each step k doubles until the kept entries hold all but min(1e-2, max(1e-5, 0.1 err))
of P's mass (the dropped share sets the linear part of the convergence rate: coarse while the error is
large, fine near the end so the steps stay quadratic); a step that fails or needs t < 1/4 also doubles
k (a failed one takes one Sinkhorn iteration instead): the density adapts to the problem from a sparse
start.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from ._problem import batch_potential, batch_problem, check_eps, fake_g_init, fake_problem_shapes
from .sinkhorn import OTResult, _fake_potentials

_ops = torch.ops.sparseops

__all__ = ["sinkhorn_newton_sparse"]


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
    g_init: Optional[Tensor] = None,
) -> OTResult:
    """Balanced entropic OT by Sinkhorn-Newton-Sparse (module docstring): converges to small marginal
    errors at small eps in tens of Newton steps where Sinkhorn needs thousands of iterations.

    Args:
        a, b, C, eps: as :func:`sparseops.ot.sinkhorn` (balanced only). float64 is recommended for
            tol below ~1e-6.
        warmup_iters: Sinkhorn iterations before the first Newton step (at least 1 is run).
        max_newton: at most this many Newton steps (per batch entry).
        density: fraction of each row of P kept in the sparse Hessian (default 8 / n, at least one
            entry per row); doubled while the kept entries miss more of P's mass than the error allows
            (module docstring) and after a failed step.
        tol: stop when ``sum |P1 - a| + sum |P^T1 - b|`` <= tol.
        cg_max_iter: CG iterations per Newton step (default 2 (n + m)).
        sinkhorn_budget: after the warm start, while Sinkhorn's observed linear rate predicts tol within
            this many more iterations (large eps), Sinkhorn continues, in chunks of up to 100 iterations
            that re-estimate the rate (Newton steps are left for what remains, n_iter = 0 when none are
            needed); 0 always goes to Newton.
        g_init: ``[m]`` or ``[B, m]`` potentials to start from instead of g = 0, in cost units (e.g.
            ``result.g`` of a solve of a nearby problem: a warm start for a sequence of related
            problems); the warm start's Sinkhorn iterations begin there.

    Returns:
        :class:`OTResult` with ``n_iter`` = Newton steps, ``err_history`` [B, max_newton + 1] (the error
        after the warm start, then after each step; NaN after the stop). ``cost`` is the dual objective,
        not differentiable (use :func:`sparseops.ot.sinkhorn` for gradients). Each batch entry is solved
        to its own stop, in one op call (the driver is C++); on CPU, entries of under 2^18 costs (or at
        least as many entries as threads) are solved in parallel, one thread each. A warning is emitted
        when some entry did not reach tol.

    Extra memory per Newton step: the sparse plan (n k values + indices), CG's by-column copy of it
    (~16 n k bytes on CPU; a thread keeps it for its next solve when at most 8 MiB) and ~12 (n + m)
    scalars; no n x m buffer. Each step reads C 2-3 times (objective and gradient, sparse plan, line
    search).
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
    if warmup_iters < 0 or max_newton < 0 or sinkhorn_budget < 0:
        raise ValueError(f"{op}: expected warmup_iters, max_newton and sinkhorn_budget >= 0 (got {warmup_iters}, "
                         f"{max_newton}, {sinkhorn_budget})")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{op}: expected tol finite and >= 0 (got {tol})")
    k = max(1, min(m, math.ceil(density * m)))
    cg_max_iter = cg_max_iter if cg_max_iter is not None else 2 * (n + m)
    if cg_max_iter < 1:
        raise ValueError(f"{op}: expected cg_max_iter >= 1 (got {cg_max_iter})")
    g0 = batch_potential(op, "g_init", g_init, b2, unbatched)
    with torch.no_grad():
        f, g, cost, n_iter, hist = _ops.sinkhorn_newton_sparse(a2, b2, C2, eps, int(warmup_iters), int(max_newton), k,
                                                               float(tol), int(cg_max_iter), int(sinkhorn_budget), g0)
    final = hist.gather(1, n_iter[:, None])[:, 0]
    hist = hist.masked_fill(hist < 0, math.nan)  # the op marks the steps after the stop with -1
    converged = final <= tol
    if not bool(converged.all()):
        import warnings

        warnings.warn(f"{op}: {int((~converged).sum())} of {converged.numel()} problems did not reach tol={tol:g} in "
                      f"max_newton={max_newton} steps (final marginal error up to {float(final.max()):.3g})",
                      RuntimeWarning, stacklevel=2)
    if unbatched:
        return OTResult(f[0], g[0], cost[0], n_iter[0], converged[0], hist[0], a, b, C, eps)
    return OTResult(f, g, cost, n_iter, converged, hist, a2, b2, C2, eps)


@torch.library.register_fake("sparseops::sinkhorn_newton_sparse")
def _sinkhorn_newton_sparse_fake(a, b, C, eps, warmup_iters, max_newton, k, tol, cg_max_iter, sinkhorn_budget,
                                 g_init=None):
    op = "sinkhorn_newton_sparse"
    B, n, m = fake_problem_shapes(op, a, b, C)
    fake_g_init(op, g_init, C, B, m)
    torch._check(1 <= k <= m, lambda: f"{op}: expected 1 <= k <= m = {m} (got k={k})")
    torch._check(max_newton >= 0, lambda: f"{op}: expected max_newton >= 0 (got {max_newton})")
    return (C.new_empty(B, n), C.new_empty(B, m), C.new_empty(B), C.new_empty(B, dtype=torch.int64),
            C.new_empty(B, max_newton + 1))


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


