"""Entropic OT between point clouds without the n x m cost matrix: ``sinkhorn_points``.

Python face of the ``sparseops::sinkhorn_points`` and ``ot_points_grad`` ops (fake kernels and
autograd here; kernels in ``csrc/ot/sinkhorn_cpu.cpp`` (``PointCosts``) and ``csrc/ot/ot_kernel.cu``
(``PointCost``)). The costs ``c(x_i, y_j) = |x_i - y_j|_p^p`` are recomputed tile by tile inside the
log-sum-exp passes, so memory is O(n + m) (plus y transposed once): n = m = 10^5 and beyond fit on
one CPU. Conventions and outputs are those of :func:`sparseops.ot.sinkhorn`.

Gradients of ``cost`` (envelope theorem): w.r.t. x_i, ``sum_j P_ij dc/dx_i`` (= 2 (r_i x_i - (P y)_i)
for p = 2, with r = P1), w.r.t. y alike, computed by ``ot_points_grad`` without the plan (a pass over all
pairs); w.r.t. a and b the centred potentials (balanced only: with ``rho`` the marginal gradients need
the plan's row sums and are not implemented; x and y gradients are).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)
from ._problem import check_eps, check_rho
from .sinkhorn import OTResult

_ops = torch.ops.sparseops

__all__ = ["sinkhorn_points"]


def sinkhorn_points(
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    p: int = 2,
    max_iter: int = 1000,
    tol: float = 1e-9,
    check_every: int = 10,
    rho: Optional[float] = None,
) -> OTResult:
    """Log-domain Sinkhorn between point clouds, costs recomputed on the fly (memory O(n + m)).

    Args:
        x: ``[n, d]`` or ``[B, n, d]`` source points; y: ``[m, d]`` or ``[B, m, d]``; float32/float64, finite.
        eps: entropic regularisation (> 0) in cost units.
        a, b: marginals ``[n]`` / ``[B, n]`` and ``[m]`` / ``[B, m]`` (default uniform, mass 1).
        p: 2 (squared Euclidean, default) or 1 (L1) ground cost.
        max_iter, tol, check_every, rho: as :func:`sparseops.ot.sinkhorn`.

    Returns:
        :class:`OTResult` (``C`` is None; ``plan()`` builds the costs on demand). ``cost`` is
        differentiable w.r.t. x, y (and a, b when balanced).

    Extra memory: y transposed (m d scalars), one 512-entry cost tile per thread and ~4 (n + m) scalars
    (balanced with every b_j > 0, the fused iteration: 3 m scalars per thread instead of the tile);
    the backward, threads x m x d partial sums. Each pass recomputes n m costs (d operations each).
    """
    op = "sinkhorn_points"
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected {name} to be a Tensor (got {type(t).__name__})")
    if x.dtype not in (torch.float32, torch.float64) or y.dtype != x.dtype:
        raise TypeError(f"{op}: expected x and y float32 or float64 of one dtype (got {x.dtype}, {y.dtype})")
    unbatched = x.dim() == 2
    if x.dim() != y.dim() or x.dim() not in (2, 3):
        raise ValueError(f"{op}: expected x and y both [n, d] or both [B, n, d] (got {tuple(x.shape)}, {tuple(y.shape)})")
    x3, y3 = (x.unsqueeze(0), y.unsqueeze(0)) if unbatched else (x, y)
    if x3.shape[0] != y3.shape[0] or x3.shape[2] != y3.shape[2]:
        raise ValueError(f"{op}: expected x [B, n, d] and y [B, m, d] with one B and d (got {tuple(x.shape)}, {tuple(y.shape)})")
    if p not in (1, 2):
        raise ValueError(f"{op}: expected p in {{1, 2}} (got {p})")
    eps = check_eps(op, eps)
    rho = check_rho(op, rho)
    B, n, m = x3.shape[0], x3.shape[1], y3.shape[1]
    a2 = x3.new_full((B, n), 1.0 / n) if a is None else (a.unsqueeze(0) if a.dim() == 1 else a)
    b2 = y3.new_full((B, m), 1.0 / m) if b is None else (b.unsqueeze(0) if b.dim() == 1 else b)
    if a2.shape != (B, n) or b2.shape != (B, m):
        raise ValueError(f"{op}: expected a [B, n] = [{B}, {n}] and b [B, m] = [{B}, {m}] (got {tuple(a2.shape)}, "
                         f"{tuple(b2.shape)})")
    if max_iter < 1 or check_every < 1:
        raise ValueError(f"{op}: expected max_iter >= 1 and check_every >= 1 (got {max_iter}, {check_every})")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{op}: expected tol finite and >= 0 (got {tol})")
    f, g, cost, n_iter, hist = _ops.sinkhorn_points(x3, y3, a2, b2, eps, p, max_iter, float(tol), check_every, rho)
    hist = torch.where(hist < 0, torch.full_like(hist, math.nan), hist)
    last = torch.clamp((n_iter + check_every - 1) // check_every - 1, min=0)
    final_err = hist.gather(1, last.unsqueeze(1)).squeeze(1)
    converged = final_err <= tol
    if not torch.compiler.is_compiling() and not bool(converged.all()):
        warnings.warn(f"{op}: {int((~converged).sum())} of {converged.numel()} problems did not reach tol={tol:g} "
                      f"in max_iter={max_iter} iterations (final marginal error up to {float(final_err.max()):.3g})",
                      RuntimeWarning, stacklevel=2)
    f, g = f.detach(), g.detach()
    if unbatched:
        return OTResult(f[0], g[0], cost[0], n_iter[0], converged[0], hist[0], a2[0], b2[0], None, eps, (x3, y3, p))
    return OTResult(f, g, cost, n_iter, converged, hist, a2, b2, None, eps, (x3, y3, p))


def _fake_points(op, x, y, a, b, p):
    torch._check(x.dtype in (torch.float32, torch.float64), lambda: f"{op}: expected x float32/float64 (got {x.dtype})")
    torch._check(y.dtype == x.dtype and a.dtype == x.dtype and b.dtype == x.dtype, lambda: f"{op}: expected one dtype")
    torch._check(x.dim() == 3 and y.dim() == 3, lambda: f"{op}: expected x [B, n, d] and y [B, m, d]")
    B, n, d, m = x.shape[0], x.shape[1], x.shape[2], y.shape[1]
    torch._check(y.shape[0] == B and y.shape[2] == d, lambda: f"{op}: expected y of shape [B, m, d] with B = {B}, d = {d}")
    torch._check(tuple(a.shape) == (B, n), lambda: f"{op}: expected a of shape [{B}, {n}]")
    torch._check(tuple(b.shape) == (B, m), lambda: f"{op}: expected b of shape [{B}, {m}]")
    torch._check(p in (1, 2), lambda: f"{op}: expected p in {{1, 2}} (got {p})")
    return B, n, m, d


@torch.library.register_fake("sparseops::sinkhorn_points")
def _sinkhorn_points_fake(x, y, a, b, eps, p=2, max_iter=1000, tol=1e-9, check_every=10, rho=None):
    op = "sinkhorn_points"
    B, n, m, _ = _fake_points(op, x, y, a, b, p)
    torch._check(eps > 0 and math.isfinite(eps), lambda: f"{op}: expected eps to be finite and > 0 (got {eps})")
    torch._check(max_iter >= 1 and check_every >= 1, lambda: f"{op}: expected max_iter >= 1 and check_every >= 1")
    hist = (max_iter + check_every - 1) // check_every
    return (x.new_empty(B, n), x.new_empty(B, m), x.new_empty(B), x.new_empty(B, dtype=torch.int64), x.new_empty(B, hist))


@torch.library.register_fake("sparseops::ot_points_grad")
def _ot_points_grad_fake(x, y, a, b, f, g, eps, p=2):
    op = "ot_points_grad"
    B, n, m, d = _fake_points(op, x, y, a, b, p)
    torch._check(tuple(f.shape) == (B, n) and tuple(g.shape) == (B, m), lambda: f"{op}: expected f [{B}, {n}], g [{B}, {m}]")
    return x.new_empty(B, n, d), x.new_empty(B, m, d)


def _setup(ctx, inputs, output) -> None:
    x, y, a, b, eps, p, _, _, _, rho = inputs
    f, g = output[0], output[1]
    ctx.eps, ctx.p, ctx.rho = eps, p, rho
    ctx.save_for_backward(x, y, a, b, f, g)


def _backward(ctx, grad_f, grad_g, grad_cost, grad_n_iter, grad_hist):
    x, y, a, b, f, g = ctx.saved_tensors
    if grad_cost is None:
        return (None,) * 10
    w = grad_cost
    grad_x = grad_y = grad_a = grad_b = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        gx, gy = _ops.ot_points_grad(x, y, a, b, f, g, ctx.eps, ctx.p)
        grad_x, grad_y = gx * w[:, None, None], gy * w[:, None, None]
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        if ctx.rho is not None:
            raise NotImplementedError("sinkhorn_points: gradients w.r.t. the marginals a, b are not implemented for "
                                      "unbalanced transport (rho given); x and y gradients are")
        grad_a = (f - f.mean(1, keepdim=True)) * w[:, None]
        grad_b = (g - g.mean(1, keepdim=True)) * w[:, None]
    return grad_x, grad_y, grad_a, grad_b, None, None, None, None, None, None


torch.library.register_autograd("sparseops::sinkhorn_points", _backward, setup_context=_setup)
