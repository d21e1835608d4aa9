"""sparseops.nn: SparseLinear24, sparsify_ (magnitude, Wanda), NMSparseLinear (CPU, small)."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseops.nn import (
    InputNorms,
    NMSparseLinear,
    SparseLinear24,
    collect_input_norms,
    set_gradient_flow_step,
    sparsify_,
)
from sparseops.reference import nm_mask_ref
from sparseops import GradientFlowSchedule


def _tol(dtype):
    return {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]


# ---------------------------------------------------------------------------------------------
# SparseLinear24


@pytest.mark.parametrize("cls", [SparseLinear24, NMSparseLinear])
def test_from_dense_rejects_a_bias_that_is_not_out_features_long(cls):
    linear = nn.Linear(16, 8)
    linear.bias = nn.Parameter(torch.randn(1))  # would broadcast in copy_
    with pytest.raises(ValueError, match=rf"{cls.__name__}.from_dense: expected bias of shape \[8\] \(out_features\) \(got \[1\]\)"):
        cls.from_dense(linear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_from_dense_magnitude(dtype, bias):
    lin = nn.Linear(24, 10, bias=bias).to(dtype)
    sl = SparseLinear24.from_dense(lin)
    w = lin.weight.detach()
    expected_w = torch.where(nm_mask_ref(w, 2, 4), w, 0)
    assert torch.equal(sl.to_dense(), expected_w)
    assert sl.values.dtype == dtype and sl.meta.dtype == torch.uint8
    x = torch.randn(5, 24, dtype=dtype)
    torch.testing.assert_close(sl(x), F.linear(x, expected_w, lin.bias), rtol=_tol(dtype), atol=_tol(dtype))
    # Leading batch dims.
    x3 = torch.randn(2, 3, 24, dtype=dtype)
    torch.testing.assert_close(sl(x3), F.linear(x3, expected_w, lin.bias), rtol=_tol(dtype), atol=_tol(dtype))


def test_from_dense_wanda_uses_activation_norms():
    torch.manual_seed(1)
    lin = nn.Linear(8, 3, bias=True)
    x = torch.randn(50, 8)
    x[:, 0] *= 100.0  # feature 0 carries large activations: Wanda keeps its weights
    sl = SparseLinear24.from_dense(lin, "wanda", calibration=x)
    norms = x.double().square().sum(0).sqrt().float()
    score = lin.weight.detach().abs() * norms
    expected = torch.where(nm_mask_ref(lin.weight.detach(), 2, 4, score=score), lin.weight.detach(), 0)
    assert torch.equal(sl.to_dense(), expected)
    assert (sl.to_dense()[:, 0] != 0).all()
    # InputNorms accumulated in pieces give the same mask.
    stats = InputNorms(8)
    for chunk in x.split(7):
        stats.update(chunk)
    assert torch.equal(SparseLinear24.from_dense(lin, "wanda", calibration=stats).to_dense(), expected)


def test_state_dict_round_trip():
    lin = nn.Linear(32, 12)
    sl = SparseLinear24.from_dense(lin)
    assert set(sl.state_dict()) == {"values", "meta", "bias"}
    buf = io.BytesIO()
    torch.save(sl.state_dict(), buf)
    buf.seek(0)
    fresh = SparseLinear24(32, 12)
    assert not torch.equal(fresh.to_dense(), sl.to_dense())
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(4, 32)
    assert torch.equal(fresh(x), sl(x))
    assert torch.equal(fresh.to_dense(), sl.to_dense())


@pytest.mark.parametrize("name, cols, code", [("meta", 20, 0x00), ("meta", 20, 0xF), ("meta_t", 12, 0x6)])
def test_load_state_dict_refuses_corrupt_meta(name, cols, code):
    """A corrupt code (first kept index not below the second) is a load error naming the key and place,
    and leaves the module unchanged; the padding nibble after an odd group count is not data."""
    layer = SparseLinear24.from_dense(nn.Linear(20, 12), method="transposable")
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd[name][2, 1] = (sd[name][2, 1] & 0xF0) | code  # group 2 of row 2
    fresh = SparseLinear24(20, 12)
    before = fresh.to_dense()
    with pytest.raises(RuntimeError, match=rf"{name}: invalid 2:4 metadata code {code:#x} at row 2, group 2"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh.to_dense(), before)
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["meta"][:, -1] |= 0xF0  # in_features=20: 5 groups, the last byte's high nibble is padding
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.to_dense(), layer.to_dense())


def test_fresh_module_is_2_4_and_dtype_moves():
    sl = SparseLinear24(16, 8)
    w = sl.to_dense()
    assert ((w.reshape(8, 4, 4) != 0).sum(-1) <= 2).all() and (w != 0).any()
    sl = sl.to(torch.bfloat16)
    assert sl.values.dtype == torch.bfloat16 and sl.meta.dtype == torch.uint8
    assert sl(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_sparse_linear_compile():
    torch._dynamo.reset()
    sl = SparseLinear24.from_dense(nn.Linear(16, 8))
    x = torch.randn(6, 16)
    compiled = torch.compile(sl, fullgraph=True)
    torch.testing.assert_close(compiled(x), sl(x))


def test_sparse_linear_bad_args():
    with pytest.raises(ValueError, match=r"SparseLinear24: expected in_features to be a positive multiple of 4 \(got 6\)"):
        SparseLinear24(6, 4)
    with pytest.raises(ValueError, match=r"SparseLinear24: expected layout in .* \(got 'csr'\)"):
        SparseLinear24(8, 4, layout="csr")
    with pytest.raises(ValueError, match=r"SparseLinear24.from_dense: expected in_features to be a multiple of 4 \(got 10\)"):
        SparseLinear24.from_dense(nn.Linear(10, 4))
    with pytest.raises(ValueError, match=r"SparseLinear24.from_dense: expected method in .* \(got 'random'\)"):
        SparseLinear24.from_dense(nn.Linear(8, 4), "random")
    with pytest.raises(ValueError, match=r"SparseLinear24.from_dense: method='wanda' needs calibration"):
        SparseLinear24.from_dense(nn.Linear(8, 4), "wanda")
    with pytest.raises(ValueError, match=r"SparseLinear24.from_dense: expected calibration statistics for 8 input features \(got 12\)"):
        SparseLinear24.from_dense(nn.Linear(8, 4), "wanda", calibration=torch.randn(3, 12))
    with pytest.raises(ValueError, match=r"SparseLinear24: layout='cutlass' needs the module on CUDA"):
        SparseLinear24(32, 32, layout="cutlass").weight24()


# ---------------------------------------------------------------------------------------------
# sparsify_


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.odd = nn.Linear(32, 6)  # in_features % 4 == 0: converted by default
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(6, 3))  # in_features 6: skipped by default

    def forward(self, x):
        return self.head(self.odd(self.up(x)))


def test_sparsify_magnitude_default_filter():
    model = _MLP()
    dense_up = model.up.weight.detach().clone()
    report = sparsify_(model)
    assert report.converted == ["up", "odd"]
    assert report.skipped == {"head.1": "in_features=6 is not a multiple of 4"}
    assert isinstance(model.up, SparseLinear24) and isinstance(model.odd, SparseLinear24)
    assert isinstance(model.head[1], nn.Linear)
    assert torch.equal(model.up.to_dense(), torch.where(nm_mask_ref(dense_up, 2, 4), dense_up, 0))
    assert model(torch.randn(4, 16)).shape == (4, 3)


def test_sparsify_filter_fn_and_wanda_with_list_and_callable():
    torch.manual_seed(0)
    model = _MLP()
    reference = _MLP()
    reference.load_state_dict(model.state_dict())
    batches = [torch.randn(8, 16) for _ in range(3)]
    seen = []

    def only_up(module, fqn):
        seen.append(fqn)
        return fqn == "up"

    sparsify_(model, only_up, method="wanda", calibration=batches)
    assert isinstance(model.up, SparseLinear24) and isinstance(model.odd, nn.Linear)
    assert "up" in seen and "odd" in seen
    x_all = torch.cat(batches)
    expected = SparseLinear24.from_dense(reference.up, "wanda", calibration=x_all)
    assert torch.equal(model.up.to_dense(), expected.to_dense())

    # A callable calibration; statistics for later layers come from the dense model's activations.
    model2 = _MLP()
    model2.load_state_dict(reference.state_dict())
    sparsify_(model2, method="wanda", calibration=lambda m: [m(b) for b in batches])
    with torch.no_grad():
        h = reference.up(x_all)
    expected_odd = SparseLinear24.from_dense(reference.odd, "wanda", calibration=h)
    assert torch.equal(model2.odd.to_dense(), expected_odd.to_dense())


def test_sparsify_reports_and_logs_what_it_skipped(caplog):
    def only_odd(module, fqn):
        return fqn != "up"

    with caplog.at_level("INFO", logger="sparseops"):
        report = sparsify_(_MLP(), only_odd, method="transposable")
    assert report.converted == []
    assert report.skipped == {
        "up": "excluded by filter_fn",
        "odd": "out_features=6 is not a multiple of 4 (method='transposable')",
        "head.1": "in_features=6 is not a multiple of 4",
    }
    assert "skipped odd: out_features=6 is not a multiple of 4" in caplog.text


def test_sparsify_error_names_the_layer():
    model = _MLP().double()
    with pytest.raises(TypeError, match=r"^sparsify_: layer up: "):
        sparsify_(model)


def test_collect_input_norms_restores_mode_and_checks_coverage():
    model = _MLP().train()
    stats = collect_input_norms(model, [torch.randn(2, 16)])
    assert set(stats) == {"up", "odd"} and model.training
    with pytest.raises(ValueError, match=r"sparsify_: calibration never ran the layer 'up'"):
        collect_input_norms(model, [])


def test_sparsify_bad_args():
    with pytest.raises(ValueError, match=r"sparsify_: method='wanda' needs calibration"):
        sparsify_(_MLP(), method="wanda")
    with pytest.raises(ValueError, match=r"sparsify_: expected method in .* \(got 'sparsegpt'\)"):
        sparsify_(_MLP(), method="sparsegpt")
    with pytest.raises(TypeError, match=r"sparsify_: expected calibration to be a callable taking the model, or an iterable"):
        sparsify_(_MLP(), method="wanda", calibration=torch.randn(4, 16))


# ---------------------------------------------------------------------------------------------
# NMSparseLinear


def test_nm_sparse_linear_forward_backward():
    layer = NMSparseLinear(16, 8, decay=0.01)
    x = torch.randn(5, 16)
    y = layer(x)
    w = layer.weight.detach()
    mask = nm_mask_ref(w, 2, 4)
    torch.testing.assert_close(y, F.linear(x, torch.where(mask, w, 0), layer.bias))
    g = torch.randn_like(y)
    y.backward(g)
    grad_ws = g.t() @ x
    expected = torch.where(mask, grad_ws, grad_ws + 0.01 * w)
    torch.testing.assert_close(layer.weight.grad, expected)
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


def test_nm_sparse_linear_schedule_and_state():
    sched = GradientFlowSchedule(start_step=0, end_step=10, kind="linear")
    layer = NMSparseLinear(8, 4, n=1, m=4, schedule=sched)
    layer.set_step(5)
    assert layer.pruned_grad_scale.item() == pytest.approx(0.5)
    model = nn.Sequential(layer)
    set_gradient_flow_step(model, 10)
    assert layer.pruned_grad_scale.item() == 0.0
    assert set(layer.state_dict()) == {"weight", "bias", "step"}
    fresh = NMSparseLinear(8, 4, n=1, m=4, schedule=sched)
    fresh.load_state_dict(layer.state_dict())
    assert int(fresh.step) == 10 and fresh.pruned_grad_scale.item() == 0.0
    # pruned_grad_scale = 0: pruned weights get only the decay term.
    x = torch.randn(3, 8)
    fresh(x).sum().backward()
    mask = fresh.mask()
    assert (mask.reshape(-1, 4).sum(-1) == 1).all()
    torch.testing.assert_close(fresh.weight.grad[~mask], 2e-4 * fresh.weight.detach()[~mask])
    # dtype moves keep the scale in float32.
    assert fresh.to(torch.bfloat16).pruned_grad_scale.dtype == torch.float32


def test_nm_sparse_linear_to_inference_and_from_dense():
    lin = nn.Linear(16, 6)
    layer = NMSparseLinear.from_dense(lin)
    inf = layer.to_inference()
    x = torch.randn(4, 16)
    torch.testing.assert_close(inf(x), layer(x))
    assert torch.equal(inf.to_dense(), torch.where(layer.mask(), layer.weight.detach(), 0))
    with pytest.raises(ValueError, match=r"NMSparseLinear.to_inference: SparseLinear24 stores 2:4 weights \(this layer is 1:4\)"):
        NMSparseLinear(8, 4, n=1, m=4).to_inference()
    with pytest.raises(ValueError, match=r"NMSparseLinear: expected in_features to be a positive multiple of m=8 \(got 12\)"):
        NMSparseLinear(12, 4, n=4, m=8)


def test_nm_sparse_linear_compile_training_step():
    torch._dynamo.reset()
    torch.manual_seed(0)
    sched = GradientFlowSchedule(start_step=0, end_step=4)
    layer = NMSparseLinear(16, 8, schedule=sched)
    twin = NMSparseLinear(16, 8, schedule=sched)
    twin.load_state_dict(layer.state_dict())
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(6, 16)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for step in range(3):
        for mod in (layer, twin):
            mod.set_step(step)
            mod.weight.grad = None
        compiled(x).square().sum().backward()
        twin(x).square().sum().backward()
        torch.testing.assert_close(layer.weight.grad, twin.weight.grad)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1


def test_nm_sparse_linear_learns_a_sparse_target():
    # A 2:4 sparse teacher: SR-STE training recovers its support and fits it.
    torch.manual_seed(0)
    teacher = torch.randn(8, 16) * nm_mask_ref(torch.randn(8, 16), 2, 4)
    layer = NMSparseLinear(16, 8, bias=False, decay=2e-4)
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    x = torch.randn(256, 16)
    y = x @ teacher.t()
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
    assert F.mse_loss(layer(x), y).item() < 1e-3
    assert torch.equal(layer.mask(), teacher != 0)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("layout", ["packed", "cutlass", "cusparselt"])
def test_sparse_linear_cuda_layouts(layout):
    lin = nn.Linear(128, 64).half()
    sl = SparseLinear24.from_dense(lin, layout=layout).cuda()
    x = torch.randn(32, 128, dtype=torch.float16, device="cuda")
    expected = F.linear(x.float(), sl.to_dense().float(), sl.bias.float()).half()
    torch.testing.assert_close(sl(x), expected, rtol=2e-2, atol=2e-2)
    assert sl.weight24().layout == layout
    # state_dict holds the packed layout only; a fresh module rebuilds its layout on load.
    fresh = SparseLinear24(128, 64, dtype=torch.float16, device="cuda", layout=layout)
    fresh.load_state_dict(sl.state_dict())
    # Bit for bit, except across two cuSPARSELt plans (the library does not promise the same kernel).
    exact = layout != "cusparselt"
    torch.testing.assert_close(fresh(x), sl(x), rtol=0 if exact else 1e-3, atol=0 if exact else 1e-3)
