"""codebook_lookup's int16 screen (AVX2 CPUs: z and the codes on integer grids, VPMADDWD dots; see
csrc/codebook/lookup_quant.h) forced on (SPARSEOPS_CODEBOOK_GRID=1) for inputs its default rule would
keep away from it -- crowded, off-centre, tiny and huge values, zero rows, duplicates, D from 1 to 1024,
l2 and cosine -- must still give the exact nearest code: the same indices and distances, bit for bit, as the fp32 scan
(SPARSEOPS_CODEBOOK_GRID=0), and the float64 reference's indices. Runs in a subprocess capped to AVX2 (the
ISA is fixed at import), so AVX-512 machines test it too."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseops
from sparseops.reference import codebook_lookup_ref


def build_cases() -> dict[str, tuple]:
    gen = torch.Generator().manual_seed(17)
    cases = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n, k, d in [(1, 1, 1), (9, 50, 5), (70, 301, 16), (33, 1000, 64), (40, 300, 257), (9, 65, 1024)]:
            cases[f"random {dtype} {n}x{k}x{d}"] = (torch.randn(n, d, generator=gen).to(dtype),
                                                    torch.randn(k, d, generator=gen).to(dtype))
    for d in (24, 64, 200):  # codes 0.02 apart around p: the grids mis-order them, the margin keeps them
        p = torch.randn(d, generator=gen)
        c = torch.cat([torch.randn(2000, d, generator=gen), p + 0.02 * torch.randn(40, d, generator=gen)])
        cases[f"near-ties D={d}"] = (p + 0.02 * torch.randn(25, d, generator=gen), c[torch.randperm(c.shape[0], generator=gen)])
    center = torch.full((64,), 1000.0)  # off-centre and crowded: more candidates than slots (the spill buffer)
    c = torch.cat([center + 1e-2 * torch.randn(40, 64, generator=gen), torch.randn(50, 64, generator=gen)])
    cases["far from the origin"] = (center + 1e-2 * torch.randn(20, 64, generator=gen), c)
    for d, center, spread in [(16, 100.0, 0.3), (32, 1000.0, 1.0)]:  # off-centre: the grids' error dominates
        c, z = (center + spread * torch.randn(m, d, generator=gen) for m in (1000, 40))
        cases[f"off-centre D={d}"] = (z, c)
    base = torch.randn(16, generator=gen)  # more copies within the bound than a task's spill buffer holds
    c = torch.cat([torch.randn(100, 16, generator=gen), base.expand(40000, 16), base + 1e-4 * torch.randn(300, 16, generator=gen)])
    cases["duplicates beyond the spill buffer"] = (base + 1e-3 * torch.randn(5, 16, generator=gen), c)
    # the grids' scale sz * sc underflows fp32 (every code a candidate) / |c|^2 near the fp32 limit
    cases["tiny values"] = (1e-30 * torch.randn(12, 32, generator=gen), 1e-30 * torch.randn(700, 32, generator=gen))
    cases["huge values"] = (1e17 * torch.randn(12, 64, generator=gen), 1e17 * torch.randn(300, 64, generator=gen))
    z = torch.randn(10, 48, generator=gen) * torch.logspace(-15, 15, 10)[:, None]  # one grid per row
    cases["rows of very different scales"] = (torch.cat([z, torch.zeros(2, 48)]), torch.randn(500, 48, generator=gen))
    c = torch.randn(200, 40, generator=gen)
    c[::7] = 0.0
    cases["zero codes and ties"] = (torch.randn(30, 40, generator=gen), torch.cat([c, c]))
    cases["zero codebook"] = (torch.randn(5, 20, generator=gen), torch.zeros(30, 20))
    cases = {name: (z, c, "l2") for name, (z, c) in cases.items()}
    for n, k, d in [(9, 50, 5), (70, 301, 16), (33, 1000, 64), (9, 65, 1024)]:  # cosine: normalised grids
        cases[f"cosine {n}x{k}x{d}"] = (torch.randn(n, d, generator=gen), torch.randn(k, d, generator=gen), "cosine")
    for d in (8, 48):  # near-ties in angle (at D = 8 the grids' error dominates), any lengths, zero vectors
        p = torch.randn(d, generator=gen)
        p = p / p.norm()
        near = (p + 0.001 * torch.randn(300, d, generator=gen)) * 100 * torch.rand(300, 1, generator=gen)
        c = torch.cat([torch.randn(300, d, generator=gen), near, torch.zeros(3, d)])
        z = torch.cat([(p + 0.001 * torch.randn(60, d, generator=gen)) * 1e-3, torch.zeros(2, d)])
        cases[f"cosine near-ties D={d}"] = (z, c, "cosine")
    return cases


def run_all(grid: str) -> dict:
    os.environ["SPARSEOPS_CODEBOOK_GRID"] = grid
    out = {}
    for name, (z, c, metric) in build_cases().items():
        idx, _, dist = sparseops.codebook_lookup(z, c, metric=metric, return_dist=True)
        out[name] = (idx, dist)
    return out


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import sparseops
assert sparseops.build_info()["cpu_isa"] == "avx2", sparseops.build_info()["cpu_isa"]
import test_codebook_grid as t
torch.save({{"grid": t.run_all("1"), "fp32": t.run_all("0")}}, {out!r})
"""


def test_grid_screen_exact_on_hard_inputs(tmp_path):
    if sparseops.build_info()["cpu_isa"] == "baseline":
        pytest.skip("no AVX2 here: the int16 screen never runs")
    out = tmp_path / "grid.pt"
    env = dict(os.environ, SPARSEOPS_CPU_ISA="avx2")
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = torch.load(out)
    for name, (z, c, metric) in build_cases().items():
        (gi, gd), (fi, fd) = res["grid"][name], res["fp32"][name]
        ref_idx, _, ref_dist = codebook_lookup_ref(z, c, metric)
        assert torch.equal(gi, ref_idx), name
        assert torch.equal(gi, fi) and torch.equal(gd, fd), name
        torch.testing.assert_close(gd, ref_dist, rtol=1e-6, atol=1e-7 if metric == "cosine" else 0, msg=name)


def test_grid_override_rejects_other_values(monkeypatch, capfd):
    """Another value is ignored with a warning (printed by torch's C++ logger), and the default rule runs."""
    monkeypatch.setenv("SPARSEOPS_CODEBOOK_GRID", "yes")
    z, c = torch.randn(4, 32), torch.randn(50, 32)
    idx, _ = sparseops.codebook_lookup(z, c)
    assert torch.equal(idx, codebook_lookup_ref(z, c)[0])
    assert 'ignoring SPARSEOPS_CODEBOOK_GRID="yes"' in capfd.readouterr().err
