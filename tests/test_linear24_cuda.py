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
from sparseops.sparse24 import linear_cuda as L
from sparseops.sparse24.formats import _kept_indices_packed

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


def _inputs(m, n, k, dtype, with_bias, device="cuda"):
    w = _weight(n, k, dtype, device)
    x = torch.randn(m, k, device=device, dtype=dtype)
    bias = torch.randn(n, device=device, dtype=dtype) if with_bias else None
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
# quantised cuSPARSELt: int8 (int32 accumulation) and float8_e4m3fn (sm90+), y fp16/bf16
#
# The reference is the fp64 product of the dequantised operands' integer/fp8 values, times the scale,
# plus the bias: int8 accumulation is exact, so the only differences are the fp32 epilogue and the one
# rounding to the output dtype (TOL[out_dtype]); e4m3 accumulation is fp32 on tensor cores (FP8_TOL).

FP8_TOL = (5e-2, 5e-2)
INT8_MAX, E4M3_MAX = 127.0, 448.0


def _needs_sm90():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("float8_e4m3fn cuSPARSELt GEMMs need sm90+")


def _quantise(t, qdtype, per_row):
    """Symmetric quantisation of float t to int8 / e4m3: (t_q, scale) with t ~= t_q * scale; zeros stay zero."""
    qmax = INT8_MAX if qdtype == torch.int8 else E4M3_MAX
    amax = t.abs().amax(dim=1, keepdim=True) if per_row else t.abs().amax()
    scale = (amax.float() / qmax).clamp_min(1e-12)
    q = t.float() / scale
    q = q.round().clamp(-qmax, qmax).to(torch.int8) if qdtype == torch.int8 else q.to(torch.float8_e4m3fn)
    return q, scale.reshape(-1) if per_row else scale


def _quant_inputs(m, n, k, qdtype, per_channel, with_bias, out_dtype):
    w = _weight(n, k, torch.float32)  # 2:4 already; quantisation keeps the zeros
    w_q, w_scale = _quantise(w, qdtype, per_channel)
    x_q, x_scale = _quantise(torch.randn(m, k, device="cuda"), qdtype, False)
    scale = (x_scale * w_scale).float()  # [] (per tensor) or [n]
    bias = torch.randn(n, device="cuda").to(out_dtype) if with_bias else None
    return x_q, w_q, scale, bias


def _quant_reference(x_q, w_q, scale, bias, activation):
    acc = x_q.double() @ w_q.double().t()
    y = acc * scale.double() + (0.0 if bias is None else bias.double())
    return L.apply_activation(y.float(), activation)


def _assert_close_quant(y, ref, out_dtype, tol):
    atol, rtol = tol
    assert y.dtype == out_dtype and y.is_contiguous() and y.shape == ref.shape
    torch.testing.assert_close(y.float(), ref, atol=atol, rtol=rtol)


@cuda
@pytest.mark.parametrize("out_dtype", HALF)
@pytest.mark.parametrize("m", [1, 7, 64, 257])
@pytest.mark.parametrize("nk", [(128, 256), (96, 160)])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cusparselt_int8_matches_reference(out_dtype, m, nk, per_channel, with_bias):
    n, k = nk
    x_q, w_q, scale, bias = _quant_inputs(m, n, k, torch.int8, per_channel, with_bias, out_dtype)
    s = compress_24(w_q, layout="cusparselt")
    assert s.shape == (n, k) and s.values.dtype == torch.uint8
    y = L.cuda_sparse24_linear(x_q, s, bias, "relu", backend="cusparselt", scale=scale, out_dtype=out_dtype)
    _assert_close_quant(y, _quant_reference(x_q, w_q, scale, bias, "relu"), out_dtype, TOL[out_dtype])


@cuda
@pytest.mark.parametrize("activation", L.ACTIVATIONS)
def test_cusparselt_int8_activations_and_default_out_dtype(activation):
    x_q, w_q, scale, bias = _quant_inputs(40, 128, 256, torch.int8, True, True, torch.bfloat16)
    s = compress_24(w_q, layout="cusparselt")
    y = _ops.sparse24_linear_cusparselt(x_q, s.values, 128, 256, bias, activation, scale=scale)  # out_dtype: bf16
    _assert_close_quant(y, _quant_reference(x_q, w_q, scale, bias, activation), torch.bfloat16, TOL[torch.bfloat16])


