"""The CPU kernel variants of block_sparse_attention (forward and backward) agree: the avx2 and baseline
micro-kernels run in subprocesses started with SPARSEOPS_CPU_ISA (the variant is chosen once per
process), this process runs the default (AVX-512 where the CPU has it; its bf16 products on AMX tiles
where the CPU has AMX-BF16, "noamx" runs them on AVX-512 there). Their exp and summation orders
differ, so the comparison is to fp32 rounding, and each is also checked against the reference."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseops
from sparseops.reference import block_sparse_attention_ref

# (B, Hq, Hkv, Sq, Skv, D, bq, bk, mask heads, causal, window, dtype)
CASES = [
    (1, 2, 1, 33, 33, 64, 16, 16, 1, True, None, torch.float32),
    (2, 4, 2, 7, 130, 80, 16, 32, 4, False, (9, 4), torch.float32),
    (1, 4, 1, 100, 257, 128, 64, 128, 1, True, 50, torch.bfloat16),
    (1, 2, 2, 40, 40, 32, 32, 16, 2, False, None, torch.float16),
    (1, 8, 2, 1, 300, 96, 16, 64, 1, True, None, torch.float32),
]


def run_all() -> dict:
    out = {}
    for i, (B, Hq, Hkv, Sq, Skv, D, bq, bk, mh, causal, window, dtype) in enumerate(CASES):
        g = torch.Generator().manual_seed(100 + i)
        q, k, v = (torch.randn(B, h, s, D, generator=g).to(dtype).requires_grad_() for h, s in
                   ((Hq, Sq), (Hkv, Skv), (Hkv, Skv)))
        blocks = torch.rand(B, mh, -(-Sq // bq), -(-Skv // bk), generator=g) < 0.6
        m = sparseops.block_mask_from_dense(blocks, (bq, bk), Sq, Skv)
        o, lse = sparseops.block_sparse_attention(q, k, v, m, causal=causal, window=window, return_lse=True)
        grad = torch.randn(o.shape, generator=g).to(dtype)
        dq, dk, dv = torch.autograd.grad(o, (q, k, v), grad)
        # in float64: the check must not depend on how this process's torch rounds its float32 matmuls
        ref = block_sparse_attention_ref(q.detach().double(), k.detach().double(), v.detach().double(), m,
                                         causal=causal, window=window)
        out[i] = [t.detach() for t in (o, lse, dq, dk, dv, ref)]
    return out


_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import sparseops
assert sparseops.build_info()["cpu_isa"] == {isa!r} or {isa!r} == "noamx", sparseops.build_info()["cpu_isa"]
import test_attention_isa as t
torch.save(t.run_all(), {out!r})
"""


def _run_child(isa: str, tmp: Path) -> dict:
    out = tmp / f"{isa}.pt"
    env = dict(os.environ, **({"SPARSEOPS_CPU_AMX": "0"} if isa == "noamx" else {"SPARSEOPS_CPU_ISA": isa}))
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out), isa=isa)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def default_results():
    return run_all()


@pytest.mark.parametrize("isa", ["avx2", "baseline", "noamx"])
def test_isa_variant_agrees(isa, default_results, tmp_path):
    if isa == "avx2" and sparseops.build_info()["cpu_isa"] == "baseline":
        pytest.skip("no AVX2 on this CPU (or this build has no x86 kernels)")
    if isa == "noamx" and not sparseops.build_info()["cpu_amx_bf16"]:
        pytest.skip("no AMX-BF16 here: the default run already used the AVX-512 products")
    other = _run_child(isa, tmp_path)
    for i, case in enumerate(CASES):
        dtype = case[-1]
        tol = 1e-5 if dtype == torch.float32 else (2e-2 if dtype == torch.bfloat16 else 3e-3)
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), default_results[i][:5], other[i][:5]):
            torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol,
                                       msg=lambda s: f"case {i} {name} ({isa} vs default): {s}")
        for who, res in (("default", default_results[i]), (isa, other[i])):
            torch.testing.assert_close(res[0].float(), res[5].float(), atol=tol, rtol=tol,
                                       msg=lambda s: f"case {i} out ({who} vs the float64 reference): {s}")
