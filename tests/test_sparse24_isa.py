"""The CPU kernel variants of nm_mask, compress_24, decompress_24, nm_srste (forward and backward) and
transposable_mask_24 agree bit for bit.

The baseline kernels run in a subprocess started with SPARSEOPS_CPU_ISA=baseline (the variant is chosen
once per process); this process runs the default variant (AVX-512 where the CPU has it). Both run the
same cases -- random, tie-heavy (small integers), signed zeros, subnormals, +-Inf, NaN, shapes whose
rows end in partial vectors -- and every output is compared as raw bits; error messages (the first
NaN / non-2:4 group / invalid code, also when several threads see one) must be identical too.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

import sparseops
from sparseops.reference import nm_mask_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ---- the cases (built identically in both processes from fixed seeds) ---------------------------


def _values(kind: str, shape, dtype, gen: torch.Generator) -> torch.Tensor:
    if kind == "randn":
        return torch.randn(shape, generator=gen).to(dtype)
    if kind == "ties":  # many exact ties, including +0 vs -0
        w = torch.randint(-2, 3, shape, generator=gen).to(dtype)
        return torch.where(torch.rand(shape, generator=gen) < 0.2, -torch.zeros_like(w), w)
    if kind == "special":  # +-Inf, signed zeros, subnormals, the largest finite values
        w = torch.randn(shape, generator=gen).to(dtype)
        info = torch.finfo(dtype)
        pool = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, info.tiny / 4, -info.tiny / 2, info.max,
                             -info.max, info.tiny], dtype=dtype)
        pick = torch.randint(0, len(pool), shape, generator=gen)
        return torch.where(torch.rand(shape, generator=gen) < 0.4, pool[pick], w)
    raise ValueError(kind)


def _random_meta(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A valid "packed" meta for [rows, cols] (random pairs), with garbage in a trailing padding nibble."""
    valid = torch.tensor([0b0100, 0b1000, 0b1100, 0b1001, 0b1101, 0b1110], dtype=torch.uint8)
    groups = cols // 4
    codes = valid[torch.randint(0, 6, (rows, groups), generator=gen)]
    if groups % 2:
        codes = torch.cat((codes, torch.randint(0, 16, (rows, 1), generator=gen).to(torch.uint8)), dim=1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _two_four(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """w with at most 2 non-zeros per group (some groups with 0 or 1), keeping w's special values."""
    keep = nm_mask_ref(torch.randn(w.shape, generator=gen), 2, 4)
    keep &= torch.rand(w.shape, generator=gen) < 0.85
    return torch.where(keep, w, torch.zeros_like(w))


def build_cases() -> dict[str, tuple]:
    """name -> (op, args); op in nm_mask / compress / decompress / srste / srste_backward / transposable."""
    gen = torch.Generator().manual_seed(1234)
    cases: dict[str, tuple] = {}
    nm_shapes = [(1, 16), (3, 20), (7, 36), (5, 1000), (2, 3, 48), (257, 96), (4, 2 * 4104)]
    nm_params = [(1, 2), (1, 4), (2, 4), (3, 4), (1, 8), (4, 8), (7, 8), (1, 16), (5, 16), (15, 16), (2, 3), (3, 6)]
    for dtype in DTYPES:
        for kind in ("randn", "ties", "special"):
            for n, m in nm_params:
                for shape in nm_shapes:
                    if shape[-1] % m:
                        continue
                    w = _values(kind, shape, dtype, gen)
                    cases[f"nm_mask {n}:{m} {_NAME[dtype]} {kind} {shape}"] = ("nm_mask", w, n, m)
        # NaN: the first NaN group is named, wherever the threads split the work.
        for pos in [(0, 0), (3, 18), (60, 2047), (120, 5), (127, 2044)]:
            w = torch.randn(128, 2048, generator=gen).to(dtype)
            w[pos] = float("nan")
            w[127, 2047] = float("nan")
            cases[f"nm_mask nan {_NAME[dtype]} {pos}"] = ("nm_mask", w, 2, 4)
            cases[f"nm_mask nan 4:16 {_NAME[dtype]} {pos}"] = ("nm_mask", w, 4, 16)

        cols_list = [4, 8, 12, 20, 36, 44, 100, 260, 1028]
        for kind in ("randn", "ties", "special"):
            for cols in cols_list:
                w = _values(kind, (9, cols), dtype, gen)
                cases[f"compress prune {_NAME[dtype]} {kind} 9x{cols}"] = ("compress", w, True, "packed")
                cases[f"compress 2:4 {_NAME[dtype]} {kind} 9x{cols}"] = ("compress", _two_four(w, gen), False, "packed")
            if dtype != torch.float32:
                for shape in [(32, 32), (64, 96), (96, 288)]:
                    w = _values(kind, shape, dtype, gen)
                    cases[f"compress prune cutlass {_NAME[dtype]} {kind} {shape}"] = ("compress", w, True, "cutlass")
                    cases[f"compress 2:4 cutlass {_NAME[dtype]} {kind} {shape}"] = (
                        "compress", _two_four(w, gen), False, "cutlass")
        # NaN is a non-zero for prune=False (kept, its bits intact); an error for prune=True.
        w = _two_four(torch.randn(16, 44, generator=gen).to(dtype), gen)
        w[3, 5] = float("nan")
        w[3, 4] = 0
        w[3, 6] = 0
        cases[f"compress 2:4 with NaN kept {_NAME[dtype]}"] = ("compress", w, False, "packed")
        for pos in [(0, 1), (5, 43), (200, 1000), (255, 1027)]:
            w = torch.randn(256, 1028, generator=gen).to(dtype)
            w[pos] = float("nan")
            w[255, 1026] = float("nan")
            cases[f"compress prune nan {_NAME[dtype]} {pos}"] = ("compress", w, True, "packed")
            w = _two_four(torch.randn(256, 1028, generator=gen).to(dtype), gen)
            w[pos[0], (pos[1] // 4) * 4:(pos[1] // 4) * 4 + 3] = 1.0
            w[255, 1024:1028] = -1.0
            cases[f"compress not 2:4 {_NAME[dtype]} {pos}"] = ("compress", w, False, "packed")

        for cols in cols_list:
            values = _values("special", (9, cols // 2), dtype, gen)
            cases[f"decompress {_NAME[dtype]} 9x{cols}"] = ("decompress", values, _random_meta(9, cols, gen), "packed")
        if dtype != torch.float32:
            for shape in [(32, 32), (64, 96)]:
                # built by torch's own CUTLASS conversion, so that the input does not depend on the ISA
                w = torch.randn(shape, generator=gen).to(dtype)
                values, meta = sparse_semi_structured_from_dense_cutlass(w * nm_mask_ref(w, 2, 4))
                cases[f"decompress cutlass {_NAME[dtype]} {shape}"] = ("decompress", values, meta, "cutlass")
        for r, byte, bad in [(0, 0, 0x05), (7, 100, 0xF0), (255, 10, 0x3C), (255, 128, 0x00)]:
            meta = _random_meta(256, 1028, gen)
            meta[r, byte] = bad
            meta[255, 128] = 0x44  # the padding nibble of the last byte holds garbage: ignored
            if (r, byte) == (255, 128):
                meta[r, byte] = 0x70 | bad  # group 256 invalid (low nibble 0), padding nibble 7
            values = torch.randn(256, 514, generator=gen).to(dtype)
            cases[f"decompress invalid {_NAME[dtype]} row {r} byte {byte}"] = ("decompress", values, meta, "packed")
        # nm_srste: NaN ranked as the largest magnitude (no error); the backward's float32 maths (two
        # roundings, no FMA) and its rounding to fp16/bf16, also of NaN and of values that overflow.
        for kind in ("randn", "ties", "special"):
            for n, m in [(1, 4), (2, 4), (3, 4), (2, 8), (4, 16), (2, 3)]:
                for shape in [(3, 20), (2, 3, 48), (257, 96), (5, 1000)]:
                    if shape[-1] % m:
                        continue
                    w = _values(kind, shape, dtype, gen)
                    if kind == "special":
                        w.view(-1)[::7] = float("nan")
                    cases[f"srste {n}:{m} {_NAME[dtype]} {kind} {shape}"] = ("srste", w, n, m)
        for shape in [(7, 36), (129, 1000)]:
            g, w = _values("special", shape, dtype, gen), _values("special", shape, dtype, gen)
            g.view(-1)[::11] = float("nan")
            w.view(-1)[3::13] = float("nan")
            mask = torch.rand(shape, generator=gen) < 0.5
            for decay, scale in [(2e-4, None), (0.0, 0.5), (3e-2, 0.0), (0.7, 1e30)]:
                s_arg = None if scale is None else torch.tensor([scale], dtype=torch.float32)
                cases[f"srste backward {_NAME[dtype]} {shape} decay={decay} scale={scale}"] = (
                    "srste_backward", g, w, mask, decay, s_arg)
        # transposable_mask_24: runs of 16 blocks, shorter remainders, ties (the enumeration order decides),
        # +-Inf, and the first NaN block reported.
        for kind in ("randn", "ties", "special"):
            for shape in [(4, 4), (8, 64), (12, 68), (20, 260), (64, 1028)]:
                cases[f"transposable {_NAME[dtype]} {kind} {shape}"] = ("transposable", _values(kind, shape, dtype, gen))
        for pos in [(0, 0), (9, 70), (63, 1027)]:
            w = torch.randn(64, 1028, generator=gen).to(dtype)
            w[pos] = float("nan")
            w[60, 1000] = float("nan")
            cases[f"transposable nan {_NAME[dtype]} {pos}"] = ("transposable", w)
    return cases


def run_case(case: tuple):
    """Outputs of one case (a tuple of tensors), or the error it raised as 'Type: message'."""
    op, *args = case
    ops = torch.ops.sparseops
    try:
        if op == "nm_mask":
            w, n, m = args
            return (ops.nm_mask(w, n, m, None),)
        if op == "transposable":
            return (ops.transposable_mask_24(args[0]),)
        if op == "srste":
            w, n, m = args
            return ops.nm_srste(w, n, m, 2e-4, None)
        if op == "srste_backward":
            return (ops.nm_srste_backward(*args),)
        if op == "compress":
            w, prune, layout = args
            values, meta = ops.compress_24(w, prune, layout)
            return values, meta, ops.decompress_24(values, meta, layout)
        values, meta, layout = args
        return (ops.decompress_24(values, meta, layout),)
    except Exception as e:  # noqa: BLE001 -- the message itself is compared
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"


def run_all() -> dict:
    return {name: run_case(case) for name, case in build_cases().items()}


def _bits(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])
    return t


def _show(result) -> str:
    return repr(result) if isinstance(result, str) else f"<{len(result)} output tensors>"


# ---- the comparison ---------------------------------------------------------------------------

_CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
import sparseops
assert sparseops.build_info()["cpu_isa"] == "baseline", sparseops.build_info()["cpu_isa"]
import test_sparse24_isa as t
torch.save(t.run_all(), {out!r})
"""


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    if sparseops.build_info()["cpu_isa"] == "baseline":
        pytest.skip("this process runs the baseline kernels too (no AVX-512 here, or SPARSEOPS_CPU_ISA=baseline)")
    out = tmp_path_factory.mktemp("isa") / "baseline.pt"
    env = dict(os.environ, SPARSEOPS_CPU_ISA="baseline")
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out), run_all()


CASES = list(build_cases())


@pytest.mark.parametrize("family", ["nm_mask", "compress", "decompress", "srste", "transposable"])
def test_isa_variants_bit_identical(both, family):
    baseline, default = both
    names = [n for n in CASES if n.startswith(family)]
    assert set(baseline) == set(default) == set(CASES)
    mismatches = []
    for name in names:
        b, d = baseline[name], default[name]
        if isinstance(b, str) or isinstance(d, str):
            if b != d:
                mismatches.append(f"{name}: baseline {_show(b)} vs default {_show(d)}")
            continue
        for i, (tb, td) in enumerate(zip(b, d)):
            if tb.dtype != td.dtype or tb.shape != td.shape or not torch.equal(_bits(tb), _bits(td)):
                mismatches.append(f"{name}: output {i} differs")
    assert not mismatches, "\n".join(mismatches[:20])


def test_isa_cases_cover_errors_and_successes(both):
    """The case list exercises both outcomes: the error cases raise, the others do not."""
    baseline, _ = both
    for name in CASES:
        expect_error = any(k in name for k in (" nan ", "not 2:4", "invalid"))
        assert isinstance(baseline[name], str) == expect_error, (name, _show(baseline[name]))
    msg = baseline["compress not 2:4 fp32 (200, 1000)"]
    assert "row 200, group 250 (columns 1000..1003)" in msg
    msg = baseline["decompress invalid bf16 row 7 byte 100"]
    assert "at row 7, group 200" in msg
    msg = baseline["nm_mask nan fp16 (60, 2047)"]
    assert f"flat index {60 * 2048 + 2044}" in msg