@cuda
def test_cusparselt_int8_prune_on_compress():
    w = torch.randint(-127, 128, (64, 128), device="cuda", dtype=torch.int8)  # dense: pruned by compress_24
    x_q = torch.randint(-127, 128, (9, 128), device="cuda", dtype=torch.int8)
    w16 = w.to(torch.float16)
    w_pruned = (w16 * sparseops.nm_mask(w16, 2, 4)).to(torch.int8)
    s = compress_24(w, prune=True, layout="cusparselt")
    scale = torch.full((), 1e-3, device="cuda")
    y = L.cuda_sparse24_linear(x_q, s, None, "none", scale=scale, out_dtype=torch.float16)
    _assert_close_quant(y, _quant_reference(x_q, w_pruned, scale, None, "none"), torch.float16, TOL[torch.float16])


@cuda
@pytest.mark.parametrize("out_dtype", HALF)
@pytest.mark.parametrize("m", [1, 33, 256])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cusparselt_fp8_matches_reference(out_dtype, m, per_channel, with_bias):
    _needs_sm90()
    x_q, w_q, scale, bias = _quant_inputs(m, 256, 512, torch.float8_e4m3fn, per_channel, with_bias, out_dtype)
    s = compress_24(w_q, layout="cusparselt")
    y = L.cuda_sparse24_linear(x_q, s, bias, "gelu", scale=scale, out_dtype=out_dtype)
    _assert_close_quant(y, _quant_reference(x_q, w_q, scale, bias, "gelu"), out_dtype, FP8_TOL)


@cuda
def test_cusparselt_fp8_below_sm90_is_not_implemented():
    if torch.cuda.get_device_capability() >= (9, 0):
        pytest.skip("this GPU runs float8_e4m3fn (sm90+): covered by test_cusparselt_fp8_matches_reference")
    w = torch.zeros(64, 128, device="cuda", dtype=torch.float8_e4m3fn)
    with pytest.raises(NotImplementedError, match="compress_24_cusparselt: float8_e4m3fn needs a GPU of compute capability 9.0"):
        _ops.compress_24_cusparselt(w)
    x = torch.zeros(4, 128, device="cuda", dtype=torch.float8_e4m3fn)
    buf = torch.zeros(1024, device="cuda", dtype=torch.uint8)
    with pytest.raises(NotImplementedError, match="sparse24_linear_cusparselt: float8_e4m3fn needs a GPU of compute capability 9.0"):
        _ops.sparse24_linear_cusparselt(x, buf, 64, 128, scale=torch.ones((), device="cuda"))


@cuda
def test_cusparselt_public_sparse24_linear_int8_3d():
    x_q, w_q, scale, bias = _quant_inputs(12, 64, 128, torch.int8, True, True, torch.float16)
    s = compress_24(w_q, layout="cusparselt")
    y = sparseops.sparse24_linear(x_q.reshape(3, 4, 128), s, bias, scale=scale, out_dtype=torch.float16)
    assert y.shape == (3, 4, 64)
    _assert_close_quant(y.reshape(12, 64), _quant_reference(x_q, w_q, scale, bias, "none"), torch.float16, TOL[torch.float16])


