"""Property-based tests (hypothesis) of the 2:4 ops against their references: random shapes (1, odd,
large K), dtypes, strided views, inf/NaN in x, random and corrupt metadata. The whole module also runs
once per other CPU path in a child process (the ISA is fixed at import), see test_every_cpu_path."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseops
from sparseops.reference import compress_24_ref, decompress_24_ref, nm_mask_ref, nm_srste_ref, sparse24_linear_ref

ops = torch.ops.sparseops
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PROFILE = settings(max_examples=int(os.environ.get("SPARSEOPS_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
                   derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _tensor(rows: int, cols: int, dtype: torch.dtype, seed: int, strided: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if strided:  # every other column of a wider matrix: a non-contiguous view
        return torch.randn(rows, 2 * cols, generator=g).to(dtype)[:, ::2]
    return torch.randn(rows, cols, generator=g).to(dtype)


def _valid_codes(meta: torch.Tensor, groups: int) -> torch.Tensor:
    codes = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(meta.shape[0], -1)[:, :groups]
    return (codes & 3) < (codes >> 2)


@PROFILE
@given(rows=st.integers(1, 9), groups=st.integers(1, 12), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), strided=st.booleans())
def test_nm_mask_matches_reference(rows, groups, nm, dtype, seed, strided):
    n, m = nm
    w = _tensor(rows, groups * m, dtype, seed, strided)
    assert torch.equal(sparseops.nm_mask(w, n, m), nm_mask_ref(w, n, m))


@PROFILE
@given(rows=st.integers(1, 9), groups=st.integers(1, 40), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       strided=st.booleans(), nan_at=st.one_of(st.none(), st.integers(0, 10**6)))
def test_srste_forward_matches_reference(rows, groups, dtype, seed, strided, nan_at):
    w = _tensor(rows, 4 * groups, dtype, seed, strided).clone()
    if nan_at is not None:
        w.view(-1)[nan_at % w.numel()] = float("nan")
    out, mask = ops.nm_srste(w, 2, 4)
    ref_out, ref_mask = nm_srste_ref(w, 2, 4)
    assert torch.equal(mask, ref_mask)
    assert torch.equal(out.isnan(), ref_out.isnan())
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(ref_out))


@PROFILE
@given(rows=st.integers(1, 9), groups=st.integers(1, 40), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       strided=st.booleans())
def test_compress_roundtrip_matches_reference(rows, groups, dtype, seed, strided):
    w = _tensor(rows, 4 * groups, dtype, seed, strided)
    s = sparseops.compress_24(w, prune=True)
    ref_values, ref_meta = compress_24_ref(w, prune=True)
    assert torch.equal(s.values, ref_values) and torch.equal(s.meta, ref_meta)
    assert torch.equal(sparseops.decompress_24(s), decompress_24_ref(ref_values, ref_meta))


@PROFILE
@given(m=st.sampled_from([1, 2, 5, 8, 17, 97, 130]), n=st.integers(1, 40), groups=st.sampled_from([1, 3, 16, 75, 257]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), strided=st.booleans(), bias=st.booleans(),
       act=st.sampled_from(["none", "relu", "gelu", "silu", "relu2"]),
       nonfinite=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([float("inf"), -float("inf"), float("nan")])),
                          max_size=3))
def test_linear_matches_reference(m, n, groups, dtype, seed, strided, bias, act, nonfinite):
    k = 4 * groups
    w = _tensor(n, k, dtype, seed, False)
    x = _tensor(m, k, dtype, seed + 1, strided).clone() if nonfinite else _tensor(m, k, dtype, seed + 1, strided)
    for pos, value in nonfinite:
        x.view(-1)[pos % x.numel()] = value
    b = _tensor(1, n, dtype, seed + 2, False)[0] if bias else None
    s = sparseops.compress_24(w, prune=True)
    y = sparseops.sparse24_linear(x, s, b, activation=act)
    ref = sparse24_linear_ref(x, s.values, s.meta, b, act)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    finite = torch.isfinite(ref)
    scale = ref[finite].float().abs().max().item() + 1 if finite.any() else 1
    torch.testing.assert_close(y[finite].float(), ref[finite].float(), rtol=tol, atol=tol * scale)


@PROFILE
@given(m=st.sampled_from([1, 3, 130]), n=st.integers(1, 12), groups=st.integers(1, 40), seed=st.integers(0, 2**16),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3))
def test_linear_rejects_exactly_the_corrupt_metadata(m, n, groups, seed, flips):
    w = _tensor(n, 4 * groups, torch.float32, seed, False)
    s = sparseops.compress_24(w, prune=True)
    meta = s.meta.clone()
    for pos, byte in flips:
        meta.view(-1)[pos % meta.numel()] = byte
    valid = _valid_codes(meta, groups)
    x = _tensor(m, 4 * groups, torch.float32, seed + 1, False)
    if valid.all():
        y = ops.sparse24_linear(x, s.values, meta, None, "none")
        torch.testing.assert_close(y, sparse24_linear_ref(x, s.values, meta), rtol=1e-4, atol=1e-4)
    else:
        row, group = (int(i) for i in (~valid).nonzero()[0])
        with pytest.raises(RuntimeError, match=rf"sparse24_linear: meta holds an invalid 2:4 code at row {row}, group {group} "):
            ops.sparse24_linear(x, s.values, meta, None, "none")
        with pytest.raises(RuntimeError, match=rf"decompress_24: meta holds an invalid 2:4 code at row {row}, group {group} "):
            ops.decompress_24(s.values, meta, "packed")


@pytest.mark.parametrize("knobs", [{"SPARSEOPS_CPU_ISA": "avx2"}, {"SPARSEOPS_CPU_ISA": "baseline"},
                                   {"SPARSEOPS_LINEAR24_GEMV_MAX_M": "0"}, {"SPARSEOPS_CPU_AMX": "0"}],
                         ids=["avx2", "baseline", "tiles", "noamx"])
def test_every_cpu_path(knobs):
    """The properties above, in a child process per other CPU path (fewer examples each)."""
    if "SPARSEOPS_PROPERTY_CHILD" in os.environ:
        pytest.skip("already a child run")
    if "SPARSEOPS_CPU_AMX" in knobs and not sparseops.build_info().get("cpu_amx_bf16"):
        pytest.skip("no AMX-BF16 here: the default path already runs the AVX-512 kernels")
    env = dict(os.environ, SPARSEOPS_PROPERTY_CHILD="1", SPARSEOPS_HYPOTHESIS_EXAMPLES="12", **knobs)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(sparseops.__file__)), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "not every_cpu_path"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
