"""BlockMask and its builders: each builder keeps exactly the blocks that hold a visible token pair
(checked against a brute-force token grid on small shapes), dense round trips, union/intersection,
pickling, bad input."""
from __future__ import annotations

import math
import pickle

import pytest
import torch

import sparseops
from sparseops import BlockMask, block_mask_from_dense, causal_block_mask, full_block_mask, sliding_window_block_mask


def _blocks_from_tokens(tok: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    sq, skv = tok.shape
    nq, nkv = math.ceil(sq / bq), math.ceil(skv / bk)
    pad = torch.zeros(nq * bq, nkv * bk, dtype=torch.bool)
    pad[:sq, :skv] = tok
    return pad.view(nq, bq, nkv, bk).any(3).any(1)


def _token_band(sq, skv, left, right):
    p = torch.arange(sq)[:, None] + skv - sq
    j = torch.arange(skv)[None, :]
    keep = torch.ones(sq, skv, dtype=torch.bool)
    if right is not None:
        keep &= j <= p + right
    if left is not None:
        keep &= j >= p - left
    return keep


SHAPES = [(1, 1, 16, 16), (7, 7, 16, 32), (33, 33, 16, 16), (33, 257, 32, 64), (257, 257, 128, 16), (1, 100, 64, 16)]


@pytest.mark.parametrize("sq,skv,bq,bk", SHAPES)
def test_causal_block_mask_matches_token_grid(sq, skv, bq, bk):
    m = causal_block_mask(sq, skv, (bq, bk))
    assert m.kv_num_blocks.dtype == torch.int32 and m.kv_indices.dtype == torch.int32
    assert torch.equal(m.to_dense_blocks()[0, 0], _blocks_from_tokens(_token_band(sq, skv, None, 0), bq, bk))


@pytest.mark.parametrize("sq,skv,bq,bk", SHAPES)
@pytest.mark.parametrize("window,causal", [(5, True), (40, True), ((3, 9), False), (0, False)])
def test_sliding_window_block_mask_matches_token_grid(sq, skv, bq, bk, window, causal):
    m = sliding_window_block_mask(sq, skv, window, (bq, bk), causal=causal)
    left, right = (window, 0 if causal else window) if isinstance(window, int) else window
    expected = _blocks_from_tokens(_token_band(sq, skv, left, right), bq, bk)
    assert torch.equal(m.to_dense_blocks()[0, 0], expected)


def test_full_mask_and_density():
    m = full_block_mask(100, 70, (32, 16))
    assert m.num_q_blocks == 4 and m.num_kv_blocks == 5
    assert m.to_dense_blocks().all() and m.density() == 1.0


def test_from_dense_lists_kept_blocks_ascending_and_round_trips():
    blocks = torch.rand(2, 3, 5, 9) < 0.4
    m = block_mask_from_dense(blocks, (16, 8), 70, 65)
    assert torch.equal(m.kv_num_blocks, blocks.sum(-1).int())
    for b in range(2):
        for h in range(3):
            for i in range(5):
                n = int(m.kv_num_blocks[b, h, i])
                assert m.kv_indices[b, h, i, :n].tolist() == blocks[b, h, i].nonzero().flatten().tolist()
    assert torch.equal(m.to_dense_blocks(), blocks)


def test_union_intersection_and_pickle():
    a = causal_block_mask(64, 64, 16)
    b = sliding_window_block_mask(64, 64, 20, 16, causal=False)
    assert torch.equal((a | b).to_dense_blocks(), a.to_dense_blocks() | b.to_dense_blocks())
    assert torch.equal((a & b).to_dense_blocks(), a.to_dense_blocks() & b.to_dense_blocks())
    c = pickle.loads(pickle.dumps(a))
    assert isinstance(c, BlockMask) and c.block_size == a.block_size and torch.equal(c.kv_indices, a.kv_indices)


def test_builders_reject_bad_input():
    with pytest.raises(ValueError, match="block_mask_from_dense: expected blocks of shape"):
        block_mask_from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 16, 64, 64)
    with pytest.raises(TypeError, match="block_mask_from_dense: expected blocks to be a bool tensor"):
        block_mask_from_dense(torch.ones(1, 1, 4, 4), 16, 64, 64)
    with pytest.raises(ValueError, match="causal_block_mask: expected block sizes"):
        causal_block_mask(64, 64, 0)
    with pytest.raises(ValueError, match="full_block_mask: expected q_len and kv_len"):
        full_block_mask(0, 64, 16)
    with pytest.raises(ValueError, match="sliding_window_block_mask: expected window sizes"):
        sliding_window_block_mask(64, 64, -1, 16)
    with pytest.raises(ValueError, match="BlockMask: cannot combine"):
        causal_block_mask(64, 64, 16) | causal_block_mask(64, 64, 32)


def test_flex_round_trip_and_same_attention():
    flex_mod = pytest.importorskip("torch.nn.attention.flex_attention")
    sq, skv, d = 100, 130, 16
    m = causal_block_mask(sq, skv, (32, 16)) | sliding_window_block_mask(sq, skv, 40, (32, 16))
    fbm = m.to_flex()
    back = sparseops.block_mask_from_flex(fbm)
    assert back.block_size == (32, 16) and (back.q_len, back.kv_len) == (sq, skv)
    assert torch.equal(back.to_dense_blocks(), m.to_dense_blocks())
    # Flex's full blocks count as kept too.
    full = flex_mod.BlockMask.from_kv_blocks(torch.zeros_like(m.kv_num_blocks), m.kv_indices, m.kv_num_blocks,
                                             m.kv_indices, BLOCK_SIZE=(32, 16), seq_lengths=(sq, skv))
    assert torch.equal(sparseops.block_mask_from_flex(full).to_dense_blocks(), m.to_dense_blocks())
    q, k, v = torch.randn(1, 2, sq, d), torch.randn(1, 2, skv, d), torch.randn(1, 2, skv, d)
    off = skv - sq
    causal = m.to_flex(mask_mod=lambda b, h, qi, kj: kj <= qi + off)
    expected = flex_mod.flex_attention(q, k, v, block_mask=causal)
    got = sparseops.block_sparse_attention(q, k, v, m, causal=True)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    with pytest.raises(TypeError, match="block_mask_from_flex: expected a torch.nn.attention.flex_attention.BlockMask"):
        sparseops.block_mask_from_flex(m)
