"""Entropic OT between two point clouds too large for an n x m cost matrix: sparseops.ot.sinkhorn_points.

x: n points uniform in the unit cube; y: m points uniform on the sphere of radius 0.5 around the cube's
centre (d = 3 by default). Squared Euclidean cost, uniform marginals. At the default n = m = 10^5 the
cost matrix alone would be 40 GB in float32 (80 GB in float64), more than this machine's memory;
sinkhorn_points recomputes the costs row by row inside its fused log-sum-exp pass and keeps O(n + m)
memory. Prints the time, the iterations, the marginal error reached, the transport cost and the peak
resident memory of the process (and what the n x m matrix would have needed).

    python examples/ot_large_point_clouds.py [--n 100000] [--m 100000] [--d 3] [--eps 0.1] [--tol 1e-3]
        [--max-iter 10] [--threads 2] [--dtype float32]
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

import sparseops


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--m", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--eps", type=float, default=0.1, help="in cost units (squared distances up to d)")
    ap.add_argument("--tol", type=float, default=1e-3, help="L1 marginal error")
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, args.d, generator=gen, dtype=torch.float64)
    y = torch.randn(args.m, args.d, generator=gen, dtype=torch.float64)
    y = 0.5 + 0.5 * y / y.norm(dim=1, keepdim=True)
    x, y = x.to(dtype), y.to(dtype)
    matrix_gb = args.n * args.m * x.element_size() / 1e9
    print(f"n={args.n:,} m={args.m:,} d={args.d} {args.dtype}, eps={args.eps:g}, {args.threads} threads; "
          f"the cost matrix would take {matrix_gb:,.0f} GB")
    rss0 = rss_gib()
    t0 = time.perf_counter()
    res = sparseops.ot.sinkhorn_points(x, y, args.eps, tol=args.tol, max_iter=args.max_iter, check_every=1)
    dt = time.perf_counter() - t0
    iters = int(res.n_iter)
    hist = res.err_history[torch.isfinite(res.err_history) & (res.err_history >= 0)]
    print(f"iterations: {iters} ({dt / max(iters, 1):.1f} s each, {args.n * args.m / 1e9:.0f}e9 pairs per iteration)")
    print(f"time: {dt:.1f} s; marginal error: {float(hist[-1]):.2e} (tol {args.tol:g}, converged: {bool(res.converged)})")
    print(f"transport cost (dual objective): {float(res.cost):.6f}")
    print(f"peak RSS: {rss_gib():.2f} GiB (before the solve: {rss0:.2f} GiB; inputs {(x.nbytes + y.nbytes) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
