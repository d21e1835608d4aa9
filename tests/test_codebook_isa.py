"""The CPU variants of codebook_lookup (AVX-512, AVX2, portable) give the same indices and distances, bit
for bit: each variant ranks the expanded distance in its own way (different tiles, FMA or not), but the
winner is always re-checked exactly in float64 by the same code, so the results must agree. The
variants run in subprocesses with SPARSEOPS_CPU_ISA=avx2 / baseline; this process runs the default one.
Cases: random, near-ties far from the origin (the re-check and the spill buffer), duplicate codes beyond the spill
buffer (the re-scan),
cosine with zero vectors, fp16/bf16 and centred fp32 with D >= 64 (AVX-512: the VDPBF16PS path), bf16 grid ties, D from 1 to 1024, K not a multiple of any tile width, K >> N."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseops


def build_cases() -> dict[str, tuple]:
    gen = torch.Generator().manual_seed(7)
    cases = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n, k, d in [(1, 1, 1), (13, 37, 3), (70, 301, 16), (33, 129, 64), (9, 45, 1024), (3, 9000, 8)]:
            for metric in ("l2", "cosine"):
                z = torch.randn(n, d, generator=gen).to(dtype)
                c = torch.randn(k, d, generator=gen).to(dtype)
                cases[f"random {dtype} {n}x{k}x{d} {metric}"] = (z, c, metric)
    for crowd in (3, 40):
        center = torch.full((24,), 500.0)
        c = torch.cat([center + 1e-2 * torch.randn(crowd, 24, generator=gen), torch.randn(30, 24, generator=gen)])
        z = center + 1e-2 * torch.randn(17, 24, generator=gen)
        cases[f"near-ties crowd={crowd}"] = (z, c, "l2")
    c = (64 + 0.25 * torch.randint(-3, 4, (200, 40), generator=gen)).bfloat16()
    cases["bf16 grid ties"] = ((64 + 0.25 * torch.randint(-3, 4, (50, 40), generator=gen)).bfloat16(), c, "l2")
    c = torch.randn(20, 5, generator=gen)
    cases["duplicates"] = (torch.randn(40, 5, generator=gen), torch.cat([c, c, c]), "l2")
    p = torch.randn(96, generator=gen)  # centred, D >= 64: AVX-512's bf16-rounded screen of fp32 inputs
    c = torch.cat([torch.randn(500, 96, generator=gen), p + 0.02 * torch.randn(30, 96, generator=gen)])
    cases["rounded screen near-ties"] = (p + 0.02 * torch.randn(12, 96, generator=gen), c, "l2")
    base = torch.randn(4, generator=gen)  # more codes within the bound than a task's spill buffer holds
    c = torch.cat([base.expand(40000, 4), base + 1e-4 * torch.randn(300, 4, generator=gen)])
    cases["spill overflow"] = (base + 1e-3 * torch.randn(6, 4, generator=gen), c, "l2")
    cases["cosine zeros"] = (torch.cat([torch.zeros(2, 6), torch.randn(9, 6, generator=gen)]),
                             torch.cat([torch.zeros(1, 6), torch.randn(50, 6, generator=gen)]), "cosine")
    return cases


def run_all() -> dict:
    return {name: sparseops.codebook_lookup(z, c, metric=m, return_dist=True) for name, (z, c, m) in build_cases().items()}


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import sparseops
assert sparseops.build_info()["cpu_isa"] == {isa!r} or {isa!r} == "noamx", sparseops.build_info()["cpu_isa"]
import test_codebook_isa as t
torch.save(t.run_all(), {out!r})
"""


def _child(isa: str, tmp_path) -> dict:
    out = tmp_path / f"{isa}.pt"
    env = dict(os.environ, **({"SPARSEOPS_CPU_AMX": "0"} if isa == "noamx" else {"SPARSEOPS_CPU_ISA": isa}))
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out), isa=isa)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("isa", ["avx2", "baseline", "noamx"])
def test_lookup_isa_variants_identical(isa, tmp_path):
    """Every scan variant gives the same indices and distances (the exact re-check decides); "noamx" runs
    the VDPBF16PS screen on a CPU whose default is the AMX one."""
    order = ["baseline", "avx2", "avx512"]
    here = sparseops.build_info()["cpu_isa"]
    if isa == "noamx" and not sparseops.build_info()["cpu_amx_bf16"]:
        pytest.skip("no AMX-BF16 here: this process already runs the VDPBF16PS screen")
    if isa != "noamx" and order.index(here) <= order.index(isa):
        pytest.skip(f"this process already runs {here}: nothing faster to compare {isa} against")
    other, default = _child(isa, tmp_path), run_all()
    assert set(other) == set(default)
    bad = [name for name in default
           if not (torch.equal(other[name][1], default[name][1]) and torch.equal(other[name][2], default[name][2]))]
    assert not bad, f"{isa} differs from {here} on: {bad}"
