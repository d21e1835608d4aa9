"""codebook_lookup's pruned CPU search (a k-d tree over the codes, csrc/codebook/code_tree.h) gives the
brute-force scan's indices and distances bit for bit: it only skips leaves that cannot hold a candidate,
and the exact float64 re-check decides as before. SPARSEOPS_CODEBOOK_TREE=1 forces it on for every l2
lookup, =0 off (the default picks it for D <= 10 with many codes and rows). Also run under the AVX2 and
portable scans, in subprocesses (the ISA is fixed at import)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseops


def build_cases() -> dict[str, tuple]:
    gen = torch.Generator().manual_seed(11)
    cases = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n, k, d in [(1, 1, 1), (5, 3, 2), (300, 5000, 1), (97, 4097, 3), (256, 20000, 8), (40, 1000, 12),
                        (9, 700, 33)]:
            z = torch.randn(n, d, generator=gen).to(dtype)
            c = torch.randn(k, d, generator=gen).to(dtype)
            cases[f"random {dtype} {n}x{k}x{d}"] = (z, c)
    # queries that are codes, duplicated codes (ties to the lowest index), a clustered codebook
    c = torch.randn(600, 4, generator=gen)
    cases["duplicates"] = (torch.cat([c[:200], torch.randn(100, 4, generator=gen)]), c.repeat(7, 1))
    grid = torch.randint(-3, 4, (3000, 3), generator=gen).float()
    cases["integer grid ties"] = (torch.randint(-3, 4, (500, 3), generator=gen).float(), grid)
    centers = 50 * torch.randn(30, 6, generator=gen)
    c = (centers[:, None] + 0.01 * torch.randn(30, 300, 6, generator=gen)).reshape(-1, 6)
    z = (centers[:, None] + 0.01 * torch.randn(30, 10, 6, generator=gen)).reshape(-1, 6)
    cases["clusters far from the origin"] = (z, c)
    base = torch.randn(4, generator=gen)  # more codes within the error bound than the spill buffer holds
    c = torch.cat([base.expand(40000, 4), base + 1e-4 * torch.randn(300, 4, generator=gen)])
    cases["spill overflow"] = (base + 1e-3 * torch.randn(6, 4, generator=gen), c)
    return cases


def _indices_and_dist(z, c, **kw):
    idx, _, dist = sparseops.codebook_lookup(z, c, return_dist=True, **kw)
    return idx, dist


def run_all(tree: str) -> dict:
    os.environ["SPARSEOPS_CODEBOOK_TREE"] = tree
    try:
        return {name: _indices_and_dist(z, c) for name, (z, c) in build_cases().items()}
    finally:
        del os.environ["SPARSEOPS_CODEBOOK_TREE"]


def exact_nearest(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = ((z.double()[:, None] - c.double()[None]) ** 2).sum(-1)
    return (d == d.min(1, keepdim=True).values).double().argmax(1)  # the first of the exact ties


@pytest.fixture(scope="module")
def brute():
    return run_all("0")


def test_tree_equals_brute_force_and_reference(brute):
    tree = run_all("1")
    for name, (z, c) in build_cases().items():
        (i0, d0), (i1, d1) = brute[name], tree[name]
        assert torch.equal(i0, i1), name
        assert torch.equal(d0, d1), name
        if z.shape[0] * c.shape[0] <= 4_000_000:
            assert torch.equal(i1, exact_nearest(z.float(), c.float())), name


def test_tree_by_default_for_few_dims_many_codes(monkeypatch):
    # D <= 10, K >= 65536, N >= max(2048, K / 128): the default takes the pruned search; same answer
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(65536, 8, generator=gen)
    z = torch.randn(2100, 8, generator=gen)
    i_default, d_default = _indices_and_dist(z, c)
    monkeypatch.setenv("SPARSEOPS_CODEBOOK_TREE", "0")
    i_brute, d_brute = _indices_and_dist(z, c)
    assert torch.equal(i_default, i_brute) and torch.equal(d_default, d_brute)


def test_tree_leaves_cosine_to_the_scan(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    z, c = torch.randn(50, 5, generator=gen), torch.randn(3000, 5, generator=gen)
    expected = _indices_and_dist(z, c, metric="cosine")
    monkeypatch.setenv("SPARSEOPS_CODEBOOK_TREE", "1")
    got = _indices_and_dist(z, c, metric="cosine")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_bad_tree_setting_warns(monkeypatch, capfd):
    monkeypatch.setenv("SPARSEOPS_CODEBOOK_TREE", "yes")
    z, c = torch.randn(4, 3), torch.randn(10, 3)
    idx = sparseops.codebook_lookup(z, c)[0]
    assert torch.equal(idx, exact_nearest(z, c))
    assert 'ignoring SPARSEOPS_CODEBOOK_TREE="yes" (expected 0 or 1)' in capfd.readouterr().err


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import sparseops
assert sparseops.build_info()["cpu_isa"] == {isa!r}, sparseops.build_info()["cpu_isa"]
import test_codebook_tree as t
torch.save(t.run_all("1"), {out!r})
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_tree_under_other_isas(isa, brute, tmp_path):
    if isa == "avx2" and sparseops.build_info()["cpu_isa"] == "baseline":
        pytest.skip("no AVX2 on this CPU (or this build has no x86 kernels)")
    out = tmp_path / f"{isa}.pt"
    env = dict(os.environ, SPARSEOPS_CPU_ISA=isa)
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out), isa=isa)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    other = torch.load(out)
    for name, (i0, d0) in brute.items():
        assert torch.equal(other[name][0], i0), f"{name} ({isa})"
        assert torch.equal(other[name][1], d0), f"{name} ({isa})"
