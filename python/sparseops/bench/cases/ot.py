"""ot cases: log-domain Sinkhorn per iteration (fixed iteration count, tol = 0) against POT's
``ot.sinkhorn`` ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized") and GeomLoss's tensorised Sinkhorn
loop and OTT-JAX's Sinkhorn (jax on CPU, when installed); time to a 1e-9 marginal error
(Sinkhorn-Newton-Sparse and our Sinkhorn against every POT method and OTT-JAX where they get there);
batched problems against the same peers looped (POT) or batched (GeomLoss); point clouds (costs
recomputed, memory O(n + m)) against GeomLoss tensorised (which builds the cost matrices) and GeomLoss's
KeOps online backend (when pykeops is installed).

Problems: n = m random points in the unit square, squared Euclidean costs divided by their maximum
(a normalised cost), uniform marginals, float64 (POT's default precision) unless stated. A peer that
does not produce a finite result for a case (POT's plain Sinkhorn underflows at small eps: exp(-C/eps)
is 0) or does not reach the tolerance is reported as skipped with the reason, not timed.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

import sparseops
from sparseops.bench import Case, register, unavailable

try:
    import ot as pot
except ImportError:  # optional peer
    pot = None

try:
    from geomloss._legacy.sinkhorn_divergence import sinkhorn_loop as _gl_loop
    from geomloss._legacy.sinkhorn_samples import softmin_tensorized as _gl_softmin
except ImportError:  # optional peer (or a GeomLoss without the tensorised loop at this path)
    _gl_loop = _gl_softmin = None

try:  # KeOps (GeomLoss's online backend: costs recomputed in a JIT-compiled reduction, like ours)
    import pykeops  # noqa: F401
    from geomloss._legacy.sinkhorn_samples import softmin_online_lazytensor as _gl_softmin_keops
except ImportError:  # optional heavy peer (tools/setup_env.sh with SPARSEOPS_BENCH_HEAVY_PEERS=1)
    _gl_softmin_keops = None

_POT_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized")
_NO_OTT = "OTT-JAX not installed (SPARSEOPS_BENCH_HEAVY_PEERS=1 tools/setup_env.sh, or pip install ott-jax)"
_NO_KEOPS = "KeOps not installed (SPARSEOPS_BENCH_HEAVY_PEERS=1 tools/setup_env.sh, or pip install pykeops)"


def _ott():
    """OTT-JAX's pieces (jax on CPU, float64 enabled), or None. Imported on first use: jax starts its own
    thread pool (all cores, whatever --threads says)."""
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn as ott_sinkhorn
    except ImportError:
        return None
    return jax, geometry, linear_problem, ott_sinkhorn


def _ott_impl(a: Tensor, b: Tensor, C: Tensor, eps: float, iters: int, tol: float, device: str):
    """OTT-JAX's log-domain Sinkhorn (jit-compiled once, outside the timing). iters fixed (tol = 0) or at
    most iters until its marginal error (L1 of one marginal) is <= tol, checked like POT's result."""
    if device != "cpu":
        return unavailable("OTT-JAX measured on CPU only here")
    parts = _ott()
    if parts is None:
        return unavailable(_NO_OTT)
    jax, geometry, linear_problem, ott_sinkhorn = parts
    jnp = jax.numpy
    geom = geometry.Geometry(cost_matrix=jnp.asarray(C.cpu().numpy()), epsilon=eps)
    prob = linear_problem.LinearProblem(geom, a=jnp.asarray(a.cpu().numpy()), b=jnp.asarray(b.cpu().numpy()))
    if tol > 0:
        solver = ott_sinkhorn.Sinkhorn(threshold=tol, max_iterations=iters, lse_mode=True)
    else:
        solver = ott_sinkhorn.Sinkhorn(threshold=-1.0, min_iterations=iters, max_iterations=iters, inner_iterations=1,
                                       lse_mode=True)
    solve = jax.jit(solver)

    def run():
        out = solve(prob)
        out.f.block_until_ready()
        return out

    out = run()
    if tol > 0:
        P = torch.from_numpy(np.array(jax.device_get(out.matrix)))
        err = float((P.sum(1) - a.cpu()).abs().sum() + (P.sum(0) - b.cpu()).abs().sum())
        if not err <= 2 * tol:
            return unavailable(f"OTT-JAX does not reach a marginal error of {tol:g} in {iters} iterations (got {err:.2g})")
    return run
