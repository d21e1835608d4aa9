"""The CPU kernel variants of the ot ops (AVX-512, AVX2, portable: chosen once per process by
SPARSEOPS_CPU_ISA) agree within rounding. Each variant runs in its own subprocess on the same cases
(odd lengths that end in partial vectors, forbidden pairs, zero masses, small eps, both dtypes,
unbalanced, point clouds); outputs are compared against this process's (default) variant: the vectorised exp is
accurate to ~1-2 ulp, so float64 results agree to ~1e-13 relative and float32 to ~1e-5."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseops

_ops = torch.ops.sparseops


def build_cases() -> dict[str, tuple]:
    cases = {}
    gen = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.float64):
        for n, m in ((1, 1), (3, 17), (33, 7), (64, 1001)):
            a = torch.rand(2, n, generator=gen, dtype=torch.float64) + 0.05
            b = torch.rand(2, m, generator=gen, dtype=torch.float64) + 0.05
            if n > 2:
                a[0, 1] = 0
            if m > 2:
                b[1, 2] = 0
            a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
            C = torch.rand(2, n, m, generator=gen, dtype=torch.float64)
            if m > 3:
                C[:, 0, 3] = math.inf
            a, b, C = a.to(dtype), b.to(dtype), C.to(dtype)
            for eps in (0.5, 1e-3):
                cases[f"sinkhorn {dtype} {n}x{m} eps={eps}"] = ("sinkhorn", a, b, C, eps, None)
            cases[f"sinkhorn unbalanced {dtype} {n}x{m}"] = ("sinkhorn", a, b, C, 0.05, 0.5)
            f = (0.05 * torch.randn(2, n, generator=gen, dtype=torch.float64)).to(dtype)
            g = (0.05 * torch.randn(2, m, generator=gen, dtype=torch.float64)).to(dtype)
            cases[f"plan {dtype} {n}x{m}"] = ("plan", a, b, C, f, g)
            cases[f"dual {dtype} {n}x{m}"] = ("dual", a, b, C, f, g)
            x = torch.rand(2, n, 3, generator=gen, dtype=torch.float64).to(dtype)
            y = torch.rand(2, m, 3, generator=gen, dtype=torch.float64).to(dtype)
            cases[f"points {dtype} {n}x{m}"] = ("points", a, b, x, y)
    return cases


def run_all() -> dict:
    out = {}
    for name, case in build_cases().items():
        kind, a, b, C = case[:4]
        if kind == "sinkhorn":
            out[name] = _ops.sinkhorn_log(a, b, C, case[4], 60, 0.0, 7, case[5])[:3]
        elif kind == "points":
            out[name] = _ops.sinkhorn_points(case[3], case[4], a, b, 0.05, 2, 40, 0.0, 7)[:3] + \
                _ops.ot_points_grad(case[3], case[4], a, b, torch.zeros_like(a), torch.zeros_like(b), 0.05, 2)
        elif kind == "plan":
            out[name] = (_ops.ot_plan(a, b, C, case[4], case[5], 0.1),)
        else:
            out[name] = _ops.ot_dual(a, b, C, case[4], case[5], 0.1)
    return out


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import sparseops
assert sparseops.build_info()["cpu_isa"] == {isa!r}, sparseops.build_info()["cpu_isa"]
import test_ot_isa as t
torch.save(t.run_all(), {out!r})
"""


def _isa_rank(name: str) -> int:
    return {"baseline": 0, "avx2": 1, "avx512": 2}.get(name, -1)


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_isa_variants_agree(tmp_path, isa):
    here = sparseops.build_info()["cpu_isa"]
    if _isa_rank(here) <= _isa_rank(isa):
        pytest.skip(f"this process already runs {here}; nothing to compare {isa} against")
    out = tmp_path / f"{isa}.pt"
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out), isa=isa)
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SPARSEOPS_CPU_ISA=isa),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    theirs, ours = torch.load(out), run_all()
    assert set(theirs) == set(ours)
    for name in ours:
        for x, y in zip(ours[name], theirs[name]):
            tol = 1e-11 if x.dtype == torch.float64 else 2e-4
            torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def test_log_domain_iteration_agrees_with_stabilised_scaling(tmp_path):
    """SPARSEOPS_OT_SCALING=0 keeps the balanced dense solver in the log-domain (fused) iteration; by
    default it runs stabilised scaling from the first iteration. Same iterates up to rounding."""
    here = sparseops.build_info()["cpu_isa"]
    out = tmp_path / "log_domain.pt"
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out), isa=here)
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SPARSEOPS_OT_SCALING="0"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    theirs, ours = torch.load(out), run_all()
    for name in ours:
        for x, y in zip(ours[name], theirs[name]):
            tol = 1e-10 if x.dtype == torch.float64 else 2e-4
            torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
