"""Pure-PyTorch references for the ot ops (the test oracle): plain log-domain Sinkhorn with the same
conventions and stopping rule as ``sparseops::sinkhorn_log`` (see ``sparseops.ot.sinkhorn``), the plan,
the fused dual pass, the sparse plan and a dense solve of the Newton system. Readable first: every
half-iteration is a ``torch.logsumexp`` over an explicit ``[n, m]`` tensor."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["ot_dual_ref", "ot_newton_cg_ref", "ot_plan_ref", "ot_sparse_plan_ref", "sinkhorn_log_ref"]


def _log_weight(w: Tensor) -> Tensor:
    return torch.where(w > 0, w.log(), torch.full_like(w, -math.inf))


def _costs(C: Tensor, batch: int) -> Tensor:
    return C.expand(batch, *C.shape[-2:]) if C.dim() == 2 else C


def sinkhorn_log_ref(a: Tensor, b: Tensor, C: Tensor, eps: float, max_iter: int = 1000, tol: float = 1e-9,
                     check_every: int = 10, rho: Optional[float] = None, g_init: Optional[Tensor] = None):
    """(f [B, n], g [B, m], cost [B], n_iter [B], err_history [B, ceil(max_iter / check_every)], -1 after the stop)."""
    B, n, m = a.shape[0], a.shape[1], b.shape[1]
    Cb = _costs(C, B)
    tau = 1.0 if rho is None or math.isinf(rho) else rho / (rho + eps)
    balanced = tau == 1.0
    H = (max_iter + check_every - 1) // check_every
    fs, gs, costs, iters = [], [], [], []
    hist = torch.full((B, H), -1.0, dtype=a.dtype)
    for e in range(B):
        ae, be, Ce = a[e], b[e], Cb[e]
        if balanced:
            be = be * (ae.sum() / be.sum())
        la, lb = _log_weight(ae), _log_weight(be)
        u = torch.zeros_like(ae)
        v = g_init[e] / eps if g_init is not None else torch.zeros_like(be)
        hg = torch.where(be > 0, lb + v, lb)
        it = checks = 0
        lc = None
        while True:
            lr = torch.logsumexp(hg[None, :] - Ce / eps, dim=1)
            last = it == max_iter
            if it > 0 and (it % check_every == 0 or last):
                live = ae > 0
                if balanced:
                    err = (ae[live] * ((u[live] + lr[live]).exp() - 1).abs()).sum()
                else:
                    err = (eps * (-tau * lr[live] - u[live]).abs()).max()
                hist[e, checks] = err
                checks += 1
                if err <= tol:
                    break
            if last:
                break
            u = -tau * lr
            hf = torch.where(ae > 0, la + u, la)
            lc = torch.logsumexp(hf[:, None] - Ce / eps, dim=0)
            v = -tau * lc
            hg = torch.where(be > 0, lb + v, lb)
            it += 1
        if balanced:
            phi = eps * ((ae * u).sum() + (be * v).sum())
        else:
            phi = rho * (ae * (1 - torch.exp(-u * eps / rho))).sum() + rho * (be * (1 - torch.exp(-v * eps / rho))).sum()
        live = (be > 0) & (lc > -math.inf)
        mass = (be[live] * (v[live] + lc[live]).exp()).sum()
        costs.append(phi - eps * (mass - ae.sum() * be.sum()))
        fs.append(eps * u)
        gs.append(eps * v)
        iters.append(it)
    return (torch.stack(fs), torch.stack(gs), torch.stack(costs), torch.tensor(iters, dtype=torch.int64), hist)


def ot_plan_ref(a: Tensor, b: Tensor, C: Tensor, f: Tensor, g: Tensor, eps: float) -> Tensor:
    """P [B, n, m] = a_i b_j exp((f_i + g_j - C_ij) / eps)."""
    Cb = _costs(C, a.shape[0])
    logp = _log_weight(a)[:, :, None] + _log_weight(b)[:, None, :] + (f[:, :, None] + g[:, None, :] - Cb) / eps
    return logp.exp()


def ot_dual_ref(a: Tensor, b: Tensor, C: Tensor, f: Tensor, g: Tensor, eps: float):
    """(sum P [B], row [B, n] = sum_j b_j exp((f_i+g_j-C_ij)/eps), col [B, m] = sum_i a_i exp(...))."""
    Cb = _costs(C, a.shape[0])
    e = ((f[:, :, None] + g[:, None, :] - Cb) / eps).exp()
    row = (e * b[:, None, :]).sum(2)
    col = (e * a[:, :, None]).sum(1)
    return (a * row).sum(1), row, col


def ot_sparse_plan_ref(a: Tensor, b: Tensor, C: Tensor, f: Tensor, g: Tensor, eps: float, k: int):
    """The k largest entries of each row of the plan (by value; torch.topk, sorted)."""
    P = ot_plan_ref(a, b, C, f, g, eps)
    val, idx = P.topk(k, dim=2)
    return idx, val


def ot_newton_cg_ref(idx: Tensor, val: Tensor, row_diag: Tensor, col_diag: Tensor, rhs_f: Tensor, rhs_g: Tensor,
                     shift: float):
    """The exact solution of ([[diag(row_diag), S], [S^T, diag(col_diag)]] + shift I) x = rhs (dense solve)."""
    B, n, _ = idx.shape
    m = col_diag.shape[1]
    xs_f, xs_g = [], []
    for e in range(B):
        S = torch.zeros(n, m, dtype=val.dtype).index_put_((torch.arange(n)[:, None].expand_as(idx[e]), idx[e]), val[e],
                                                          accumulate=True)
        M = torch.zeros(n + m, n + m, dtype=val.dtype)
        M[:n, :n] = torch.diag(row_diag[e])
        M[n:, n:] = torch.diag(col_diag[e])
        M[:n, n:] = S
        M[n:, :n] = S.T
        M += shift * torch.eye(n + m, dtype=val.dtype)
        x = torch.linalg.solve(M, torch.cat((rhs_f[e], rhs_g[e])))
        xs_f.append(x[:n])
        xs_g.append(x[n:])
    return torch.stack(xs_f), torch.stack(xs_g)