_NO_POT = "POT not installed (pip install pot)"
_NO_GEOMLOSS = "GeomLoss not installed (pip install geomloss)"


def _problem(n: int, dtype: torch.dtype, device: str, batch: Optional[int] = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 2) if batch is None else (batch, n, 2)
    x, y = torch.rand(shape, generator=gen, dtype=torch.float64), torch.rand(shape, generator=gen, dtype=torch.float64)
    C = sparseops.ot.cost_matrix(x, y)
    C = C / C.amax(dim=(-2, -1), keepdim=True)
    a = torch.full(C.shape[:-1], 1.0 / n, dtype=torch.float64)
    return a.to(device, dtype), a.clone().to(device, dtype), C.to(device, dtype)


def _pot_args(a: Tensor, b: Tensor, C: Tensor, device: str):
    """POT takes numpy arrays on CPU (its numpy backend) and torch tensors on CUDA (its torch backend)."""
    if device == "cpu":
        return a.numpy(), b.numpy(), C.numpy()
    return a, b, C


def _pot_impl(method: str, a, b, C, eps: float, iters: int, stop: float) -> Callable[[], object]:
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pot.sinkhorn(a, b, C, eps, method=method, numItermax=iters, stopThr=stop)

    return run


def _pot_checked(method: str, a, b, C, eps: float, iters: int, stop: float, device: str):
    """The POT impl, or an unavailable() saying why it cannot do this case (checked once, untimed).
    POT stops on the 2-norm of one marginal's error; its threshold is stop / sqrt(n), so that the L1
    error of both marginals (our criterion) is about stop when it stops."""
    if pot is None:
        return unavailable(_NO_POT)
    pa, pb, pC = _pot_args(a, b, C, device)
    pot_stop = stop / math.sqrt(a.shape[-1])
    run = _pot_impl(method, pa, pb, pC, eps, iters, pot_stop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, _ = pot.sinkhorn(pa, pb, pC, eps, method=method, numItermax=iters, stopThr=pot_stop, log=True)
    P = torch.as_tensor(plan)
    if not bool(torch.isfinite(P).all()) or float(P.sum()) < 0.5:
        return unavailable(f"POT {method} breaks down at eps={eps:g} (non-finite or vanishing plan: exp(-C/eps) underflows)")
    if stop > 0:
        err = float((P.sum(1) - torch.as_tensor(a).cpu()).abs().sum() + (P.sum(0) - torch.as_tensor(b).cpu()).abs().sum())
        if not err <= 2 * stop:
            return unavailable(f"POT {method} does not reach a marginal error of {stop:g} in {iters} iterations (got {err:.2g})")
    return run


def _geomloss_impl(a: Tensor, b: Tensor, C: Tensor, eps: float, iters: int):
    """GeomLoss's tensorised Sinkhorn loop at a fixed eps (no eps-scaling, no debiasing): per iteration one
    torch logsumexp over an explicit [B, n, m] tensor per side."""
    if _gl_loop is None:
        return unavailable(_NO_GEOMLOSS)
    Cb = C if C.dim() == 3 else C.unsqueeze(0)
    Ct = Cb.transpose(1, 2).contiguous()  # GeomLoss takes both C and C^T (built here, outside the timing)
    a_log = (a if a.dim() == 2 else a.unsqueeze(0)).log()
    b_log = (b if b.dim() == 2 else b.unsqueeze(0)).log()
    eps_list = [eps] * iters

    def run():
        with torch.no_grad():
            return _gl_loop(_gl_softmin, a_log, b_log, None, None, Cb, Ct, eps_list, None, debias=False,
                            last_extrapolation=False)

    return run


def _iter_case(n: int, eps: float, dtype: torch.dtype, device: str, iters: int) -> Case:
    a, b, C = _problem(n, dtype, device)
    a1, b1 = a.unsqueeze(0), b.unsqueeze(0)
    name = "fp64" if dtype == torch.float64 else "fp32"
    impls = {"sparseops": lambda: torch.ops.sparseops.sinkhorn_log(a1, b1, C, eps, iters, 0.0, iters)}
    for method in _POT_METHODS:
        impls[f"pot_{method}"] = _pot_checked(method, a, b, C, eps, iters, 0.0, device)
    impls["geomloss_tensorized"] = _geomloss_impl(a, b, C, eps, iters)
    impls["ott_jax"] = _ott_impl(a, b, C, eps, iters, 0.0, device)
    return Case(
        label=f"{name} n=m={n} eps={eps:g} x{iters} iterations",
        params={"n": n, "m": n, "eps": eps, "dtype": name, "iterations": iters},
        impls=impls,
        baseline="pot_sinkhorn_log",
        bytes=iters * 2 * C.nbytes,  # each half-iteration reads C once
    )


@register("ot", "sinkhorn_per_iteration")
def sinkhorn_per_iteration_cases(device: str, quick: bool):
    if quick:
        yield _iter_case(300, 1e-2, torch.float64, device, 20)
        return
    # 10 iterations at n = 2000 (not 3): a call's fixed cost (input checks, the scaling kernel's build:
    # ~5 iterations' worth for us) would otherwise be most of what "per iteration" times.
    for n, iters in ((300, 20), (2000, 10)):
        for eps in (1e-1, 1e-2, 1e-3):
            yield _iter_case(n, eps, torch.float64, device, iters)
    yield _iter_case(2000, 1e-2, torch.float32, device, 10)


def _tol_case(n: int, eps: float, device: str, tol: float = 1e-9) -> Case:
    a, b, C = _problem(n, torch.float64, device)
    max_iter = 100000
    impls = {
        "sparseops": lambda: sparseops.ot.sinkhorn_newton_sparse(a, b, C, eps, tol=tol),
        "sparseops_sinkhorn": lambda: sparseops.ot.sinkhorn(a, b, C, eps, tol=tol, max_iter=max_iter, check_every=10),
    }
    for method in _POT_METHODS:
        impls[f"pot_{method}"] = _pot_checked(method, a, b, C, eps, max_iter, tol, device)
    impls["ott_jax"] = _ott_impl(a, b, C, eps, max_iter, tol, device)
    usable = [k for k, v in impls.items() if k.startswith("pot_") and getattr(v, "__name__", "") != "impl"]
    baseline = "pot_sinkhorn_log" if "pot_sinkhorn_log" in usable or not usable else usable[0]
    return Case(
        label=f"fp64 n=m={n} eps={eps:g} to marginal error {tol:g}",
        params={"n": n, "m": n, "eps": eps, "dtype": "fp64", "tol": tol},
        impls=impls,
        baseline=baseline,
        bytes=2 * C.nbytes,  # nominal: one iteration's reads (the iteration counts differ by method)
    )


def _tol_batched_case(batch: int, n: int, eps: float, device: str, tol: float = 1e-9) -> Case:
    """A batch of independent problems to tol: sparseops solves the batch in one call (CPU: entries in
    parallel), POT's plain Sinkhorn (the fastest converging POT method at small eps) one entry at a time."""
    a, b, C = _problem(n, torch.float64, device, batch=batch)
    impls = {
        "sparseops": lambda: sparseops.ot.sinkhorn_newton_sparse(a, b, C, eps, tol=tol),
        "sparseops_sinkhorn": lambda: sparseops.ot.sinkhorn(a, b, C, eps, tol=tol, max_iter=100000, check_every=10),
    }
    runs = [_pot_checked("sinkhorn", a[e], b[e], C[e], eps, 100000, tol, device) for e in range(batch)]
    broken = [r for r in runs if getattr(r, "__name__", "") == "impl"]  # unavailable(...) placeholders
    impls["pot_sinkhorn_looped"] = broken[0] if broken else (lambda: [r() for r in runs])
    return Case(
        label=f"fp64 B={batch} n=m={n} eps={eps:g} to marginal error {tol:g}",
        params={"batch": batch, "n": n, "m": n, "eps": eps, "dtype": "fp64", "tol": tol},
        impls=impls,
        baseline="pot_sinkhorn_looped",
        bytes=2 * C.nbytes,  # nominal, as _tol_case
    )


@register("ot", "time_to_tolerance")
def time_to_tolerance_cases(device: str, quick: bool):
    if device == "cuda":
        return  # CPU only: the peers' convergence checks alone would take much of the one-call GPU check's budget
    if quick:
        yield _tol_case(300, 1e-2, device)
        return
    for eps in (1e-1, 1e-2, 1e-3):
        yield _tol_case(300, eps, device)
    yield _tol_case(2000, 1e-1, device)
    yield _tol_batched_case(8, 256, 1e-3, device)


def _batched_case(batch: int, n: int, eps: float, device: str, iters: int) -> Case:
    a, b, C = _problem(n, torch.float64, device, batch=batch)
    impls = {"sparseops": lambda: torch.ops.sparseops.sinkhorn_log(a, b, C, eps, iters, 0.0, iters)}
    for method in ("sinkhorn", "sinkhorn_log"):
        if pot is None:
            impls[f"pot_{method}_looped"] = unavailable(_NO_POT)
            continue
        runs = [_pot_impl(method, *_pot_args(a[e], b[e], C[e], device), eps, iters, 0.0) for e in range(batch)]
        impls[f"pot_{method}_looped"] = lambda runs=runs: [r() for r in runs]
    impls["geomloss_tensorized"] = _geomloss_impl(a, b, C, eps, iters)
    return Case(
        label=f"fp64 B={batch} n=m={n} eps={eps:g} x{iters} iterations",
        params={"batch": batch, "n": n, "m": n, "eps": eps, "dtype": "fp64", "iterations": iters},
        impls=impls,
        baseline="pot_sinkhorn_log_looped",
        bytes=iters * 2 * C.nbytes,
    )


@register("ot", "sinkhorn_batched")
def sinkhorn_batched_cases(device: str, quick: bool):
    if device == "cuda":
        yield _batched_case(64, 1024, 1e-2, device, 10)
    elif quick:
        yield _batched_case(8, 128, 1e-2, device, 10)
    else:
        yield _batched_case(64, 256, 1e-2, device, 10)




def _keops_impl(x: Tensor, y: Tensor, a: Tensor, eps: float, iters: int):
    """GeomLoss's Sinkhorn loop with its KeOps online softmin (no n x m matrix; the reduction is compiled
    on the first call, outside the timing). GeomLoss's p=2 cost is |x - y|^2 / 2: eps / 2 gives our
    problem."""
    if _gl_loop is None:
        return unavailable(_NO_GEOMLOSS)
    if _gl_softmin_keops is None:
        return unavailable(_NO_KEOPS)
    a_log = a.log()

    def run():
        with torch.no_grad():
            return _gl_loop(_gl_softmin_keops, a_log, a_log, None, None, (x, y), (y, x), [eps / 2] * iters, None,
                            debias=False, last_extrapolation=False)

    run()
    return run


def _points_case(n: int, eps: float, device: str, iters: int) -> Case:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, n, 3, generator=gen).to(device)
    y = torch.rand(1, n, 3, generator=gen).to(device)
    a = torch.full((1, n), 1.0 / n, device=device)
    impls = {"sparseops": lambda: torch.ops.sparseops.sinkhorn_points(x, y, a, a, eps, 2, iters, 0.0, iters)}
    if _gl_loop is None:
        impls["geomloss_tensorized"] = unavailable(_NO_GEOMLOSS)
    elif n * n * 4 * 3 > (8 << 30):
        impls["geomloss_tensorized"] = unavailable(f"GeomLoss tensorised needs n x m cost matrices ({3 * n * n * 4 >> 30} GiB)")
    else:
        a_log = a.log()

        def geomloss_run():  # GeomLoss builds C and C^T from the points on every call, as SamplesLoss does
            C = sparseops.ot.cost_matrix(x, y)
            with torch.no_grad():
                return _gl_loop(_gl_softmin, a_log, a_log, None, None, C, C.transpose(1, 2).contiguous(), [eps] * iters,
                                None, debias=False, last_extrapolation=False)

        impls["geomloss_tensorized"] = geomloss_run
    impls["geomloss_keops"] = _keops_impl(x, y, a, eps, iters)
    return Case(
        label=f"fp32 point clouds n=m={n} d=3 eps={eps:g} x{iters} iterations",
        params={"n": n, "m": n, "d": 3, "eps": eps, "dtype": "fp32", "iterations": iters},
        impls=impls,
        baseline="geomloss_tensorized",
        flops=iters * 2 * n * n * (3 * 3 + 20),  # per pair and pass: the cost (3 sub, 3 fma) + ~20 for the exp
    )


@register("ot", "sinkhorn_points")
def sinkhorn_points_cases(device: str, quick: bool):
    if quick:
        yield _points_case(2000, 1e-2, device, 3)
    else:
        yield _points_case(10000, 1e-2, device, 2)
        if device == "cpu":  # GeomLoss tensorised does not fit; KeOps on CPU takes ~30 s per iteration here
            yield _points_case(30000, 1e-2, device, 1)
