"""topk_block_mask against its reference (float64 pooled scores), forced sink/local blocks, causal
visibility, GQA, use with block_sparse_attention, opcheck, compile, bad input."""
from __future__ import annotations

import pytest
import torch

import sparseops
from sparseops import block_sparse_attention, topk_block_mask
from sparseops.reference import block_sparse_attention_ref, topk_block_mask_ref

from conftest import devices

ops = torch.ops.sparseops

# (B, Hq, Hkv, Sq, Skv, D, bq, bk)
SHAPES = [(1, 1, 1, 1, 1, 32, 16, 16), (1, 2, 1, 33, 33, 64, 16, 16), (2, 4, 2, 70, 257, 32, 32, 16),
          (1, 2, 2, 257, 257, 80, 64, 32), (1, 1, 1, 7, 100, 16, 16, 8)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("topk,causal,sinks,local", [(2, False, 0, 1), (3, True, 1, 2), (0, True, 0, 1),
                                                     (50, False, 2, 0)])
def test_topk_matches_reference(device, shape, topk, causal, sinks, local):
    B, Hq, Hkv, Sq, Skv, D, bq, bk = shape
    q = torch.randn(B, Hq, Sq, D, device=device)
    k = torch.randn(B, Hkv, Skv, D, device=device)
    m = topk_block_mask(q, k, block_size=(bq, bk), topk=topk, causal=causal, sink_blocks=sinks, local_blocks=local)
    ref = topk_block_mask_ref(q.cpu(), k.cpu(), block_size=(bq, bk), topk=topk, causal=causal, sink_blocks=sinks,
                              local_blocks=local)
    assert torch.equal(m.kv_num_blocks.cpu(), ref.kv_num_blocks)
    assert torch.equal(m.to_dense_blocks().cpu(), ref.to_dense_blocks())
    assert m.kv_indices.shape[-1] == m.num_kv_blocks


def test_topk_keeps_forced_blocks_and_feeds_attention():
    q = torch.randn(1, 4, 128, 32)
    k = torch.randn(1, 2, 128, 32)
    v = torch.randn(1, 2, 128, 32)
    m = topk_block_mask(q, k, block_size=16, topk=1, causal=True, sink_blocks=1, local_blocks=1)
    dense = m.to_dense_blocks()[0]
    assert dense[:, :, 0].all() and dense.diagonal(dim1=1, dim2=2).all()
    assert int(m.kv_num_blocks.max()) <= 3 and not dense.triu(1).any()
    out = block_sparse_attention(q, k, v, m, causal=True)
    torch.testing.assert_close(out, block_sparse_attention_ref(q, k, v, m, causal=True), atol=2e-5, rtol=1e-4)


def test_opcheck_topk_block_mask():
    q, k = torch.randn(1, 2, 40, 16), torch.randn(1, 1, 50, 16)
    torch.library.opcheck(ops.topk_block_mask, (q, k, 16, 16, 2, True, 1, 1))
    torch.library.opcheck(ops.topk_block_mask, (q.bfloat16(), k.bfloat16(), 8, 32, 1, False, 0, 2))


def test_compile_fullgraph_topk():
    q, k = torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 16)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k):
        return topk_block_mask(q, k, block_size=16, topk=2, causal=True).kv_num_blocks

    assert torch.equal(f(q, k), topk_block_mask(q, k, block_size=16, topk=2, causal=True).kv_num_blocks)


def test_topk_bad_input():
    q, k = torch.randn(1, 3, 16, 16), torch.randn(1, 2, 16, 16)
    with pytest.raises(RuntimeError, match=r"topk_block_mask: expected q.size\(1\) \(Hq=3\) to be a multiple"):
        topk_block_mask(q, k, block_size=16, topk=1)
    with pytest.raises(ValueError, match="topk_block_mask: expected topk to be an int >= 0"):
        topk_block_mask(q, k, block_size=16, topk=-1)
    with pytest.raises(RuntimeError, match=r"topk_block_mask: expected topk, sink_blocks, local_blocks >= 0"):
        ops.topk_block_mask(q[:, :2], k, 16, 16, 1, False, -1, 1)
    with pytest.raises(ValueError, match="topk_block_mask: expected block sizes"):
        topk_block_mask(q, k, block_size=2000, topk=1)


def test_nn_block_sparse_attention_module():
    q = torch.randn(2, 4, 96, 32, requires_grad=True)
    k = torch.randn(2, 2, 96, 32, requires_grad=True)
    v = torch.randn(2, 2, 96, 32, requires_grad=True)
    mod = sparseops.nn.BlockSparseAttention(16, causal=True, window=40, topk=2, sink_blocks=1)
    out = mod(q, k, v)
    m = mod.build_mask(q, k)
    expected = topk_block_mask(q, k, block_size=16, topk=2, causal=True, sink_blocks=1) & \
        sparseops.sliding_window_block_mask(96, 96, 40, 16)
    assert torch.equal(m.to_dense_blocks(), expected.to_dense_blocks())
    torch.testing.assert_close(out, block_sparse_attention_ref(q, k, v, m, causal=True, window=40), atol=2e-5,
                               rtol=1e-4)
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    dense = sparseops.nn.BlockSparseAttention(32)(q, k, v)
    torch.testing.assert_close(dense, torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)), atol=2e-5, rtol=1e-4)
