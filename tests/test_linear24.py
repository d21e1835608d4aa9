"""sparse24_linear on CPU: against the pure-torch reference, both ISA paths and both M paths, opcheck,
autograd, torch.compile and the error messages."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import sparseops
from sparseops import Sparse24, compress_24
from sparseops import sparse24_linear
from sparseops.reference import decompress_24_ref, sparse24_linear_ref

ops = torch.ops.sparseops
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = ["none", "relu", "gelu", "silu", "relu2"]
TORCH_ACT = {
    "none": lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "relu2": lambda z: F.relu(z).square(),
}
GEMV_MAX_M = 96  # the largest finite small-M / large-M crossover in linear24_cpu.cpp (bf16)


def make_case(m, n, k, dtype, bias=True):
    w = torch.randn(n, k).to(dtype)
    values, meta = ops.compress_24(w, True, "packed")
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    return x, values, meta, b


def assert_matches_reference(y, x, values, meta, bias, act):
    """fp32: tight. fp16/bf16: error vs the fp32 reference within twice that of torch's own
    low-precision F.linear + act (flash-attention's rule), plus one ulp of the output's scale."""
    ref = sparse24_linear_ref(x.float(), values.float(), meta, None if bias is None else bias.float(), act)
    assert y.shape == ref.shape and y.dtype == x.dtype
    if y.numel() == 0:
        return
    scale = ref.abs().max().item() + 1.0
    err = (y.float() - ref).abs().max().item()
    if x.dtype == torch.float32:
        assert err <= 2e-6 * math.sqrt(x.shape[1] + 1) * scale, err
        return
    w = decompress_24_ref(values, meta)
    low = TORCH_ACT[act](F.linear(x, w, bias)).float()
    err_low = (low - ref).abs().max().item()
    eps = torch.finfo(x.dtype).eps
    assert err <= 2 * err_low + eps * scale, (err, err_low)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_awkward_shapes(dtype, act):
    for m in (0, 1, 3, 17, GEMV_MAX_M + 48):
        for k in (4, 12, 36, 260):
            for n in (1, 7, 33):
                x, values, meta, b = make_case(m, n, k, dtype, bias=(k != 12))
                y = ops.sparse24_linear(x, values, meta, b, act)
                assert_matches_reference(y, x, values, meta, b, act)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_m_around_the_crossover(dtype):
    # Covers every row-count remainder of the 8-row blocks and both sides of the small/large-M switch.
    x, values, meta, b = make_case(GEMV_MAX_M + 9, 40, 292, dtype)
    for m in range(1, GEMV_MAX_M + 10):
        y = ops.sparse24_linear(x[:m], values, meta, b, "silu")
        assert_matches_reference(y, x[:m], values, meta, b, "silu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_m_path_partial_tiles(dtype):
    # N = 300: one full 256-row tile and a partial one; K not a multiple of 32.
    x, values, meta, b = make_case(GEMV_MAX_M + 40, 300, 1028, dtype)
    for act in ("none", "gelu"):
        y = ops.sparse24_linear(x, values, meta, b, act)
        assert_matches_reference(y, x, values, meta, b, act)
    y = ops.sparse24_linear(x, values, meta, None, "relu2")
    assert_matches_reference(y, x, values, meta, None, "relu2")


def test_long_k_small_m():
    # K large enough for the small-M kernel to split it into several pieces.
    x, values, meta, b = make_case(9, 20, 8196, torch.float32)
    y = ops.sparse24_linear(x, values, meta, b, "none")
    assert_matches_reference(y, x, values, meta, b, "none")


@pytest.mark.parametrize("m", [2, GEMV_MAX_M + 30])
def test_inference_mode(m):
    x, values, meta, b = make_case(m, 33, 64, torch.bfloat16)
    with torch.inference_mode():
        y = ops.sparse24_linear(x, values, meta, b, "relu")
    assert_matches_reference(y, x, values, meta, b, "relu")


@pytest.mark.parametrize("m", [5, GEMV_MAX_M + 30])
def test_non_contiguous_inputs(m):
    x, values, meta, b = make_case(m, 33, 36, torch.float32)
    xt = x.t().contiguous().t()  # column-major
    xs = torch.randn(m, 72)[:, ::2]  # strided columns
    for xx in (xt, xs):
        assert not xx.is_contiguous()
        y = ops.sparse24_linear(xx, values, meta, b, "gelu")
        assert_matches_reference(y, xx, values, meta, b, "gelu")
    vt = values.t().contiguous().t()
    y = ops.sparse24_linear(x, vt, meta, b[::1], "none")
    assert_matches_reference(y, x, values, meta, b, "none")


def test_empty_k_and_n():
    b = torch.randn(5)
    values, meta = torch.empty(5, 0), torch.empty(5, 0, dtype=torch.uint8)
    x = torch.randn(3, 0)
    for act in ACTIVATIONS:
        torch.testing.assert_close(ops.sparse24_linear(x, values, meta, b, act), TORCH_ACT[act](b).expand(3, 5))
    assert torch.equal(ops.sparse24_linear(x, values, meta, None, "gelu"), torch.zeros(3, 5))
    y = ops.sparse24_linear(torch.randn(4, 8), torch.empty(0, 4), torch.empty(0, 1, dtype=torch.uint8), None, "none")
    assert y.shape == (4, 0)


def test_wrapper_shapes_and_activation_none():
    w24 = compress_24(torch.randn(7, 36), prune=True)
    b = torch.randn(7)
    x = torch.randn(2, 3, 36)
    y = sparse24_linear(x, w24, b, activation="silu")
    assert y.shape == (2, 3, 7)
    ref = sparse24_linear_ref(x, w24.values, w24.meta, b, "silu")
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y1 = sparse24_linear(x[0, 0], w24, backend="cpu")
    assert y1.shape == (7,)
    torch.testing.assert_close(y1, sparse24_linear_ref(x[0, 0], w24.values, w24.meta), atol=1e-5, rtol=1e-5)
    assert sparse24_linear(torch.randn(0, 4, 36), w24).shape == (0, 4, 7)


ISA_SCRIPT = textwrap.dedent(
    """
    import torch, sparseops
    from sparseops.reference import sparse24_linear_ref
    ops = torch.ops.sparseops
    torch.manual_seed(0)
    print(sparseops.build_info()["cpu_isa"])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for m, n, k in ((1, 7, 36), (3, 33, 260), (11, 5, 100), (40, 9, 68), (16, 70, 1600), (2, 13, 1540),
                        (70, 20, 516)):  # 70: two passes of the AMX kernel (64 x rows each)
            w = torch.randn(n, k).to(dtype)
            v, meta = ops.compress_24(w, True, "packed")
            x, b = torch.randn(m, k).to(dtype), torch.randn(n).to(dtype)
            y = ops.sparse24_linear(x, v, meta, b, "gelu").float()
            ref = sparse24_linear_ref(x.float(), v.float(), meta, b.float(), "gelu")
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            err = (y - ref).abs().max().item()
            assert err <= tol * (ref.abs().max().item() + 1), (dtype, m, n, k, err)
    print("ok")
    """
)


def _run_on_path(script: str, path: str) -> list[str]:
    """Runs `script` in a child Python on one CPU path (the knobs are read once, at import): "baseline",
    "avx2", "default", "noamx" (the AVX-512 kernels on a CPU whose default for bf16 is the AMX one) or
    "tiles" (the tiled large-M path forced for every M). Returns its stdout words."""
    if path == "noamx" and not sparseops.build_info().get("cpu_amx_bf16"):
        pytest.skip("no AMX-BF16 here: the default path already runs the AVX-512 kernels")
    knobs = {"tiles": {"SPARSEOPS_LINEAR24_GEMV_MAX_M": "0"}, "default": {},
             "noamx": {"SPARSEOPS_CPU_AMX": "0"}}.get(path, {"SPARSEOPS_CPU_ISA": path})
    out = subprocess.run([sys.executable, "-c", script], env=_child_env(**knobs), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _child_env(**knobs: str) -> dict:
    """This process's environment for a child Python, with only the given sparseops knobs set and this
    sparseops importable."""
    env = dict(os.environ)
    env.pop("SPARSEOPS_CPU_ISA", None)
    env.pop("SPARSEOPS_LINEAR24_GEMV_MAX_M", None)
    env.pop("SPARSEOPS_CPU_AMX", None)
    env.update(knobs)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(sparseops.__file__)), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("isa", ["baseline", "avx2", "default", "noamx", "tiles"])
def test_isa_paths(isa):
    """Each CPU path in a fresh process (the knobs are read once): the portable kernels, the AVX2 ones,
    the default (AVX-512, and AMX for bf16 where the CPU has it) ones, AVX-512 without AMX, and the tiled large-M path forced for every M and dtype (by default
    fp32/fp16 never take it on AVX-512 CPUs). K values end in a partial 8-column chunk and span pieces."""
    lines = _run_on_path(ISA_SCRIPT, isa)
    assert lines[-1] == "ok"
    if isa == "baseline":
        assert lines[0] == "baseline"
    elif isa == "avx2":
        assert lines[0] in ("avx2", "baseline")  # baseline on a CPU without AVX2
    elif "SPARSEOPS_CPU_ISA" not in os.environ and isa == "default":  # else this process runs a capped variant
        assert lines[0] == sparseops.build_info()["cpu_isa"]


def test_unknown_cpu_isa_value_warns():
    env = _child_env(SPARSEOPS_CPU_ISA="AVX2")  # the values are lower case
    code = "import sparseops; print(sparseops.build_info()['cpu_isa'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ignoring SPARSEOPS_CPU_ISA=AVX2 (expected baseline, avx2 or avx512)" in out.stderr


CORRUPT_META_SCRIPT = textwrap.dedent(
    """
    import torch, sparseops
    ops = torch.ops.sparseops
    # The issue's example: code 0x0 (first index 0, second 0) is invalid.
    v, m = torch.arange(1, 9.).reshape(1, 8), torch.zeros(1, 2, dtype=torch.uint8)
    # A real weight with one corrupt code deep inside: row 17, group 10 (byte 5, low nibble 0xB: 3 >= 2).
    w = torch.randn(40, 292)
    values, meta = ops.compress_24(w, True, "packed")
    meta[17, 5] = (meta[17, 5] & 0xF0) | 0xB
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for rows in (1, 7, 200):  # small-M kernels and (for bf16, or forced) the tiled path
            for vv, mm, k, where in ((v, m, 16, "row 0, group 0"), (values, meta, 292, "row 17, group 10")):
                try:
                    ops.sparse24_linear(torch.ones(rows, k, dtype=dtype), vv.to(dtype), mm, None, "none")
                except RuntimeError as e:
                    assert f"sparse24_linear: meta holds an invalid 2:4 code at {where}" in str(e), str(e)
                else:
                    raise SystemExit(f"no error: {dtype} rows={rows} {where}")
    print("ok")
    """
)


NONFINITE_X_SCRIPT = textwrap.dedent(
    """
    import torch, sparseops
    from sparseops.reference import sparse24_linear_ref
    ops = torch.ops.sparseops
    torch.manual_seed(0)
    # The issue's example: w[:, :2] = 1, 2 (the rest pruned), x[0, 2] = inf: 1 + 2 = 3, not NaN.
    w = torch.zeros(1, 16)
    w[0, :2] = torch.tensor([1.0, 2.0])
    values, meta = ops.compress_24(w, False, "packed")
    x = torch.ones(1, 16)
    x[0, 2] = float("inf")
    got = ops.sparse24_linear(x, values, meta, None, "none")
    assert got.item() == 3.0, got
    w = torch.randn(48, 200)
    values, meta = ops.compress_24(w, True, "packed")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for rows in (1, 7, 150):
            x = torch.randn(rows, 200)
            x[0, 3] = float("inf")  # pruned in some rows of W, kept in others
            x[rows // 2, 101] = float("nan")
            x[-1, 50] = -float("inf")
            xd, vd = x.to(dtype), values.to(dtype)
            y = ops.sparse24_linear(xd, vd, meta, None, "none")
            ref = sparse24_linear_ref(xd, vd, meta)
            same_nonfinite = torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
            assert same_nonfinite, (dtype, rows)
            finite = torch.isfinite(ref)
            assert finite.any()
            torch.testing.assert_close(y[finite].float(), ref[finite].float(), rtol=2e-2, atol=2e-2)
    print("ok")
    """
)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "default", "noamx", "tiles"])
def test_nonfinite_x_at_a_pruned_position_never_enters_the_product(isa):
    """A pruned weight is structurally absent on every path (the issue's example gave NaN on the AVX2 and
    tiled paths and 3.0 on the portable one)."""
    assert _run_on_path(NONFINITE_X_SCRIPT, isa)[-1] == "ok"


@pytest.mark.parametrize("isa", ["baseline", "avx2", "default", "noamx", "tiles"])
def test_corrupt_meta_is_an_error_on_every_path(isa):
    """Every CPU path (portable, AVX2, AVX-512 small-M kernels; tiles) checks the metadata rows of its work
    item before its kernel reads them, so corrupt metadata is one error everywhere, not a path-dependent
    answer (the issue's example gave 0.0, 36.0 and 20.0 on three paths)."""
    assert _run_on_path(CORRUPT_META_SCRIPT, isa)[-1] == "ok"


@pytest.mark.parametrize("value", ["", "abc", "-5", "12x"])
def test_bad_gemv_max_m_value_warns_and_is_ignored(value):
    env = _child_env(SPARSEOPS_LINEAR24_GEMV_MAX_M=value)
    code = ("import torch, sparseops; s = sparseops.compress_24(torch.randn(8, 16), prune=True); "
            "print(sparseops.sparse24_linear(torch.randn(2, 16), s).shape)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f'ignoring SPARSEOPS_LINEAR24_GEMV_MAX_M="{value}" (expected a whole number >= 0)' in out.stderr


# ---- autograd ------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("m", [3, GEMV_MAX_M + 8])
def test_grads_match_reference_autograd(act, m):
    x0, values0, meta, b0 = make_case(m, 12, 36, torch.float32)
    grad_y = torch.randn(m, 12)

    def grads(fn):
        x, v, b = (t.clone().requires_grad_() for t in (x0, values0, b0))
        fn(x, v, b).backward(grad_y)
        return x.grad, v.grad, b.grad

    ours = grads(lambda x, v, b: sparse24_linear(x, Sparse24(v, meta), b, activation=act))
    ref = grads(lambda x, v, b: sparse24_linear_ref(x, v, meta, b, act))
    for g, r in zip(ours, ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_grads_partial_needs_and_bf16():
    x0, values0, meta, b0 = make_case(4, 9, 20, torch.bfloat16)
    x = x0.clone().requires_grad_()
    ops.sparse24_linear(x, values0, meta, b0, "gelu").sum().backward()
    xr = x0.float().requires_grad_()
    sparse24_linear_ref(xr, values0.float(), meta, b0.float(), "gelu").sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), xr.grad, atol=5e-2, rtol=5e-2)
    v = values0.clone().requires_grad_()
    ops.sparse24_linear(x0, v, meta, None, "relu").sum().backward()
    vr = values0.float().requires_grad_()
    sparse24_linear_ref(x0.float(), vr, meta, None, "relu").sum().backward()
    torch.testing.assert_close(v.grad.float(), vr.grad, atol=5e-2, rtol=5e-2)


# ---- opcheck and compile --------------------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    samples = [
        (make_case(3, 7, 12, torch.float32), "gelu"),
        (make_case(GEMV_MAX_M + 4, 5, 36, torch.float32, bias=False), "relu"),
        (make_case(2, 4, 8, torch.bfloat16), "relu2"),
    ]
    for (x, values, meta, b), act in samples:
        if requires_grad:
            x.requires_grad_()
            values.requires_grad_()
            if b is not None:
                b.requires_grad_()
        torch.library.opcheck(ops.sparse24_linear, (x, values, meta, b, act))


def test_torch_compile_fullgraph_with_backward():
    w24 = compress_24(torch.randn(33, 68), prune=True)
    b = torch.randn(33)

    def f(x):
        return sparse24_linear(x, w24, b, activation="gelu")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 68, requires_grad=True)
    y = compiled(x)
    torch.testing.assert_close(y, f(x))
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    sparse24_linear_ref(xr, w24.values, w24.meta, b, "gelu").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-4, rtol=1e-4)


