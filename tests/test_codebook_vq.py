"""sparseops.nn.VectorQuantizer: outputs and losses, gradients (codebook, projector, straight-through z),
EMA updates, dead-code revival, a short training run, torch.compile, bad arguments."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseops
from sparseops.nn import VectorQuantizer
from sparseops.reference import codebook_ema_update_ref, codebook_lookup_ref
from conftest import devices


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_forward_and_gradients(metric, device):
    vq = VectorQuantizer(8, 32, metric=metric).to(device)
    z = torch.randn(2, 5, 8, device=device, requires_grad=True)
    out = vq(z)
    ref_idx, ref_q, _ = codebook_lookup_ref(z.detach().reshape(-1, 8), vq.embed.detach(), metric)
    assert out.indices.shape == (2, 5) and torch.equal(out.indices.reshape(-1), ref_idx)
    torch.testing.assert_close(out.quantized, ref_q.reshape(2, 5, 8), rtol=1e-6, atol=1e-6)
    want_loss = 0.25 * ((z - ref_q.reshape(2, 5, 8)) ** 2).mean() + ((z - ref_q.reshape(2, 5, 8)) ** 2).mean()
    torch.testing.assert_close(out.loss, want_loss)
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and vq.embed.grad is not None
    used = torch.zeros(32, dtype=torch.bool, device=device)
    used[ref_idx] = True
    assert (vq.embed.grad[~used] == 0).all() and (vq.embed.grad[used] != 0).any()


def test_ema_update_in_training_only():
    vq = VectorQuantizer(4, 16, ema=True, decay=0.8)
    assert not isinstance(vq.embed, nn.Parameter)
    z = torch.randn(50, 4)
    before = [t.clone() for t in (vq.embed, vq.cluster_size, vq.embed_sum)]
    vq.eval()
    vq(z)
    assert torch.equal(vq.embed, before[0])
    vq.train()
    out = vq(z)
    want = codebook_ema_update_ref(*before, z, out.indices, 0.8, 1e-5)
    torch.testing.assert_close(vq.embed, want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vq.cluster_size, want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, 0.25 * ((z - out.quantized) ** 2).mean())


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_revival(ema):
    vq = VectorQuantizer(4, 8, ema=ema, decay=0.5, dead_code_threshold=0.6)
    with torch.no_grad():
        vq.embed[4:] = 1000.0  # far away: never chosen, so their usage decays below the threshold
        if ema:
            vq.embed_sum[4:] = 1000.0 * vq.cluster_size[4:, None]
    z = torch.randn(64, 4)
    vq.train()
    vq(z)  # usage of the far codes: 1 -> 0.5 < 0.6
    assert (vq.embed[4:] > 100).all()  # not yet revived
    vq(z)  # re-seeded from this batch at the start of the forward
    assert (vq.embed.abs() < 100).all()
    lo, hi = z.min(0).values, z.max(0).values
    assert ((vq.embed[4:] >= lo) & (vq.embed[4:] <= hi)).all()  # batch rows (EMA: averages of them)
    assert (vq.usage[4:] > 0.6).all() or ema


@pytest.mark.parametrize("ema", [False, True])
def test_revival_with_projector_or_ema_trains(ema):
    """Revival runs before the lookup: it never modifies a tensor that autograd saved (the projector's input)."""
    vq = VectorQuantizer(4, 8, ema=ema, decay=0.5, dead_code_threshold=0.6,
                         projector=None if ema else nn.Linear(4, 4))
    with torch.no_grad():
        vq.embed[4:] = 1000.0
        if ema:
            vq.embed_sum[4:] = 1000.0 * vq.cluster_size[4:, None]
    params = [p for p in vq.parameters() if p.requires_grad]
    for _ in range(3):
        out = vq(torch.randn(64, 4))
        if params:
            out.loss.backward()
    assert (vq.embed.abs() < 100).all()


def test_projector_gets_gradients():
    proj = nn.Linear(6, 6)
    vq = VectorQuantizer(6, 20, projector=proj)
    z = torch.randn(30, 6, requires_grad=True)
    out = vq(z)
    ref_idx, _, _ = codebook_lookup_ref(z.detach(), proj(vq.embed).detach())
    assert torch.equal(out.indices, ref_idx)
    out.loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0 and vq.embed.grad is not None


def test_training_reduces_quantisation_error():
    torch.manual_seed(0)
    centers = torch.randn(8, 5) * 3
    data = centers[torch.randint(0, 8, (512,))] + 0.1 * torch.randn(512, 5)
    vq = VectorQuantizer(5, 16, dead_code_threshold=0.01)
    opt = torch.optim.Adam(vq.parameters(), lr=0.1)
    first = None
    for _ in range(60):
        out = vq(data)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert out.loss.item() < 0.2 * first
    assert sparseops.codebook_utilisation(sparseops.codebook_usage(vq(data).indices, 16)).item() >= 0.5


def test_compiles_eval():
    vq = VectorQuantizer(8, 64).eval()
    z = torch.randn(40, 8)
    got = torch.compile(vq, fullgraph=True)(z)
    want = vq(z)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.quantized, want.quantized)


def test_bad_arguments():
    with pytest.raises(ValueError, match="VectorQuantizer: expected metric"):
        VectorQuantizer(4, 8, metric="dot")
    with pytest.raises(ValueError, match="VectorQuantizer: expected ema=False when a projector is given"):
        VectorQuantizer(4, 8, ema=True, projector=nn.Identity())
    with pytest.raises(ValueError, match=r"VectorQuantizer: expected dim >= 1 and codebook_size >= 1 \(got 4, 0\)"):
        VectorQuantizer(4, 0)
    with pytest.raises(ValueError, match=r"VectorQuantizer: expected z.size\(-1\) == dim=4 \(got 5\)"):
        VectorQuantizer(4, 8)(torch.randn(3, 5))