@cuda
def test_cusparselt_quant_bad_inputs():
    x_q, w_q, scale, bias = _quant_inputs(8, 64, 128, torch.int8, True, True, torch.float16)
    s = compress_24(w_q, layout="cusparselt")
    op = _ops.sparse24_linear_cusparselt
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: x of dtype Char needs a scale"):
        op(x_q, s.values, 64, 128)
    with pytest.raises(RuntimeError, match=r"sparse24_linear_cusparselt: expected scale of shape \[\], \[1\] or \[64\] \(got \[32\]\)"):
        op(x_q, s.values, 64, 128, scale=scale[:32])
    with pytest.raises(TypeError, match="sparse24_linear_cusparselt: expected scale to have dtype Float"):
        op(x_q, s.values, 64, 128, scale=scale.half())
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: expected scale on the same device as x"):
        op(x_q, s.values, 64, 128, scale=scale.cpu())
    with pytest.raises(TypeError, match=r"sparse24_linear_cusparselt: expected out_dtype in \{Half, BFloat16\} for x of dtype Char"):
        op(x_q, s.values, 64, 128, scale=scale, out_dtype=torch.float32)
    with pytest.raises(TypeError, match="sparse24_linear_cusparselt: expected bias to have the output dtype BFloat16"):
        op(x_q, s.values, 64, 128, bias, scale=scale)  # bias fp16, out_dtype defaults to bf16
    with pytest.raises(TypeError, match="sparse24_linear_cusparselt: expected x to have dtype in"):
        op(x_q.to(torch.int16), s.values, 64, 128, scale=scale)
    x16, w16, _ = _inputs(8, 64, 128, torch.float16, False)
    s16 = compress_24(w16, layout="cusparselt")
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: scale is for int8/float8_e4m3fn x only"):
        op(x16, s16.values, 64, 128, scale=scale)
    with pytest.raises(TypeError, match="sparse24_linear_cusparselt: expected out_dtype None or x's dtype Half"):
        op(x16, s16.values, 64, 128, out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: expected compressed to hold"):
        op(x_q, s16.values, 64, 128, scale=scale)  # an fp16 buffer read as int8 W
    with pytest.raises(RuntimeError, match="compress_24_cusparselt: cuSPARSELt needs out_features and in_features to be positive multiples of 32 for Char"):
        _ops.compress_24_cusparselt(torch.zeros(64, 48, device="cuda", dtype=torch.int8))
    with pytest.raises(RuntimeError, match="compress_24_cusparselt: w is not 2:4 sparse"):
        _ops.compress_24_cusparselt(torch.ones(64, 128, device="cuda", dtype=torch.int8))


@cuda
@pytest.mark.parametrize("qdtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_cusparselt_quant(qdtype, with_bias):
    if qdtype == torch.float8_e4m3fn:
        _needs_sm90()
    x_q, w_q, scale, bias = _quant_inputs(9, 64, 128, qdtype, True, with_bias, torch.float16)
    s = compress_24(w_q, layout="cusparselt")
    torch.library.opcheck(
        _ops.sparse24_linear_cusparselt, (x_q, s.values, 64, 128, bias, "silu", -1, False, scale, torch.float16)
    )
    torch.library.opcheck(_ops.compress_24_cusparselt, (w_q,), test_utils=("test_schema",))


@cuda
def test_compile_fullgraph_cusparselt_int8():
    torch._dynamo.reset()
    x_q, w_q, scale, bias = _quant_inputs(16, 128, 256, torch.int8, False, True, torch.float16)
    s = compress_24(w_q, layout="cusparselt")

    def f(x, s, bias, scale):
        return L.cuda_sparse24_linear(x, s, bias, "relu2", scale=scale, out_dtype=torch.float16)

    y = torch.compile(f, fullgraph=True)(x_q, s, bias, scale)
    _assert_close_quant(y, _quant_reference(x_q, w_q, scale, bias, "relu2"), torch.float16, TOL[torch.float16])


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


@cuda
@pytest.mark.parametrize("m", [1, 40])  # the GEMV, and decompress + cuBLAS with the structural row fix-up
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_nonfinite_x_at_a_pruned_position_never_enters_the_product(m, dtype):
    from sparseops.reference import sparse24_linear_ref

    x, w, bias = _inputs(m, 64, 128, dtype, True)
    x[0, 3] = float("inf")
    x[-1, 77] = float("nan")
    s = compress_24(w, prune=True)
    y = _ops.sparse24_linear(x, s.values, s.meta, bias, "none")
    ref = sparse24_linear_ref(x.cpu(), s.values.cpu(), s.meta.cpu(), bias.cpu()).to(y.device)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    _assert_close(y[finite], ref[finite].float(), dtype)


@pytest.mark.parametrize("act", ["none", "gelu"])
def test_structural_rows_of_the_dense_fallback_needs_no_gpu(act):
    """The "cutlass_dense" fallback's fix-up, on CPU tensors: rows of x with inf/NaN come out as the
    sparse kernels compute them (pruned weights absent), the other rows as the dense product gave them."""
    from sparseops.reference import sparse24_linear_ref

    x, w, bias = _inputs(5, 64, 96, torch.bfloat16, True, device="cpu")
    x[1, 3], x[3, 50] = float("inf"), float("nan")
    packed = compress_24(w, prune=True)
    s = compress_24(decompress_24(packed), layout="cutlass")
    dense = _ops.decompress_24(s.values, s.meta, "cutlass")
    y = L.structural_rows(x, L.apply_activation(F.linear(x, dense, bias), act), s, dense, bias, act)
    ref = L.apply_activation(sparse24_linear_ref(x, packed.values, packed.meta, bias), act)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    _assert_close(y[finite], ref[finite].float(), torch.bfloat16)


@cuda
def test_dense_fallback_nonfinite_x_at_a_pruned_position_never_enters_the_product():
    from sparseops.reference import sparse24_linear_ref

    x, w, bias = _inputs(20, 64, 96, torch.bfloat16, True)  # K % 64 != 0: "cutlass_dense"
    x[2, 5] = float("inf")
    packed = compress_24(w, prune=True)
    s = compress_24(decompress_24(packed), layout="cutlass")
    assert L.cuda_backend_choice(20, s, x.device) == "cutlass_dense"
    y = L.cuda_sparse24_linear(x, s, bias, "none")
    ref = sparse24_linear_ref(x.cpu(), packed.values.cpu(), packed.meta.cpu(), bias.cpu()).to(y.device)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    _assert_close(y[finite], ref[finite].float(), torch.bfloat16)


def test_backend_choice_packed_needs_no_gpu():
    s = compress_24(torch.randn(64, 128), prune=True)
    assert L.cuda_backend_choice(1, s, "cuda") == "gemv"
    assert L.cuda_backend_choice(L.GEMV_MAX_M + 1, s, "cuda") == "packed_dense"


def test_backend_choice_rejects_a_cpu_device():
    s = compress_24(torch.randn(64, 128), prune=True)
    with pytest.raises(ValueError, match="cuda_backend_choice: expected a CUDA device"):
        L.cuda_backend_choice(1, s, torch.device("cpu"))


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
    x, w, bias = _inputs(m, 64, 128, torch.bfloat16, True)
    s = compress_24(w)
    torch.library.opcheck(_ops.sparse24_linear, (x, s.values, s.meta, bias, "relu"))


@cuda
@pytest.mark.parametrize("layout", ["cutlass", "cusparselt", "packed"])
def test_compile_fullgraph(layout):
    if layout == "cutlass":
        _needs_sm80()
    if layout == "packed":
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
    with pytest.raises(
        TypeError, match=r"compress_24_cusparselt: expected w to have dtype in \{Half, BFloat16, Char \(int8\), Float8_e4m3fn\}"
    ):
        _ops.compress_24_cusparselt(_weight(64, 128, torch.float32))
    x, wd, _ = _inputs(4, 64, 128, torch.float16, False)
    s = compress_24(wd, layout="cusparselt")
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: expected compressed to hold"):
        _ops.sparse24_linear_cusparselt(x, s.values[:-16], 64, 128, None, "none")
    with pytest.raises(RuntimeError, match=r"sparse24_linear_cusparselt: expected x.size\(1\) == in_features"):
        _ops.sparse24_linear_cusparselt(x, s.values, 64, 256, None, "none")
    with pytest.raises(RuntimeError, match="pass either alg_id >= 0 or search=True"):
        _ops.sparse24_linear_cusparselt(x, s.values, 64, 128, None, "none", 0, True)


# ---------------------------------------------------------------------------------------------
# quantised cuSPARSELt: fake kernel and Python argument checks (no GPU needed)


@pytest.mark.parametrize("qdtype", [torch.int8, torch.float8_e4m3fn])
def test_fake_quant_on_meta(qdtype):
    x = torch.empty(7, 128, device="meta", dtype=qdtype)
    buf = torch.empty(1000, device="meta", dtype=torch.uint8)
    per_channel = torch.empty(64, device="meta")
    per_tensor = torch.empty((), device="meta")
    op = _ops.sparse24_linear_cusparselt
    y = op(x, buf, 64, 128, None, "gelu", scale=per_channel)
    assert y.shape == (7, 64) and y.dtype == torch.bfloat16 and y.device.type == "meta"
    bias = torch.empty(64, device="meta", dtype=torch.float16)
    y = op(x, buf, 64, 128, bias, "relu", -1, False, per_tensor, torch.float16)
    assert y.shape == (7, 64) and y.dtype == torch.float16
    assert op(x, buf, 64, 128, scale=torch.empty(1, device="meta")).shape == (7, 64)


def test_fake_quant_rejects_bad_arguments_on_meta():
    x = torch.empty(7, 128, device="meta", dtype=torch.int8)
    buf = torch.empty(1000, device="meta", dtype=torch.uint8)
    scale = torch.empty(64, device="meta")
    op = _ops.sparse24_linear_cusparselt
    with pytest.raises(RuntimeError, match="sparse24_linear_cusparselt: x of dtype torch.int8 needs a scale"):
        op(x, buf, 64, 128)
    with pytest.raises(RuntimeError, match=r"expected scale of shape \[\], \[1\] or \[64\] \(got \[32\]\)"):
        op(x, buf, 64, 128, scale=torch.empty(32, device="meta"))
    with pytest.raises(RuntimeError, match="expected scale to have dtype Float"):
        op(x, buf, 64, 128, scale=torch.empty(64, device="meta", dtype=torch.float16))
    with pytest.raises(RuntimeError, match=r"expected out_dtype in \{Half, BFloat16\}"):
        op(x, buf, 64, 128, scale=scale, out_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="expected bias to have the output dtype torch.bfloat16"):
        op(x, buf, 64, 128, torch.empty(64, device="meta", dtype=torch.float16), scale=scale)
    with pytest.raises(RuntimeError, match="positive multiples of 32"):
        op(torch.empty(7, 48, device="meta", dtype=torch.int8), buf, 64, 48, scale=scale)
    x16 = torch.empty(7, 128, device="meta", dtype=torch.float16)
    with pytest.raises(RuntimeError, match="scale is for int8/float8_e4m3fn x only"):
        op(x16, buf, 64, 128, scale=scale)
    with pytest.raises(RuntimeError, match="expected out_dtype None or x's dtype"):
        op(x16, buf, 64, 128, out_dtype=torch.bfloat16)


def _cusparselt_stand_in(n=64, k=128):
    """A Sparse24 of the cusparselt layout on CPU: enough for the argument checks that precede any kernel."""
    return Sparse24(torch.zeros(16, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8), "cusparselt", (n, k))


def test_python_quant_argument_errors():
    xq = torch.zeros(4, 128, dtype=torch.int8)
    cslt = _cusparselt_stand_in()
    packed = compress_24(torch.randn(64, 128), prune=True)
    scale = torch.ones(())
    f = L.cuda_sparse24_linear
    with pytest.raises(ValueError, match=r"cuda_sparse24_linear: x of dtype torch.int8 needs scale"):
        f(xq, cslt, None, "none")
    with pytest.raises(ValueError, match=r"x of dtype torch.int8 needs w24.layout == 'cusparselt' \(got 'packed'\)"):
        f(xq, packed, None, "none", scale=scale)
    with pytest.raises(ValueError, match="scale/out_dtype needs w24.layout == 'cusparselt'"):
        f(torch.zeros(4, 128), packed, None, "none", scale=scale)
    with pytest.raises(ValueError, match="scale is for int8/float8_e4m3fn x only"):
        f(torch.zeros(4, 128, dtype=torch.float16), cslt, None, "none", scale=scale)
    with pytest.raises(TypeError, match="expected scale to be a Tensor or None"):
        f(xq, cslt, None, "none", scale=0.5)
    with pytest.raises(TypeError, match="expected out_dtype to be a torch.dtype or None"):
        f(xq, cslt, None, "none", scale=scale, out_dtype="bf16")
    with pytest.raises(ValueError, match=r"expected out_dtype in \(torch.float16, torch.bfloat16, None\)"):
        f(xq, cslt, None, "none", scale=scale, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="expected out_dtype None or x's dtype torch.float16"):
        f(torch.zeros(4, 128, dtype=torch.float16), cslt, None, "none", out_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="cuda_sparse24_linear: expected x on a CUDA device"):
        f(xq, cslt, None, "none", scale=scale)  # the arguments are fine: the device is not


def test_public_sparse24_linear_scale_on_cpu_raises():
    s = compress_24(torch.randn(64, 128), prune=True)
    with pytest.raises(ValueError, match="sparse24_linear: scale/out_dtype .* need x on CUDA and the 'cusparselt' layout"):
        sparseops.sparse24_linear(torch.randn(4, 128), s, scale=torch.ones(()))
    with pytest.raises(ValueError, match="sparse24_linear: scale/out_dtype"):
        sparseops.sparse24_linear(torch.randn(4, 128), s, out_dtype=torch.float32)
