"""Log-domain (batched, unbalanced-capable) Sinkhorn: ``sinkhorn`` and its ``OTResult``.

Python face of the ``sparseops::sinkhorn_log``, ``ot_plan`` and ``ot_dual`` ops: typed wrapper, fake
kernels and autograd, side by side. Kernels: ``csrc/ot/sinkhorn_*``, ``csrc/ot/lse_*``; reference:
``sparseops.reference.ot``.

Problem (entropic OT, GeomLoss's convention): for marginals ``a`` [n], ``b`` [m] and costs ``C`` [n, m],

    OT_eps(a, b, C) = min_P <C, P> + eps KL(P | a x b)   subject to P1 = a, P^T1 = b

(unbalanced, ``rho`` given: the constraints become the penalties ``rho KL(P1 | a) + rho KL(P^T1 | b)``).
Its dual is solved in potentials ``f`` [n], ``g`` [m] with ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``.
The plan is the one of POT's ``ot.sinkhorn`` (entropy regularisation differs from KL(P | a x b) by a
constant); the reported ``cost`` is the dual objective at the returned potentials, which equals OT_eps
at convergence.

Gradients (``cost`` only; ``f``, ``g`` are returned detached), by the envelope theorem at the optimum:
    d cost / d C = P (the plan; summed over the batch for a shared C),
    d cost / d a = f - mean(f), d cost / d b = g - mean(g)   (balanced: the cost is defined on the
        simplex only, so the gradient is defined up to a constant; the centred one is returned),
    unbalanced: d cost / d a_i = rho (1 - exp(-f_i / rho)) - eps ((P1)_i / a_i - sum(b)), likewise for b.
They are exact only as far as the solver converged (check ``converged``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from ._problem import batch_potential, batch_problem, check_eps, check_rho, fake_g_init, fake_problem_shapes

_ops = torch.ops.sparseops

__all__ = ["OTResult", "sinkhorn"]


@dataclass(frozen=True)
class OTResult:
    """The result of an entropic OT solve (batched shapes ``[B, ...]``, or unbatched when the inputs were).

    Attributes:
        f: ``[B, n]`` row potential (cost units), detached.
        g: ``[B, m]`` column potential, detached.
        cost: ``[B]`` the dual objective at (f, g) (= OT_eps at convergence); differentiable w.r.t. a, b, C.
        n_iter: ``[B]`` int64 iterations used (Sinkhorn: one f- and one g-update each; SNS: Newton steps
            after the warm start).
        converged: ``[B]`` bool, final marginal error <= tol.
        err_history: ``[B, k]`` marginal error at every check (NaN after the stop).
    """

    f: Tensor
    g: Tensor
    cost: Tensor
    n_iter: Tensor
    converged: Tensor
    err_history: Tensor
    a: Tensor
    b: Tensor
    C: Optional[Tensor]
    eps: float
    points: Optional[tuple] = None  # (x, y, p) for sinkhorn_points, whose C is never materialised

    def plan(self) -> Tensor:
        """The transport plan ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``: ``[B, n, m]`` (``[n, m]``
        unbatched). Materialised on demand: n * m scalars per batch entry (point clouds: the cost matrix
        too, once)."""
        unbatched = self.f.dim() == 1
        a, b = (self.a.unsqueeze(0), self.b.unsqueeze(0)) if unbatched else (self.a, self.b)
        f, g = (self.f.unsqueeze(0), self.g.unsqueeze(0)) if unbatched else (self.f, self.g)
        C = self.C
        if C is None:
            from .cost import cost_matrix

            x, y, p = self.points
            C = cost_matrix(x.detach(), y.detach(), p)
        P = _ops.ot_plan(a, b, C, f, g, self.eps)
        return P[0] if unbatched else P


def sinkhorn(
    a: Tensor,
    b: Tensor,
    C: Tensor,
    eps: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-9,
    check_every: int = 10,
    rho: Optional[float] = None,
    g_init: Optional[Tensor] = None,
) -> OTResult:
    """Entropic optimal transport by log-domain Sinkhorn iterations (fused, batched; CPU and CUDA).

    Args:
        a: ``[n]`` or ``[B, n]`` source marginal, >= 0 (zero-mass entries are allowed).
        b: ``[m]`` or ``[B, m]`` target marginal, >= 0. Balanced (``rho=None``): ``sum(a) == sum(b)`` per
            batch entry, else ValueError; a relative mismatch below 1e-5 (float32) / 1e-8 (float64) is
            absorbed by rescaling b to a's mass inside the solver.
        C: ``[n, m]`` (shared by the batch) or ``[B, n, m]`` costs; ``+inf`` forbids a pair; NaN and -inf
            are errors. float32 or float64 (all three tensors one dtype and device). Stable down to eps =
            1e-4 of the cost scale (log domain throughout).
        eps: entropic regularisation (> 0), in cost units.
        max_iter: at most this many iterations (one f- and one g-update each).
        tol: stop when the marginal error is <= tol: balanced, ``sum_i |(P1)_i - a_i|`` (the column
            marginals are exact after each g-update); unbalanced, ``max_i |f_i - f_i_previous|``.
        check_every: test convergence every this many iterations (the test itself costs no extra pass).
        rho: None (balanced) or the KL marginal relaxation strength (> 0) of unbalanced transport.
        g_init: ``[m]`` or ``[B, m]`` potentials to start from instead of g = 0, in cost units (e.g.
            ``result.g`` of a solve of a nearby problem: a warm start for a sequence of related
            problems). Not differentiated.

    Returns:
        :class:`OTResult`; a warning is emitted when some batch entry did not converge (not under
        ``torch.compile``: check ``converged`` there).

    Extra memory: ~4 (n + m) scalars per batch entry solved at once; balanced problems with an
    n x m C of at most 64 MiB per batch entry also hold one n x m kernel ``exp((f_i + g_j - C_ij)/eps)``
    per entry being solved (threads entries at once when the batch is at least the thread count): from the
    first iteration they run stabilised scaling (Schmitzer 2019: the current potentials absorbed into
    that kernel, each row scaled by its largest term at the first build, plain scaling on it with no exp
    per iteration, re-absorbed when the scalings leave
    [e^-100, e^100] (float32: e^-15, e^15), back to log-domain iterations if a sum underflows). Larger C,
    unbalanced ``rho`` and ``SPARSEOPS_OT_SCALING=0`` keep the log-domain iteration (no n x m buffer).
    ``plan()`` materialises P on demand. The marginals and costs are checked once per call (NaN, -inf, negative
    mass: a device sync on CUDA).
    """
    op = "sinkhorn"
    a2, b2, C2, unbatched = batch_problem(op, a, b, C)
    eps = check_eps(op, eps)
    rho = check_rho(op, rho)
    if max_iter < 1 or check_every < 1:
        raise ValueError(f"{op}: expected max_iter >= 1 and check_every >= 1 (got {max_iter}, {check_every})")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{op}: expected tol finite and >= 0 (got {tol})")
    g0 = batch_potential(op, "g_init", g_init, b2, unbatched)
    f, g, cost, n_iter, hist = _ops.sinkhorn_log(a2, b2, C2, eps, max_iter, float(tol), check_every, rho, g0)
    hist = torch.where(hist < 0, torch.full_like(hist, math.nan), hist)  # the op marks "no check" with -1
    last = torch.clamp((n_iter + check_every - 1) // check_every - 1, min=0)
    final_err = hist.gather(1, last.unsqueeze(1)).squeeze(1)
    converged = final_err <= tol
    if not torch.compiler.is_compiling() and not bool(converged.all()):
        warnings.warn(f"{op}: {int((~converged).sum())} of {converged.numel()} problems did not reach tol={tol:g} "
                      f"in max_iter={max_iter} iterations (final marginal error up to {float(final_err.max()):.3g}); "
                      "raise max_iter or eps, or use sinkhorn_newton_sparse", RuntimeWarning, stacklevel=2)
    f, g = f.detach(), g.detach()
    if unbatched:
        return OTResult(f[0], g[0], cost[0], n_iter[0], converged[0], hist[0], a, b, C, eps)
    return OTResult(f, g, cost, n_iter, converged, hist, a2, b2, C2, eps)


# ---------------------------------------------------------------------------------------------
# fake kernels


@torch.library.register_fake("sparseops::sinkhorn_log")
def _sinkhorn_log_fake(a, b, C, eps, max_iter=1000, tol=1e-9, check_every=10, rho=None, g_init=None):
    op = "sinkhorn_log"
    B, n, m = fake_problem_shapes(op, a, b, C)
    torch._check(eps > 0 and math.isfinite(eps), lambda: f"{op}: expected eps to be finite and > 0 (got {eps})")
    torch._check(max_iter >= 1, lambda: f"{op}: expected max_iter >= 1 (got {max_iter})")
    torch._check(check_every >= 1, lambda: f"{op}: expected check_every >= 1 (got {check_every})")
    torch._check(tol >= 0 and math.isfinite(tol), lambda: f"{op}: expected tol to be finite and >= 0 (got {tol})")
    torch._check(rho is None or rho > 0, lambda: f"{op}: expected rho > 0 (got {rho})")
    fake_g_init(op, g_init, C, B, m)
    hist = (max_iter + check_every - 1) // check_every
    return (a.new_empty(B, n), a.new_empty(B, m), a.new_empty(B), a.new_empty(B, dtype=torch.int64),
            a.new_empty(B, hist))


def _fake_potentials(op, a, b, C, f, g, eps):
    B, n, m = fake_problem_shapes(op, a, b, C)
    torch._check(eps > 0 and math.isfinite(eps), lambda: f"{op}: expected eps to be finite and > 0 (got {eps})")
    torch._check(f.dtype == C.dtype and tuple(f.shape) == (B, n), lambda: f"{op}: expected f of shape [{B}, {n}] in C's dtype")
    torch._check(g.dtype == C.dtype and tuple(g.shape) == (B, m), lambda: f"{op}: expected g of shape [{B}, {m}] in C's dtype")
    return B, n, m


@torch.library.register_fake("sparseops::ot_plan")
def _ot_plan_fake(a, b, C, f, g, eps):
    B, n, m = _fake_potentials("ot_plan", a, b, C, f, g, eps)
    return C.new_empty(B, n, m)


@torch.library.register_fake("sparseops::ot_dual")
def _ot_dual_fake(a, b, C, f, g, eps):
    B, n, m = _fake_potentials("ot_dual", a, b, C, f, g, eps)
    return C.new_empty(B), C.new_empty(B, n), C.new_empty(B, m)


# ---------------------------------------------------------------------------------------------
# autograd (the module docstring states the formulas)


def _sinkhorn_log_setup(ctx, inputs, output) -> None:
    a, b, C, eps, _, _, _, rho, _ = inputs
    f, g = output[0], output[1]
    ctx.eps, ctx.rho = eps, rho
    ctx.shared_cost = C.dim() == 2
    ctx.save_for_backward(a, b, C, f, g)


def _sinkhorn_log_backward(ctx, grad_f, grad_g, grad_cost, grad_n_iter, grad_hist):
    # Only the cost is differentiated; gradients reaching f and g are not propagated (documented).
    a, b, C, f, g = ctx.saved_tensors
    grad_a = grad_b = grad_C = None
    if grad_cost is None:
        return None, None, None, None, None, None, None, None, None
    w = grad_cost
    if ctx.needs_input_grad[2]:
        P = _ops.ot_plan(a, b, C, f, g, ctx.eps)
        grad_C = (P * w[:, None, None]).sum(0) if ctx.shared_cost else P * w[:, None, None]
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        if ctx.rho is None:
            grad_a = (f - f.mean(1, keepdim=True)) * w[:, None]
            grad_b = (g - g.mean(1, keepdim=True)) * w[:, None]
        else:
            rho, eps = ctx.rho, ctx.eps
            _, row, col = _ops.ot_dual(a, b, C, f, g, eps)
            mb, ma = b.sum(1, keepdim=True), a.sum(1, keepdim=True)
            grad_a = (rho * (1 - torch.exp(-f / rho)) - eps * (row - mb)) * w[:, None]
            grad_b = (rho * (1 - torch.exp(-g / rho)) - eps * (col - ma)) * w[:, None]
    return grad_a, grad_b, grad_C, None, None, None, None, None, None


torch.library.register_autograd("sparseops::sinkhorn_log", _sinkhorn_log_backward, setup_context=_sinkhorn_log_setup)