# ---- bad inputs ----------------------------------------------------------------------------------


def test_bad_inputs_op():
    x, values, meta, b = make_case(3, 7, 12, torch.float32)
    with pytest.raises(TypeError, match=r"sparse24_linear: expected values to have x's dtype Float \(got BFloat16\)"):
        ops.sparse24_linear(x, values.bfloat16(), meta, b, "none")
    with pytest.raises(TypeError, match=r"sparse24_linear: expected x to have dtype in"):
        ops.sparse24_linear(x.double(), values, meta, b, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: x has 16 features \(x.size\(-1\)\) but the weight expects 12"):
        ops.sparse24_linear(torch.randn(3, 16), values, meta, b, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected x.size\(1\) \(K\) to be divisible by 4 \(got 10\)"):
        ops.sparse24_linear(torch.randn(3, 10), torch.randn(7, 5), meta, b, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected x to be 2-D \(got 3-D"):
        ops.sparse24_linear(x.unsqueeze(0), values, meta, b, "none")
    with pytest.raises(TypeError, match=r"sparse24_linear: expected meta to have dtype uint8"):
        ops.sparse24_linear(x, values, meta.short(), b, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected meta of shape \[7, 2\]"):
        ops.sparse24_linear(x, values, meta[:, :1], b, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected bias of shape \[7\] \(got \[6\]\)"):
        ops.sparse24_linear(x, values, meta, b[:6], "none")
    with pytest.raises(TypeError, match=r"sparse24_linear: expected bias to have x's dtype Float \(got Half\)"):
        ops.sparse24_linear(x, values, meta, b.half(), "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected activation in .* \(got \"tanh\"\)"):
        ops.sparse24_linear(x, values, meta, b, "tanh")


def test_bad_inputs_wrapper():
    w24 = compress_24(torch.randn(7, 12), prune=True)
    x = torch.randn(3, 12)
    with pytest.raises(TypeError, match=r"sparse24_linear: expected x to be a Tensor \(got list\)"):
        sparse24_linear([1.0], w24)
    with pytest.raises(TypeError, match=r"sparse24_linear: expected w24 to be a Sparse24 .*\(got Tensor\)"):
        sparse24_linear(x, torch.randn(7, 12))
    with pytest.raises(TypeError, match=r"sparse24_linear: expected bias to be a Tensor or None \(got float\)"):
        sparse24_linear(x, w24, 1.0)
    with pytest.raises(ValueError, match=r"sparse24_linear: expected activation in .* \(got 'tanh'\)"):
        sparse24_linear(x, w24, activation="tanh")
    with pytest.raises(ValueError, match=r"sparse24_linear: expected backend in .* \(got 'mkl'\)"):
        sparse24_linear(x, w24, backend="mkl")
    with pytest.raises(ValueError, match=r"sparse24_linear: expected backend in \('auto', 'cpu'\) for x on cpu \(got 'cusparselt'"):
        sparse24_linear(x, w24, backend="cusparselt")
    with pytest.raises(ValueError, match=r"sparse24_linear: expected w24.layout == 'packed' for x on cpu \(got 'cutlass'\)"):
        sparse24_linear(x, w24._replace(layout="cutlass"))
    with pytest.raises(ValueError, match=r"sparse24_linear: expected x of shape \[..., K\]"):
        sparse24_linear(torch.tensor(1.0), w24)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_long_k_small_m_register_blocks(dtype):
    # Small-M kernel: several K pieces, W rows in pairs plus an odd last row (N = 7), every x-row
    # block size of the 8-row passes (m = 1..9, 16), and a partial last step (K % 64 == 36).
    x, values, meta, b = make_case(16, 7, 8228, dtype)
    for m in (1, 2, 5, 8, 9, 16):
        y = ops.sparse24_linear(x[:m], values, meta, b, "none")
        assert_matches_reference(y, x[:m], values, meta, b, "none")
