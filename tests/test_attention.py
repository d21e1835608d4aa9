"""block_sparse_attention (forward and backward, CPU; CUDA where built and present) against the dense
reference, awkward shapes, decode split, empty rows, NaN, opcheck, torch.compile, bad input."""
from __future__ import annotations

import math

import pytest
import torch

import sparseops
from sparseops import block_mask_from_dense, block_sparse_attention, causal_block_mask
from sparseops.reference import block_sparse_attention_ref

from conftest import devices

ops = torch.ops.sparseops
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(B, Hq, Hkv, Sq, Skv, D, dtype, device="cpu", requires_grad=False):
    mk = lambda h, s: torch.randn(B, h, s, D, dtype=dtype, device=device, requires_grad=requires_grad)  # noqa: E731
    return mk(Hq, Sq), mk(Hkv, Skv), mk(Hkv, Skv)


def _random_mask(B, H, Sq, Skv, bq, bk, keep=0.5, device="cpu", gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    blocks = torch.rand(B, H, math.ceil(Sq / bq), math.ceil(Skv / bk), generator=g) < keep
    return block_mask_from_dense(blocks, (bq, bk), Sq, Skv).to(device)


# (B, Hq, Hkv, Sq, Skv, D, bq, bk, mask heads)
FWD_SHAPES = [
    (1, 1, 1, 1, 1, 32, 16, 16, 1),
    (1, 2, 1, 7, 7, 64, 16, 16, 1),
    (2, 4, 2, 33, 33, 80, 16, 32, 4),
    (1, 4, 1, 33, 257, 96, 32, 128, 1),
    (1, 2, 2, 257, 257, 128, 128, 64, 2),
    (1, 8, 2, 1, 257, 64, 16, 16, 8),
    (1, 2, 1, 40, 70, 256, 64, 16, 1),
    (1, 1, 1, 19, 23, 5, 8, 4, 1),
]
RULES = [(False, None), (True, None), (False, (7, 3)), (True, 20)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=str)
@pytest.mark.parametrize("causal,window", RULES, ids=str)
def test_forward_matches_reference_fp32(device, shape, causal, window):
    B, Hq, Hkv, Sq, Skv, D, bq, bk, mh = shape
    q, k, v = _inputs(B, Hq, Hkv, Sq, Skv, D, torch.float32, device)
    m = _random_mask(B, mh, Sq, Skv, bq, bk, 0.6, device)
    out, lse = block_sparse_attention(q, k, v, m, causal=causal, window=window, return_lse=True)
    ref, ref_lse = block_sparse_attention_ref(q, k, v, m, causal=causal, window=window, return_lse=True)
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=1e-4)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], atol=1e-5, rtol=1e-5)
    assert (out[torch.isinf(lse)] == 0).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", FWD_SHAPES[1:6], ids=str)
def test_forward_low_precision(device, dtype, shape):
    B, Hq, Hkv, Sq, Skv, D, bq, bk, mh = shape
    q, k, v = _inputs(B, Hq, Hkv, Sq, Skv, D, dtype, device)
    m = _random_mask(B, mh, Sq, Skv, bq, bk, 0.6, device)
    out = block_sparse_attention(q, k, v, m, causal=True)
    ref = block_sparse_attention_ref(q, k, v, m, causal=True)  # fp32 maths on the same inputs
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [0.3, -0.3])  # bf16: a positive scale is applied in the softmax, others in S
def test_scale_and_noncontiguous_inputs(dtype, scale):
    q, k, v = _inputs(2, 4, 2, 33, 50, 64, dtype)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    kt = k[..., ::1].transpose(2, 3).contiguous().transpose(2, 3)
    m = _random_mask(2, 1, 33, 50, 16, 16)
    out = block_sparse_attention(qt, kt, v, m, scale=scale)
    tol = 2e-5 if dtype == torch.float32 else TOL[dtype]
    ref = block_sparse_attention_ref(q, k, v, m, scale=scale)
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=max(tol, 1e-4))


