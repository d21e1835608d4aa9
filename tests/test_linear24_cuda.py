"""CUDA 2:4 linear backends: the packed-layout GEMV (sparse24_linear on CUDA), the CUTLASS sm80 sparse
GEMM (sparse24_linear_cutlass) and cuSPARSELt (compress_24_cusparselt, sparse24_linear_cusparselt),
against a dense fp32 reference (decompress + F.linear in fp32, then the activation).

Everything that launches a kernel is marked requires_cuda (skipped without a GPU); the routing logic,
the fake kernels (on the meta device) and the CPU-side errors run everywhere."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sparseops
from sparseops import Sparse24, compress_24, decompress_24
from sparseops import linear24_cuda as L
from sparseops.sparse24 import _kept_indices_packed

cuda = pytest.mark.requires_cuda
_ops = torch.ops.sparseops

MS = [1, 7, 16, 64, 257]
HALF = [torch.float16, torch.bfloat16]
# (atol, rtol) on outputs of magnitude ~1 (x ~ N(0,1), W ~ N(0, 1/K)): fp32 accumulation in every
# backend; the 16-bit ones round the output once (the CUTLASS path twice: y^T, then y).
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 3e-2)}


def _weight(n: int, k: int, dtype: torch.dtype, device: str = "cuda") -> torch.Tensor:
    """A 2:4-sparse W [n, k] (pruned), scaled so outputs are O(1)."""
    w = torch.randn(n, k, device=device) / math.sqrt(k)
    dense = decompress_24(compress_24(w, prune=True))
    return dense.to(dtype)


def _reference(x, w_dense, bias, activation):
    y = F.linear(x.float(), w_dense.float(), None if bias is None else bias.float())
    return L.apply_activation(y, activation)


def _inputs(m, n, k, dtype, with_bias):
    w = _weight(n, k, dtype)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    return x, w, bias


def _assert_close(y, ref, dtype):
    atol, rtol = TOL[dtype]
    assert y.dtype == dtype and y.is_contiguous()
    torch.testing.assert_close(y.float(), ref, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# packed layout: sparse24_linear on CUDA (GEMV for M <= 16, decompress + cuBLAS above)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("nk", [(37, 100), (256, 512), (1024, 4096)])  # K % 16 != 0: scalar path
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_matches_reference(dtype, m, nk, with_bias):
    n, k = nk
    x, w, bias = _inputs(m, n, k, dtype, with_bias)
    s = compress_24(w)
    y = L.cuda_sparse24_linear(x, s, bias, "gelu", backend="gemv")
    _assert_close(y, _reference(x, w, bias, "gelu"), dtype)


@cuda
@pytest.mark.parametrize("activation", L.ACTIVATIONS)
@pytest.mark.parametrize("m", [1, 5, 16, 33])
def test_packed_activations(activation, m):
    x, w, bias = _inputs(m, 128, 256, torch.float16, True)
    y = _ops.sparse24_linear(x, *compress_24(w)[:2], bias, activation)
    _assert_close(y, _reference(x, w, bias, activation), torch.float16)


@cuda
def test_packed_gemv_non_contiguous_x():
    x, w, bias = _inputs(8, 64, 256, torch.bfloat16, True)
    xt = torch.randn(256, 8, device="cuda", dtype=torch.bfloat16).t()  # [8, 256], strides (1, 8)
    s = compress_24(w)
    y = _ops.sparse24_linear(xt, s.values, s.meta, bias, "none")
    _assert_close(y, _reference(xt, w, bias, "none"), torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# CUTLASS sm80 sparse GEMM


def _needs_sm80():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the CUTLASS sparse GEMM needs sm80+")


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("nk", [(128, 256), (96, 320), (1024, 4096)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cutlass_matches_reference(dtype, m, nk, with_bias):
    _needs_sm80()
    n, k = nk
    x, w, bias = _inputs(m, n, k, dtype, with_bias)
    s = compress_24(w, layout="cutlass")
    y = L.cuda_sparse24_linear(x, s, bias, "silu", backend="cutlass")
    _assert_close(y, _reference(x, w, bias, "silu"), dtype)


@cuda
@pytest.mark.parametrize("activation", L.ACTIVATIONS)
@pytest.mark.parametrize("dtype", HALF)
def test_cutlass_activations(activation, dtype):
    _needs_sm80()
    x, w, bias = _inputs(33, 256, 512, dtype, True)
    s = compress_24(w, layout="cutlass")
    y = _ops.sparse24_linear_cutlass(x, s.values, s.meta, bias, activation)
    _assert_close(y, _reference(x, w, bias, activation), dtype)


@cuda
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "silu", "relu2"])
def test_cutlass_backward_matches_dense(activation):
    _needs_sm80()
    m, n, k = 24, 64, 128
    x, w, bias = _inputs(m, n, k, torch.float16, True)
    s = compress_24(w, layout="cutlass")
    packed = compress_24(w)  # same values order; its meta gives the kept positions independently
    xg = x.clone().requires_grad_()
    vg = s.values.clone().requires_grad_()
    bg = bias.clone().requires_grad_()
    gy = torch.randn(m, n, device="cuda")
    y = _ops.sparse24_linear_cutlass(xg, vg, s.meta, bg, activation)
    (y.float() * gy).sum().backward()

    xr = x.float().requires_grad_()
    wr = w.float().requires_grad_()
    br = bias.float().requires_grad_()
    (_reference(xr, wr, br, activation) * gy).sum().backward()
    idx = _kept_indices_packed(packed.meta, k // 4)
    gv_ref = wr.grad.reshape(n, k // 4, 4).gather(-1, idx).reshape(n, k // 2)
    torch.testing.assert_close(xg.grad.float(), xr.grad, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(vg.grad.float(), gv_ref, atol=5e-2, rtol=3e-2)
    torch.testing.assert_close(bg.grad.float(), br.grad, atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------------------------------------
# cuSPARSELt


@cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("nk", [(128, 256), (48, 80), (1024, 4096)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cusparselt_matches_reference(dtype, m, nk, with_bias):
    n, k = nk
    x, w, bias = _inputs(m, n, k, dtype, with_bias)
    s = compress_24(w, layout="cusparselt")
    assert s.layout == "cusparselt" and s.shape == (n, k) and s.values.dtype == torch.uint8
    y = L.cuda_sparse24_linear(x, s, bias, "relu", backend="cusparselt")
    _assert_close(y, _reference(x, w, bias, "relu"), dtype)


@cuda
@pytest.mark.parametrize("activation", L.ACTIVATIONS)
def test_cusparselt_activations(activation):
    x, w, bias = _inputs(40, 128, 256, torch.bfloat16, True)
    s = compress_24(w, layout="cusparselt")
    y = _ops.sparse24_linear_cusparselt(x, s.values, 128, 256, bias, activation)
    _assert_close(y, _reference(x, w, bias, activation), torch.bfloat16)


@cuda
def test_cusparselt_search_and_alg_id():
    x, w, bias = _inputs(64, 256, 512, torch.float16, True)
    s = compress_24(w, layout="cusparselt")
    ref = _reference(x, w, bias, "none")
    searched = _ops.sparse24_linear_cusparselt(x, s.values, 256, 512, bias, "none", -1, True)
    again = _ops.sparse24_linear_cusparselt(x, s.values, 256, 512, bias, "none")  # the searched default
    alg0 = _ops.sparse24_linear_cusparselt(x, s.values, 256, 512, bias, "none", 0)
    for y in (searched, again, alg0):
        _assert_close(y, ref, torch.float16)
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: alg_id 100000 is out of range"):
        _ops.sparse24_linear_cusparselt(x, s.values, 256, 512, bias, "none", 100000)


@cuda
def test_cusparselt_backward_raises():
    x, w, _ = _inputs(8, 64, 128, torch.float16, False)
    s = compress_24(w, layout="cusparselt")
    y = _ops.sparse24_linear_cusparselt(x.requires_grad_(), s.values, 64, 128, None, "none")
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: backward is not supported"):
        y.sum().backward()


# ---------------------------------------------------------------------------------------------
# routing


@cuda
@pytest.mark.parametrize("layout", ["packed", "cutlass", "cusparselt"])
@pytest.mark.parametrize("m", [1, 16, 17, 300])
def test_auto_backend(layout, m):
    x, w, bias = _inputs(m, 128, 256, torch.float16, True)
    s = compress_24(w, layout=layout)
    choice = L.cuda_backend_choice(m, s, x.device)
    expected = {
        "packed": "gemv" if m <= L.GEMV_MAX_M else "packed_dense",
        "cutlass": "cutlass" if torch.cuda.get_device_capability() >= (8, 0) else "cutlass_dense",
        "cusparselt": "cusparselt",
    }[layout]
    assert choice == expected
    y = L.cuda_sparse24_linear(x, s, bias, "relu2")
    _assert_close(y, _reference(x, w, bias, "relu2"), torch.float16)


@cuda
def test_auto_cutlass_layout_with_unsupported_k_falls_back():
    x, w, bias = _inputs(20, 64, 96, torch.bfloat16, False)  # K % 32 == 0 (compress_24's rule), K % 64 != 0
    s = compress_24(w, layout="cutlass")
    assert L.cuda_backend_choice(20, s, x.device) == "cutlass_dense"
    _assert_close(L.cuda_sparse24_linear(x, s, bias, "gelu"), _reference(x, w, bias, "gelu"), torch.bfloat16)


def test_backend_choice_packed_needs_no_gpu():
    s = compress_24(torch.randn(64, 128), prune=True)
    assert L.cuda_backend_choice(1, s, "cuda") == "gemv"
    assert L.cuda_backend_choice(L.GEMV_MAX_M + 1, s, "cuda") == "packed_dense"


# ---------------------------------------------------------------------------------------------
# opcheck and torch.compile


def _cutlass_sample(m, with_bias, requires_grad):
    x, w, bias = _inputs(m, 64, 128, torch.float16, with_bias)
    s = compress_24(w, layout="cutlass")
    values = s.values.clone().requires_grad_(requires_grad)
    return (x.requires_grad_(requires_grad), values, s.meta, bias, "gelu")


@cuda
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cutlass(m, with_bias, requires_grad):
    _needs_sm80()
    torch.library.opcheck(_ops.sparse24_linear_cutlass, _cutlass_sample(m, with_bias, requires_grad))


@cuda
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_cusparselt(with_bias):
    x, w, bias = _inputs(9, 64, 128, torch.float16, with_bias)
    s = compress_24(w, layout="cusparselt")
    torch.library.opcheck(_ops.sparse24_linear_cusparselt, (x, s.values, 64, 128, bias, "silu", -1, False))
    # The compressed size is cuSPARSELt's own (a data-dependent size for fake tensors): schema only.
    torch.library.opcheck(_ops.compress_24_cusparselt, (w,), test_utils=("test_schema",))


@cuda
@pytest.mark.parametrize("m", [1, 12])
def test_opcheck_packed(m):
    pytest.importorskip("sparseops.linear24", reason="the packed op's fake lives in sparseops.linear24")
    x, w, bias = _inputs(m, 64, 128, torch.bfloat16, True)
    s = compress_24(w)
    torch.library.opcheck(_ops.sparse24_linear, (x, s.values, s.meta, bias, "relu"))


@cuda
@pytest.mark.parametrize("layout", ["cutlass", "cusparselt", "packed"])
def test_compile_fullgraph(layout):
    if layout == "cutlass":
        _needs_sm80()
    if layout == "packed":
        pytest.importorskip("sparseops.linear24", reason="the packed op's fake lives in sparseops.linear24")
    torch._dynamo.reset()
    x, w, bias = _inputs(16, 128, 256, torch.float16, True)
    s = compress_24(w, layout=layout)

    def f(x, s, bias):
        return L.cuda_sparse24_linear(x, s, bias, "silu")

    y = torch.compile(f, fullgraph=True)(x, s, bias)
    _assert_close(y, _reference(x, w, bias, "silu"), torch.float16)


# ---------------------------------------------------------------------------------------------
# fake kernels on the meta device (no GPU needed)


def test_fake_shapes_on_meta():
    x = torch.empty(7, 128, device="meta", dtype=torch.float16)
    values = torch.empty(64, 64, device="meta", dtype=torch.float16)
    meta = torch.empty(64, 8, device="meta", dtype=torch.int16)
    bias = torch.empty(64, device="meta", dtype=torch.float16)
    assert _ops.sparse24_linear_cutlass(x, values, meta, bias, "relu").shape == (7, 64)
    buf = torch.empty(1000, device="meta", dtype=torch.uint8)
    assert _ops.sparse24_linear_cusparselt(x, buf, 64, 128, bias, "gelu").shape == (7, 64)


def test_fake_rejects_bad_shapes_on_meta():
    x = torch.empty(7, 96, device="meta", dtype=torch.float16)  # K % 64 != 0
    values = torch.empty(64, 48, device="meta", dtype=torch.float16)
    meta = torch.empty(64, 6, device="meta", dtype=torch.int16)
    with pytest.raises(RuntimeError, match="in_features must be divisible by 64"):
        _ops.sparse24_linear_cutlass(x, values, meta, None, "none")


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_cuda_only_ops_reject_cpu_tensors():
    x = torch.randn(4, 128, dtype=torch.float16)
    s = compress_24(torch.randn(64, 128, dtype=torch.float16), prune=True, layout="cutlass")
    with pytest.raises(NotImplementedError, match="sparse24_linear_cutlass"):
        _ops.sparse24_linear_cutlass(x, s.values, s.meta, None, "none")
    with pytest.raises(NotImplementedError, match="compress_24_cusparselt"):
        _ops.compress_24_cusparselt(torch.randn(64, 128, dtype=torch.float16))
    with pytest.raises(ValueError, match="cuda_sparse24_linear: expected x on a CUDA device"):
        L.cuda_sparse24_linear(x, s, None, "none")


def test_python_bad_arguments():
    s = compress_24(torch.randn(64, 128), prune=True)
    x = torch.randn(4, 128)
    with pytest.raises(ValueError, match="expected activation in"):
        L.cuda_sparse24_linear(x, s, None, "tanh")
    with pytest.raises(ValueError, match="expected backend in"):
        L.cuda_sparse24_linear(x, s, None, "none", backend="triton")
    with pytest.raises(TypeError, match="expected w24 to be a Sparse24"):
        L.cuda_sparse24_linear(x, (s.values, s.meta), None, "none")


@cuda
@pytest.mark.parametrize(
    "backend, layout", [("cutlass", "packed"), ("gemv", "cutlass"), ("cusparselt", "packed"), ("gemv", "cusparselt")]
)
def test_backend_layout_mismatch(backend, layout):
    x, w, _ = _inputs(4, 64, 128, torch.float16, False)
    s = compress_24(w, layout=layout)
    with pytest.raises(ValueError, match=f"backend='{backend}' needs w24.layout =="):
        L.cuda_sparse24_linear(x, s, None, "none", backend=backend)


@cuda
def test_cutlass_bad_inputs():
    _needs_sm80()
    x, w, _ = _inputs(4, 64, 96, torch.float16, False)  # compress_24(layout="cutlass") needs K % 32 == 0
    s = compress_24(w, layout="cutlass")
    with pytest.raises(RuntimeError, match=r"sparse24_linear_cutlass: .*in_features \(x.size\(1\)\) % 64 == 0 \(got 96\)"):
        _ops.sparse24_linear_cutlass(x, s.values, s.meta, None, "none")
    x32 = torch.randn(4, 128, device="cuda")
    v32 = torch.randn(64, 64, device="cuda")
    meta = torch.zeros(64, 8, device="cuda", dtype=torch.int16)
    with pytest.raises(TypeError, match=r"sparse24_linear_cutlass: expected x to have dtype in \{Half, BFloat16\}"):
        _ops.sparse24_linear_cutlass(x32, v32, meta, None, "none")
    x16, w16, _ = _inputs(4, 64, 128, torch.float16, False)
    s16 = compress_24(w16, layout="cutlass")
    with pytest.raises(RuntimeError, match="sparse24_linear_cutlass: expected activation in"):
        _ops.sparse24_linear_cutlass(x16, s16.values, s16.meta, None, "tanh")
    with pytest.raises(RuntimeError, match=r"sparse24_linear_cutlass: expected bias of shape \[64\]"):
        _ops.sparse24_linear_cutlass(x16, s16.values, s16.meta, torch.zeros(63, device="cuda", dtype=torch.float16), "none")


@cuda
def test_packed_cuda_bad_inputs():
    x, w, _ = _inputs(4, 64, 128, torch.float16, False)
    s = compress_24(w)
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected x.size\(1\) == 2 \* values.size\(1\)"):
        _ops.sparse24_linear(x[:, :64], s.values, s.meta, None, "none")
    with pytest.raises(TypeError, match="sparse24_linear: expected values to have x's dtype"):
        _ops.sparse24_linear(x.float(), s.values, s.meta, None, "none")


@cuda
def test_cusparselt_bad_inputs():
    w = torch.randn(64, 128, device="cuda", dtype=torch.float16)  # dense: not 2:4
    with pytest.raises(RuntimeError, match="compress_24_cusparselt: w is not 2:4 sparse"):
        _ops.compress_24_cusparselt(w)
    with pytest.raises(RuntimeError, match="compress_24_cusparselt: cuSPARSELt needs out_features and in_features"):
        _ops.compress_24_cusparselt(_weight(64, 120, torch.float16))
    with pytest.raises(TypeError, match=r"compress_24_cusparselt: expected w to have dtype in \{Half, BFloat16\}"):
        _ops.compress_24_cusparselt(_weight(64, 128, torch.float32))
    x, wd, _ = _inputs(4, 64, 128, torch.float16, False)
    s = compress_24(wd, layout="cusparselt")
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: expected compressed to hold"):
        _ops.sparse24_linear_cusparselt(x, s.values[:-16], 64, 128, None, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear_cusparselt: expected x.size\(1\) == in_features"):
        _ops.sparse24_linear_cusparselt(x, s.values, 64, 256, None, "none")
    with pytest.raises(RuntimeError, match="pass either alg_id >= 0 or search=True"):
        _ops.sparse24_linear_cusparselt(x, s.values, 64, 128, None, "none", 0, True)
