"""grad_x of sparse24_linear through W^T in 2:4 (values_t/meta_t, w24_t, compress_24_transposable) and
SparseLinear24.from_dense(method="transposable"): against the dense-W backward, opcheck, torch.compile,
bad inputs and the state_dict round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import devices
from sparseops import Sparse24, compress_24, decompress_24
from sparseops import compress_24_transposable, sparse24_linear
from sparseops.nn import SparseLinear24
from sparseops.reference import sparse24_linear_ref
from sparseops import transposable_mask_24

ops = torch.ops.sparseops
ACTIVATIONS = ["none", "relu", "gelu", "silu", "relu2"]
GEMV_MAX_M = 96  # the largest finite small-M / large-M crossover of the CPU kernel (bf16)


def transposable_weight(n, k, dtype=torch.float32, device="cpu"):
    w = torch.randn(n, k, device=device).to(dtype)
    return torch.where(transposable_mask_24(w), w, torch.zeros((), dtype=dtype, device=device))


def grads(fn, x0, b0, grad_y):
    x = x0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    fn(x, b).backward(grad_y)
    return x.grad, None if b is None else b.grad


def is_24_along_rows(w):
    return bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())


# ---- compress_24_transposable ----------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
def test_compress_24_transposable_round_trip(device):
    w = transposable_weight(12, 20, device=device)
    w24, w24_t = compress_24_transposable(w)
    assert w24.shape == (12, 20) and w24_t.shape == (20, 12)
    assert w24.layout == w24_t.layout == "packed"
    torch.testing.assert_close(decompress_24(w24), w, rtol=0, atol=0)
    torch.testing.assert_close(decompress_24(w24_t), w.t(), rtol=0, atol=0)
    # prune=True applies the transposable mask first
    dense = torch.randn(8, 16, device=device)
    p24, p24_t = compress_24_transposable(dense, prune=True)
    pw = decompress_24(p24)
    assert is_24_along_rows(pw) and is_24_along_rows(pw.t().contiguous())
    torch.testing.assert_close(decompress_24(p24_t), pw.t(), rtol=0, atol=0)
    torch.testing.assert_close(pw, dense * transposable_mask_24(dense), rtol=0, atol=0)


def test_compress_24_transposable_bad_inputs():
    rows_only = torch.zeros(8, 8)
    rows_only[0:4, 0:2] = 1.0  # 2:4 along rows, but column 0 holds 4 non-zeros in one group of 4
    with pytest.raises(ValueError, match=r"compress_24_transposable: expected w to be 2:4 sparse along both dims .*"
                                         r"\(got 0 row groups and 2 column groups with more\)"):
        compress_24_transposable(rows_only)
    with pytest.raises(ValueError, match=r"compress_24_transposable: expected w to be 2:4 sparse along both dims .*"
                                         r"\(got 8 row groups and 8 column groups"):
        compress_24_transposable(torch.ones(4, 8))
    with pytest.raises(ValueError, match=r"compress_24_transposable: expected both dims of w to be divisible by 4 "
                                         r"\(got shape \[6, 8\]\)"):
        compress_24_transposable(torch.zeros(6, 8))
    with pytest.raises(ValueError, match=r"compress_24_transposable: expected w to be 2-D \(got 1-D"):
        compress_24_transposable(torch.zeros(8))
    with pytest.raises(TypeError, match=r"compress_24_transposable: expected w float32/float16/bfloat16 \(got torch.float64\)"):
        compress_24_transposable(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"compress_24_transposable: expected w to be a Tensor \(got list\)"):
        compress_24_transposable([[0.0] * 4] * 4)


# ---- grad_x through W^T ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("m", [1, 5, GEMV_MAX_M + 9])
def test_grad_x_matches_dense_path_fp32(device, act, m):
    n, k = 20, 36
    w = transposable_weight(n, k, device=device)
    w24, w24_t = compress_24_transposable(w)
    x0 = torch.randn(m, k, device=device)
    b0 = torch.randn(n, device=device)
    grad_y = torch.randn(m, n, device=device)
    sparse = grads(lambda x, b: sparse24_linear(x, w24, b, activation=act, w24_t=w24_t), x0, b0, grad_y)
    dense = grads(lambda x, b: sparse24_linear(x, w24, b, activation=act), x0, b0, grad_y)
    ref = grads(lambda x, b: sparse24_linear_ref(x, w24.values, w24.meta, b, act), x0, b0, grad_y)
    for ours, theirs, r in zip(sparse, dense, ref):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m", [3, GEMV_MAX_M + 9])
def test_grad_x_low_precision_within_dense_error(device, dtype, m):
    """fp16/bf16: the transposed path's error vs the fp32 grad is within twice the dense path's, plus
    one ulp of the gradient's scale (flash-attention's rule)."""
    n, k = 24, 40
    w = transposable_weight(n, k, dtype, device)
    w24, w24_t = compress_24_transposable(w)
    x0 = torch.randn(m, k, device=device).to(dtype)
    grad_y = torch.randn(m, n, device=device).to(dtype)
    sparse, _ = grads(lambda x, b: sparse24_linear(x, w24, activation="silu", w24_t=w24_t), x0, None, grad_y)
    dense, _ = grads(lambda x, b: sparse24_linear(x, w24, activation="silu"), x0, None, grad_y)
    ref, _ = grads(lambda x, b: sparse24_linear_ref(x, w24.values.float(), w24.meta, None, "silu"),
                   x0.float(), None, grad_y.float())
    assert sparse.dtype == dtype
    scale = ref.abs().max().item() + 1.0
    err = (sparse.float() - ref).abs().max().item()
    err_dense = (dense.float() - ref).abs().max().item()
    assert err <= 2 * err_dense + torch.finfo(dtype).eps * scale, (err, err_dense)


def test_backward_reads_values_t():
    """grad_x comes from values_t (here deliberately 2 * W^T), not from a decompressed W."""
    w = transposable_weight(8, 12)
    w24, _ = compress_24_transposable(w)
    twice_t = compress_24((2 * w).t().contiguous())
    x0 = torch.randn(3, 12)
    grad_y = torch.randn(3, 8)
    (gx, _), (gd, _) = (grads(lambda x, b: ops.sparse24_linear(x, w24.values, w24.meta, None, "none", *vt), x0, None, grad_y)
                        for vt in ((twice_t.values, twice_t.meta), ()))
    torch.testing.assert_close(gx, 2 * gd, atol=1e-5, rtol=1e-5)


def test_other_grads_and_forward_unchanged_by_values_t():
    w = transposable_weight(16, 24)
    w24, w24_t = compress_24_transposable(w)
    x = torch.randn(2, 7, 24)
    b = torch.randn(16)
    torch.testing.assert_close(sparse24_linear(x, w24, b, activation="relu", w24_t=w24_t),
                               sparse24_linear(x, w24, b, activation="relu"), atol=0, rtol=0)

    def value_and_bias_grads(**kw):
        v = w24.values.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        vt = w24_t.values.clone().requires_grad_()  # gets no gradient by design
        kw = {"w24_t": Sparse24(vt, w24_t.meta)} if kw else {}
        sparse24_linear(x, Sparse24(v, w24.meta), bb, activation="gelu", **kw).square().sum().backward()
        assert vt.grad is None
        return v.grad, bb.grad

    for g, r in zip(value_and_bias_grads(transposed=True), value_and_bias_grads()):
        torch.testing.assert_close(g, r, atol=0, rtol=0)


def test_empty_dims():
    for m, n, k in ((0, 8, 12), (3, 0, 12), (3, 8, 0)):
        w24, w24_t = compress_24_transposable(torch.zeros(n, k))
        x = torch.randn(m, k, requires_grad=True)
        y = sparse24_linear(x, w24, w24_t=w24_t)
        assert y.shape == (m, n)
        y.sum().backward()
        torch.testing.assert_close(x.grad, torch.zeros(m, k), atol=0, rtol=0)


# ---- opcheck and compile --------------------------------------------------------------------------


def op_sample(m, n, k, dtype, bias=True):
    w24, w24_t = compress_24_transposable(transposable_weight(n, k, dtype))
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    return x, w24.values, w24.meta, b, w24_t.values, w24_t.meta


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_with_values_t(requires_grad):
    samples = [
        (op_sample(3, 8, 12, torch.float32), "gelu"),
        (op_sample(GEMV_MAX_M + 4, 4, 36, torch.float32, bias=False), "relu"),
        (op_sample(2, 12, 8, torch.bfloat16), "relu2"),
    ]
    for (x, values, meta, b, values_t, meta_t), act in samples:
        if requires_grad:  # values_t too: it gets no gradient, which opcheck must accept
            for t in (x, values, b, values_t):
                if t is not None:
                    t.requires_grad_()
        torch.library.opcheck(ops.sparse24_linear, (x, values, meta, b, act, values_t, meta_t))


def test_torch_compile_fullgraph_forward_backward():
    w24, w24_t = compress_24_transposable(transposable_weight(36, 68))
    b = torch.randn(36)

    def f(x):
        return sparse24_linear(x, w24, b, activation="silu", w24_t=w24_t)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 68, requires_grad=True)
    y = compiled(x)
    torch.testing.assert_close(y, f(x))
    y.square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    sparse24_linear(xr, w24, b, activation="silu").square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


# ---- bad inputs ----------------------------------------------------------------------------------


def test_bad_values_t_op():
    x, values, meta, b, values_t, meta_t = op_sample(3, 8, 12, torch.float32)
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected values_t of shape \[12, 4\] \(W\^T \[K, N\] "
                                           r"compressed, for values of shape \[8, 6\]\) \(got \[12, 2\]\)"):
        ops.sparse24_linear(x, values, meta, b, "none", values_t[:, :2], meta_t)
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected values_t of shape \[12, 4\] .*\(got \[8, 4\]\)"):
        ops.sparse24_linear(x, values, meta, b, "none", values_t[:8], meta_t)
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected meta_t of shape \[12, 1\] \(got \[11, 1\]\)"):
        ops.sparse24_linear(x, values, meta, b, "none", values_t, meta_t[:11])
    with pytest.raises(TypeError, match=r"sparse24_linear: expected values_t to have values' dtype Float \(got BFloat16\)"):
        ops.sparse24_linear(x, values, meta, b, "none", values_t.bfloat16(), meta_t)
    with pytest.raises(TypeError, match=r"sparse24_linear: expected meta_t to have dtype uint8 .*\(got Short\)"):
        ops.sparse24_linear(x, values, meta, b, "none", values_t, meta_t.short())
    with pytest.raises(RuntimeError, match=r"sparse24_linear: expected values_t and meta_t to be given together "
                                           r"\(got values_t given, meta_t None\)"):
        ops.sparse24_linear(x, values, meta, b, "none", values_t, None)
    v7, m7 = ops.compress_24(torch.randn(7, 12), True, "packed")
    with pytest.raises(RuntimeError, match=r"sparse24_linear: values_t/meta_t .* need N = values.size\(0\) divisible "
                                           r"by 4 \(got 7\)"):
        ops.sparse24_linear(x, v7, m7, None, "none", torch.zeros(12, 3), torch.zeros(12, 1, dtype=torch.uint8))


def test_bad_w24_t_wrapper():
    w24, w24_t = compress_24_transposable(transposable_weight(8, 12))
    x = torch.randn(3, 12)
    with pytest.raises(TypeError, match=r"sparse24_linear: expected w24_t to be a Sparse24 .*\(got Tensor\)"):
        sparse24_linear(x, w24, w24_t=w24_t.values)
    with pytest.raises(ValueError, match=r"sparse24_linear: expected w24_t of dense shape \[12, 8\] \(W\^T for W of "
                                         r"shape \[8, 12\]\) \(got \[8, 12\]\)"):
        sparse24_linear(x, w24, w24_t=w24)
    with pytest.raises(ValueError, match=r"sparse24_linear: w24_t is used with the 'packed' layout only"):
        sparse24_linear(x, w24, w24_t=w24_t._replace(layout="cutlass"))


# ---- SparseLinear24.from_dense(method="transposable") -----------------------------------------------


@pytest.mark.parametrize("device", devices())
def test_nn_transposable_forward_backward(device):
    lin = nn.Linear(24, 16, device=device)
    layer = SparseLinear24.from_dense(lin, method="transposable", activation="gelu")
    w = layer.to_dense()
    assert is_24_along_rows(w) and is_24_along_rows(w.t().contiguous())
    torch.testing.assert_close(w, lin.weight.detach() * transposable_mask_24(lin.weight.detach()), atol=0, rtol=0)
    assert layer.weight24_t() is not None
    torch.testing.assert_close(decompress_24(layer.weight24_t()), w.t(), atol=0, rtol=0)

    x0 = torch.randn(3, 24, device=device)
    x = x0.clone().requires_grad_()
    layer(x).square().sum().backward()
    xr = x0.clone().requires_grad_()
    br = lin.bias.detach().clone().requires_grad_()
    sparse24_linear_ref(xr, layer.values, layer.meta, br, "gelu").square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, br.grad, atol=1e-4, rtol=1e-4)


def test_nn_transposable_state_dict_round_trip():
    layer = SparseLinear24.from_dense(nn.Linear(32, 12), method="transposable")
    sd = layer.state_dict()
    assert set(sd) == {"values", "meta", "bias", "values_t", "meta_t"}
    assert sd["values_t"].shape == (32, 6) and sd["meta_t"].shape == (32, 2)

    fresh = SparseLinear24(32, 12)
    assert fresh.weight24_t() is None and set(fresh.state_dict()) == {"values", "meta", "bias"}
    fresh.load_state_dict(sd)  # strict: creates values_t/meta_t
    for key, t in sd.items():
        torch.testing.assert_close(fresh.state_dict()[key], t, atol=0, rtol=0)
    x = torch.randn(5, 32, requires_grad=True)
    fresh(x).sum().backward()
    xr = x.detach().clone().requires_grad_()
    layer(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=0, rtol=0)

    # A state dict without W^T (an older or non-transposable layer) drops it: the new W need not be transposable.
    plain = SparseLinear24.from_dense(nn.Linear(32, 12))
    fresh.load_state_dict(plain.state_dict())
    assert fresh.weight24_t() is None and set(fresh.state_dict()) == {"values", "meta", "bias"}
    torch.testing.assert_close(fresh.to_dense(), plain.to_dense(), atol=0, rtol=0)

    # dtype moves convert W^T with W
    half = SparseLinear24.from_dense(nn.Linear(32, 12), method="transposable").to(torch.bfloat16)
    assert half.values_t.dtype == torch.bfloat16 and half.meta_t.dtype == torch.uint8


def test_nn_transposable_compiles():
    layer = SparseLinear24.from_dense(nn.Linear(40, 20), method="transposable", activation="relu")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 40, requires_grad=True)
    compiled(x).sum().backward()
    xr = x.detach().clone().requires_grad_()
    layer.bias.grad = None
    layer(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_nn_transposable_bad_inputs():
    with pytest.raises(ValueError, match=r"SparseLinear24.from_dense: method='transposable' needs out_features to be a "
                                         r"multiple of 4 \(got 10\)"):
        SparseLinear24.from_dense(nn.Linear(16, 10), method="transposable")
    with pytest.raises(ValueError, match=r"SparseLinear24.from_dense: calibration is only used by method='wanda'"):
        SparseLinear24.from_dense(nn.Linear(16, 8), method="transposable", calibration=torch.randn(4, 16))
