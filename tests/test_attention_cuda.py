"""block_sparse_attention on CUDA: the sm80+ tensor-core kernels (fp16/bf16, attention_tc.cuh) against the
dense reference, forward and backward, odd shapes, GQA, causal/window, every head dim (padded ones and
the CUDA-core fallbacks); the same results from the CUDA-core kernels; and what a bad mask does on CUDA
(no host-side check unless SPARSEOPS_CHECK_MASK=1: counts clamped, bad indices skipped)."""
from __future__ import annotations

import math

import pytest
import torch

from sparseops import BlockMask, block_mask_from_dense, block_sparse_attention
from sparseops.reference import block_sparse_attention_ref

pytestmark = pytest.mark.requires_cuda
ops = torch.ops.sparseops
# The tensor-core kernels round P (and dS) to the input dtype before the second product, as
# FlashAttention-2 does: a little looser than test_attention.py's tolerances.
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _inputs(B, Hq, Hkv, Sq, Skv, D, dtype, requires_grad=False):
    mk = lambda h, s: torch.randn(B, h, s, D, dtype=dtype, device="cuda", requires_grad=requires_grad)  # noqa: E731
    return mk(Hq, Sq), mk(Hkv, Skv), mk(Hkv, Skv)


def _random_mask(B, H, Sq, Skv, bq, bk, keep=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(B, H, math.ceil(Sq / bq), math.ceil(Skv / bk), generator=g) < keep
    return block_mask_from_dense(blocks, (bq, bk), Sq, Skv).to("cuda")


def _ref(q, k, v, m, **kw):
    return block_sparse_attention_ref(q.float(), k.float(), v.float(), m, return_lse=True, **kw)


# (B, Hq, Hkv, Sq, Skv, D, bq, bk, mask heads): ragged blocks, GQA, a q-block longer than the 64-row
# tile, decode, every documented head dim (32 and 80/96 are padded to 64 / 128; 256 runs the tensor
# cores forward and the CUDA-core kernel backward).
SHAPES = [
    (1, 1, 1, 1, 1, 32, 16, 16, 1),
    (1, 2, 1, 7, 33, 64, 16, 16, 1),
    (2, 4, 2, 33, 70, 80, 16, 32, 4),
    (1, 4, 1, 100, 257, 96, 32, 128, 1),
    (1, 2, 2, 257, 257, 128, 128, 64, 2),
    (1, 8, 2, 1, 1000, 128, 16, 64, 8),
    (1, 2, 1, 70, 90, 256, 64, 16, 1),
]
RULES = [(False, None), (True, None), (False, (7, 3)), (True, 20)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("causal,window", RULES, ids=str)
def test_forward_tensor_cores(dtype, shape, causal, window):
    B, Hq, Hkv, Sq, Skv, D, bq, bk, mh = shape
    q, k, v = _inputs(B, Hq, Hkv, Sq, Skv, D, dtype)
    m = _random_mask(B, mh, Sq, Skv, bq, bk)
    out, lse = block_sparse_attention(q, k, v, m, causal=causal, window=window, return_lse=True)
    ref, ref_lse = _ref(q, k, v, m, causal=causal, window=window)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], atol=TOL[dtype], rtol=TOL[dtype])
    assert (out[torch.isinf(lse)] == 0).all()


BWD_SHAPES = [
    (1, 2, 1, 7, 33, 32, 16, 16, 1),
    (2, 4, 2, 33, 70, 64, 16, 32, 4),
    (1, 4, 1, 100, 130, 96, 32, 64, 1),
    (1, 2, 2, 130, 100, 128, 128, 32, 2),
    (1, 2, 1, 40, 50, 256, 16, 16, 1),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=str)