@pytest.mark.parametrize("threads", [1, 8])
def test_decode_split_matches_reference(threads):
    """Sq = 1 against a long KV: with more threads than (b, kv head) items the kept list is split and
    the partial results merged with their lse."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v = _inputs(1, 4, 1, 1, 1000, 128, torch.float32)
        m = _random_mask(1, 1, 1, 1000, 16, 64, 0.3)
        out, lse = block_sparse_attention(q, k, v, m, causal=True, return_lse=True)
        ref, ref_lse = block_sparse_attention_ref(q, k, v, m, causal=True, return_lse=True)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_with_nothing_visible_give_zero_and_minus_inf(dtype):
    q, k, v = _inputs(1, 2, 1, 40, 40, 32, dtype)
    blocks = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    blocks[0, 0, 1, 2] = True  # block row 1 keeps only a future block: causal hides it
    blocks[0, 0, 2, 0] = True
    m = block_mask_from_dense(blocks, 16, 40, 40)
    out, lse = block_sparse_attention(q, k, v, m, causal=True, return_lse=True)
    assert (out[:, :, :32] == 0).all() and torch.isneginf(lse[:, :, :32]).all()
    tol = 2e-5 if dtype == torch.float32 else TOL[dtype]
    ref = block_sparse_attention_ref(q, k, v, m, causal=True)
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=max(tol, 1e-4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_propagates(dtype):
    q, k, v = _inputs(1, 1, 1, 20, 20, 32, dtype)
    k[0, 0, 3, 5] = float("nan")
    m = causal_block_mask(20, 20, 16)
    out = block_sparse_attention(q, k, v, m, causal=True)
    assert out[0, 0, 3:].isnan().all() and not out[0, 0, :3].isnan().any()


# ---- backward -----------------------------------------------------------------------------------

BWD_SHAPES = [
    (1, 1, 1, 1, 1, 32, 16, 16, 1),
    (1, 2, 1, 33, 33, 64, 16, 16, 1),
    (2, 4, 2, 33, 70, 80, 16, 32, 4),
    (1, 4, 1, 7, 130, 32, 16, 64, 1),
    (1, 2, 2, 100, 100, 96, 64, 32, 2),
    (1, 4, 2, 45, 50, 40, 16, 16, 1),  # fp32 with D not a multiple of 16: rows converted, not read in place
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=str)
@pytest.mark.parametrize("causal,window", RULES, ids=str)
def test_backward_matches_reference_autograd(device, shape, causal, window):
    B, Hq, Hkv, Sq, Skv, D, bq, bk, mh = shape
    q, k, v = _inputs(B, Hq, Hkv, Sq, Skv, D, torch.float32, device, requires_grad=True)
    m = _random_mask(B, mh, Sq, Skv, bq, bk, 0.6, device)
    out, lse = block_sparse_attention(q, k, v, m, causal=causal, window=window, return_lse=True)
    g_out, g_lse = torch.randn_like(out), torch.randn_like(lse)
    loss = (out * g_out).sum() + (torch.where(torch.isinf(lse), 0.0, lse) * g_lse).sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ro, rl = block_sparse_attention_ref(qd, kd, vd, m, causal=causal, window=window, return_lse=True)
    rloss = (ro * g_out.double()).sum() + (torch.where(torch.isinf(rl), 0.0, rl) * g_lse.double()).sum()
    ref = torch.autograd.grad(rloss, (qd, kd, vd))
    for name, a, b in zip("qkv", grads, ref):
        torch.testing.assert_close(a.double(), b, atol=5e-5, rtol=1e-4, msg=lambda s: f"d{name}: {s}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backward_low_precision(dtype):
    q, k, v = _inputs(1, 4, 2, 33, 65, 64, dtype, requires_grad=True)
    m = _random_mask(1, 1, 33, 65, 16, 32, 0.7)
    out = block_sparse_attention(q, k, v, m, causal=True)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out.float() * g.float()).sum(), (q, k, v))
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad((block_sparse_attention_ref(qf, kf, vf, m, causal=True) * g.float()).sum(), (qf, kf, vf))
    for a, b in zip(grads, ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=3 * TOL[dtype], rtol=3 * TOL[dtype])


# ---- opcheck, compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_block_sparse_attention(requires_grad):
    for B, Hq, Hkv, Sq, Skv, D, bq, bk, mh in [(1, 2, 1, 7, 33, 32, 16, 16, 1), (2, 2, 2, 20, 20, 16, 8, 8, 2)]:
        q, k, v = _inputs(B, Hq, Hkv, Sq, Skv, D, torch.float32, requires_grad=requires_grad)
        m = _random_mask(B, mh, Sq, Skv, bq, bk, 0.7)
        args = (q, k, v, m.kv_num_blocks, m.kv_indices, bq, bk, True, 5, -1, 0.2)
        torch.library.opcheck(ops.block_sparse_attention, args)


def test_opcheck_block_sparse_attention_backward():
    q, k, v = _inputs(1, 2, 1, 20, 33, 32, torch.float32)
    m = _random_mask(1, 1, 20, 33, 16, 16, 0.7)
    out, lse = ops.block_sparse_attention(q, k, v, m.kv_num_blocks, m.kv_indices, 16, 16, True, -1, -1, None)
    g = torch.randn_like(out)
    for grad_lse in (None, torch.randn_like(lse)):
        args = (g, q, k, v, out, lse, m.kv_num_blocks, m.kv_indices, 16, 16, True, -1, -1, None, grad_lse)
        torch.library.opcheck(ops.block_sparse_attention_backward, args)


def test_compile_fullgraph():
    q, k, v = _inputs(1, 4, 2, 40, 40, 32, torch.float32, requires_grad=True)
    m = causal_block_mask(40, 40, 16)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k, v, kv_num_blocks, kv_indices):
        mask = sparseops.BlockMask(kv_num_blocks, kv_indices, (16, 16), 40, 40)
        return block_sparse_attention(q, k, v, mask, causal=True).sum()

    loss = f(q, k, v, m.kv_num_blocks, m.kv_indices)
    loss.backward()
    ref = block_sparse_attention_ref(q, k, v, m, causal=True).sum()
    torch.testing.assert_close(loss, ref, atol=1e-4, rtol=1e-4)
    assert q.grad is not None and k.grad is not None


# ---- bad input ----------------------------------------------------------------------------------


def _raw(q, k, v, num, idx, bq=16, bk=16):
    return ops.block_sparse_attention(q, k, v, num, idx, bq, bk, False, -1, -1, None)


def test_raw_op_validates_the_mask():
    q, k, v = _inputs(1, 2, 1, 32, 40, 32, torch.float32)
    m = _random_mask(1, 1, 32, 40, 16, 16, 1.0)
    num, idx = m.kv_num_blocks, m.kv_indices
    bad = idx.clone()
    bad[0, 0, 1, 0] = 3  # nKV = 3: index 3 is out of range
    with pytest.raises(RuntimeError, match=r"block_sparse_attention: expected kv_indices entries .* in \[0, 3\)"):
        _raw(q, k, v, num, bad)
    bad = idx.clone()
    bad[0, 0, 0, 1] = bad[0, 0, 0, 0]
    with pytest.raises(RuntimeError, match="block_sparse_attention: expected distinct kv_indices"):
        _raw(q, k, v, num, bad)
    with pytest.raises(RuntimeError, match=r"expected every kv_num_blocks entry in \[0, kv_indices.size\(-1\)=3\]"):
        _raw(q, k, v, num + 1, idx)
    with pytest.raises(RuntimeError, match="the mask does not fit q"):
        _raw(q[:, :, :16], k, v, num, idx)
    with pytest.raises(RuntimeError, match="block_sparse_attention: expected kv_num_blocks.size\\(1\\) in \\{1, Hq=2\\}"):
        _raw(q, k, v, num.expand(1, 3, 2).contiguous(), idx.expand(1, 3, 2, 3).contiguous())
    with pytest.raises(TypeError, match="expected kv_indices to have dtype"):
        _raw(q, k, v, num, idx.long())


def test_bad_tensors():
    q, k, v = _inputs(1, 3, 2, 16, 16, 32, torch.float32)
    m = _random_mask(1, 1, 16, 16, 16, 16, 1.0)
    with pytest.raises(RuntimeError, match=r"expected q.size\(1\) \(Hq=3\) to be a multiple of k.size\(1\) \(Hkv=2\)"):
        block_sparse_attention(q, k, v, m)
    q, k, v = _inputs(1, 2, 1, 16, 16, 32, torch.float32)
    with pytest.raises(TypeError, match="block_sparse_attention: expected q, k, v of one dtype"):
        block_sparse_attention(q, k.half(), v, m)
    with pytest.raises(RuntimeError, match=r"expected k.size\(3\) == q.size\(3\) = 32"):
        block_sparse_attention(q, k[..., :16], v[..., :16], m)
    with pytest.raises(RuntimeError, match=r"expected head dim q.size\(3\) in \[1, 256\]"):
        _raw(*_inputs(1, 1, 1, 16, 16, 300, torch.float32), m.kv_num_blocks, m.kv_indices)
    with pytest.raises(RuntimeError, match=r"expected k.size\(2\) \(kv_len\) >= 1"):
        _raw(q, k[:, :, :0], v[:, :, :0], m.kv_num_blocks, m.kv_indices[..., :0])
    with pytest.raises(ValueError, match="block_sparse_attention: expected block_mask for q_len=16, kv_len=16"):
        block_sparse_attention(q, k, v, causal_block_mask(32, 16, 16))
    with pytest.raises(TypeError, match="expected block_mask to be a sparseops.BlockMask"):
        block_sparse_attention(q, k, v, (m.kv_num_blocks, m.kv_indices))
    with pytest.raises(ValueError, match="expected window sizes to be ints >= 0"):
        block_sparse_attention(q, k, v, m, window=(-2, 1))


@pytest.mark.parametrize("D", [33, 2, 256])
def test_bf16_odd_and_extreme_head_dims(D):
    """bf16 runs on bf16 pairs (vdpbf16ps) where the CPU has AVX-512 BF16 and D is even, else in fp32."""
    q, k, v = _inputs(1, 4, 2, 40, 70, D, torch.bfloat16)
    m = _random_mask(1, 1, 40, 70, 16, 32, 0.7)
    out = block_sparse_attention(q, k, v, m, causal=True)
    ref = block_sparse_attention_ref(q, k, v, m, causal=True)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype,D,mask_heads", [(torch.float32, 32, 4), (torch.float32, 40, 1), (torch.bfloat16, 48, 1)],
                         ids=str)
def test_backward_fused_and_two_pass_modes_agree(threads, dtype, D, mask_heads):
    """dq is accumulated in the KV-block pass when the (b, kv head) items keep the threads busy (here
    with 1 thread) and computed in its own pass otherwise (2 groups on 3 threads); fp32 with D a multiple
    of 16 reads q/dO/k rows in place, the other cases convert them."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v = _inputs(2, 4, 1, 50, 70, D, dtype, requires_grad=True)
        m = _random_mask(2, mask_heads, 50, 70, 16, 16, 0.6)
        out = block_sparse_attention(q, k, v, m, causal=True, window=(30, 0))
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref = torch.autograd.grad(block_sparse_attention_ref(qf, kf, vf, m, causal=True, window=(30, 0)), (qf, kf, vf),
                                  g.float())
        atol, rtol = (5e-5, 1e-4) if dtype == torch.float32 else (3 * TOL[dtype], 3 * TOL[dtype])
        for a, b in zip(grads, ref):
            assert a.dtype == dtype
            torch.testing.assert_close(a.float(), b, atol=atol, rtol=rtol)
    finally:
        torch.set_num_threads(old)