@pytest.mark.parametrize("causal,window", RULES, ids=str)
def test_backward_tensor_cores(dtype, shape, causal, window):
    B, Hq, Hkv, Sq, Skv, D, bq, bk, mh = shape
    q, k, v = _inputs(B, Hq, Hkv, Sq, Skv, D, dtype, requires_grad=True)
    m = _random_mask(B, mh, Sq, Skv, bq, bk)
    out, lse = block_sparse_attention(q, k, v, m, causal=causal, window=window, return_lse=True)
    g_out, g_lse = torch.randn_like(out), torch.randn_like(lse)
    loss = (out.float() * g_out.float()).sum() + (torch.where(torch.isinf(lse), 0.0, lse) * g_lse).sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ro, rl = block_sparse_attention_ref(qf, kf, vf, m, causal=causal, window=window, return_lse=True)
    rloss = (ro * g_out.float()).sum() + (torch.where(torch.isinf(rl), 0.0, rl) * g_lse).sum()
    ref = torch.autograd.grad(rloss, (qf, kf, vf))
    for name, a, b in zip("qkv", grads, ref):
        assert a.dtype == dtype
        scale = b.abs().max().item() + 1.0  # gradients sum many rounded terms: compare relative to their size
        torch.testing.assert_close(a.float() / scale, b / scale, atol=2 * TOL[dtype], rtol=0,
                                   msg=lambda s: f"d{name}: {s}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tensor_cores_agree_with_cuda_cores(dtype, monkeypatch):
    q, k, v = _inputs(2, 4, 2, 150, 200, 64, dtype, requires_grad=True)
    m = _random_mask(2, 1, 150, 200, 32, 64)
    g = torch.randn(2, 4, 150, 64, dtype=dtype, device="cuda")

    def run():
        out = block_sparse_attention(q, k, v, m, causal=True, window=(60, 0))
        return (out, *torch.autograd.grad(out, (q, k, v), g))

    tc = run()
    monkeypatch.setenv("SPARSEOPS_ATTENTION_CUDA_CORES", "1")
    core = run()
    for a, b in zip(tc, core):
        torch.testing.assert_close(a.float(), b.float(), atol=3 * TOL[dtype], rtol=3 * TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("splits", ["1", "3", "64"])
def test_decode_kv_split(dtype, splits, monkeypatch):
    """Decoding (a grid smaller than the GPU): each row's kept blocks split over thread blocks and merged
    with their lse (flash-decoding), against the unsplit kernels and the reference; rows that see
    nothing in some splits, or in all of them, and more splits than kept blocks."""
    q, k, v = _inputs(2, 8, 2, 3, 3000, 128, dtype)
    blocks = torch.rand(2, 8, 1, math.ceil(3000 / 64), generator=torch.Generator().manual_seed(1)) < 0.4
    blocks[0, 1] = False  # a head that sees nothing
    blocks[1, 2, 0, 1:] = False  # one kept block: most splits see nothing
    m = block_mask_from_dense(blocks, (16, 64), 3, 3000).to("cuda")
    monkeypatch.setenv("SPARSEOPS_ATTENTION_KV_SPLITS", splits)
    out, lse = block_sparse_attention(q, k, v, m, causal=True, return_lse=True)
    ref, ref_lse = _ref(q, k, v, m, causal=True)
    tol = TOL.get(dtype, 2e-5)
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=max(tol, 1e-4))
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)) and (out[0, 1] == 0).all()
    fin = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[fin], ref_lse[fin], atol=1e-4, rtol=1e-4)
    monkeypatch.delenv("SPARSEOPS_ATTENTION_KV_SPLITS")  # the default picks its own split here
    again = block_sparse_attention(q, k, v, m, causal=True)
    torch.testing.assert_close(again.float(), out.float(), atol=tol, rtol=max(tol, 1e-4))


def test_unaligned_inputs_fall_back():
    # q viewed one element into its storage: rows are not 16-byte aligned, so the CUDA-core kernel runs.
    base = torch.randn(1 * 2 * 20 * 64 + 1, dtype=torch.float16, device="cuda")
    q = base[1:].view(1, 2, 20, 64)
    k, v = torch.randn(2, 1, 2, 30, 64, dtype=torch.float16, device="cuda").unbind(0)
    m = _random_mask(1, 1, 20, 30, 16, 16)
    out = block_sparse_attention(q, k, v, m)
    torch.testing.assert_close(out.float(), _ref(q, k, v, m)[0], atol=TOL[torch.float16], rtol=TOL[torch.float16])


# ---- bad masks on CUDA ----------------------------------------------------------------------------


def _bad_mask_case(dtype):
    q, k, v = _inputs(1, 2, 1, 32, 40, 64, dtype)
    m = _random_mask(1, 1, 32, 40, 16, 16, 1.0)  # nKV = 3, width 3, every block kept
    num, idx = m.kv_num_blocks.clone(), m.kv_indices.clone()
    idx[0, 0, 0, 1] = 7    # out of range: skipped
    idx[0, 0, 1, 0] = -5   # out of range: skipped
    num[0, 0, 1] = 99      # count past the row: clamped to 3
    # What the kernels make of it: row 0 keeps blocks 0 and 2, row 1 keeps blocks 1 and 2.
    clean = block_mask_from_dense(torch.tensor([[[[1, 0, 1], [0, 1, 1]]]], dtype=torch.bool), (16, 16), 32, 40)
    return q, k, v, num, idx, clean.to("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bad_mask_reads_nothing_out_of_bounds(dtype):
    q, k, v, num, idx, clean = _bad_mask_case(dtype)
    out, lse = ops.block_sparse_attention(q, k, v, num, idx, 16, 16, False, -1, -1, None)
    torch.cuda.synchronize()  # a fault would surface here
    ref, ref_lse = _ref(q, k, v, clean)
    tol = 2e-5 if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    g = torch.randn_like(out)
    dq, dk, dv = ops.block_sparse_attention_backward(g, q, k, v, out, lse, num, idx, 16, 16, False, -1, -1, None,
                                                     None)
    dq2, dk2, dv2 = ops.block_sparse_attention_backward(g, q, k, v, out, lse, clean.kv_num_blocks, clean.kv_indices,
                                                        16, 16, False, -1, -1, None, None)
    for a, b in ((dq, dq2), (dk, dk2), (dv, dv2)):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


def test_bad_mask_error_on_request(monkeypatch):
    q, k, v, num, idx, _ = _bad_mask_case(torch.float32)
    full = _random_mask(1, 1, 32, 40, 16, 16, 1.0)
    monkeypatch.setenv("SPARSEOPS_CHECK_MASK", "1")
    with pytest.raises(RuntimeError, match=r"block_sparse_attention: expected every kv_num_blocks entry in \[0, "):
        ops.block_sparse_attention(q, k, v, num, full.kv_indices, 16, 16, False, -1, -1, None)
    good = num.clone()
    good[0, 0, 1] = 3
    with pytest.raises(RuntimeError, match=r"block_sparse_attention: expected kv_indices entries .* in \[0, 3\)"):
        ops.block_sparse_attention(q, k, v, good, idx, 16, 16, False, -1, -1, None)
    mask = BlockMask(good, idx, (16, 16), 32, 40)
    monkeypatch.setenv("SPARSEOPS_CHECK_MASK", "0")
    block_sparse_attention(q, k, v, mask)  # unchecked again: runs
