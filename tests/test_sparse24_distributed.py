"""2:4 / N:M layers under torch.distributed, 2 processes (gloo on CPU here; SPARSEOPS_DIST_DEVICE=cuda runs
the same on NCCL with 2 GPUs), each on half of the batch, against one process on the whole batch:

- DDP: NMSparseLinear (SR-STE, SGD and AdamW) and SparseLinear24 (W buffers broadcast, bias trained):
  weights, masks, buffers, gradients and losses after the steps.
- FSDP2 ``fully_shard`` of NMSparseLinear layers: the same training, and mask/sparse_weight/to_inference
  on the sharded (DTensor) weight.
- torch.distributed.checkpoint via get_model_state_dict/set_model_state_dict of a sparsified model
  (incl. a transposable layer): identical outputs, and corrupt metadata refused on load.

One pair of worker processes (tests/sparse24_dist_worker.py) runs every case once.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import sparseops
from sparseops import nm_mask
from sparseops.nn import SparseLinear24

import sparse24_dist_worker as w

DEVICE = os.environ.get("SPARSEOPS_DIST_DEVICE", "cpu")  # "cuda": NCCL on cuda:0 and cuda:1


def _why_unavailable() -> str | None:
    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if DEVICE == "cuda":
        if not (sparseops.cuda_compiled() and dist.is_nccl_available() and torch.cuda.device_count() >= 2):
            return "SPARSEOPS_DIST_DEVICE=cuda needs a CUDA build of sparseops, NCCL and 2 GPUs"
    elif not dist.is_gloo_available():
        return "torch.distributed has no gloo backend in this torch build"
    return None


pytestmark = pytest.mark.skipif(_why_unavailable() is not None, reason=str(_why_unavailable()))

# fp32 sums reduced in another order (all-reduce of two half-batch gradients vs one whole-batch backward).
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    """Both ranks' results of every case, from one pair of processes."""
    tmp = tmp_path_factory.mktemp("dist24")
    worker = Path(__file__).with_name("sparse24_dist_worker.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # sparseops as this process imports it
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", str(tmp / "init"), str(tmp / f"{r}.pt"),
                               str(tmp / "ckpt"), DEVICE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return [torch.load(tmp / f"{r}.pt", weights_only=False) for r in range(2)]


def _case(results, name) -> list[dict]:
    for rank, res in enumerate(results):
        assert "traceback" not in res[name], f"rank {rank}, case {name}:\n{res[name]['traceback']}"
    return [res[name] for res in results]


def _device():
    return torch.device("cuda", 0) if DEVICE == "cuda" else torch.device("cpu")


def _single_nm(opt_name: str):
    model = w.nm_model(seed=0, device=_device())
    x, y = w.batch(_device())
    losses = w.train(model, model, w.make_optimizer(opt_name, model.parameters()), x, y)
    return model, losses


def _assert_state_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], v.detach().cpu(), **TOL, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(got[k], v.cpu()), k


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_ddp_nm_sparse_linear_matches_single_process(results, opt_name):
    model, losses = _single_nm(opt_name)
    for res in _case(results, f"ddp_nm_{opt_name}"):
        # Rank 1 started from another seed: DDP broadcast rank 0's weights and buffers (step too).
        _assert_state_close(res["state"], model.state_dict())
        assert int(res["state"]["0.step"]) == w.STEPS - 1
        for fqn, mask in w.masks(model).items():
            assert torch.equal(res["masks"][fqn], mask.cpu()), fqn
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(losses), **TOL)
    # The masks moved during training (the check is not about an untrained model).
    assert not torch.equal(w.masks(model)["0"], w.masks(w.nm_model(seed=0, device=_device()))["0"])


def test_ddp_sparse_linear24_matches_single_process(results):
    model = w.sparse24_model(seed=0, device=_device())
    x, y = w.batch(_device())
    losses = w.train(model, model, w.make_optimizer("sgd", model.parameters()), x, y)
    for res in _case(results, "ddp_sparse24"):
        # values/meta/values_t/meta_t: rank 0's, broadcast at construction (rank 1 pruned another model),
        # and untouched by training; the biases and the dense layer trained on averaged gradients.
        _assert_state_close(res["state"], model.state_dict())
        assert {"2.values_t", "2.meta_t"} <= res["state"].keys()
        _assert_state_close(res["grads"], {k: p.grad for k, p in model.named_parameters()})
        assert set(res["grads"]) == {"0.weight", "0.bias", "2.bias", "4.bias"}
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(losses), **TOL)


def test_fsdp2_nm_sparse_linear_matches_single_process(results):
    model, losses = _single_nm("adamw")
    for res in _case(results, "fsdp2_nm"):
        assert res["weight_is_dtensor"]
        _assert_state_close(res["state"], model.state_dict())
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(losses), **TOL)


def test_fsdp2_mask_of_sharded_weight(results):
    model, _ = _single_nm("adamw")
    for res in _case(results, "fsdp2_nm"):
        # mask() of the Shard(0) DTensor weight: a DTensor placed like it, whose whole tensor is the 2:4 mask
        # of the whole weight (and the single process's).
        assert res["mask_placements"] == "(Shard(dim=0),)"
        for fqn, mask in w.masks(model).items():
            assert torch.equal(res["masks"][fqn], mask.cpu()), fqn
            assert torch.equal(res["masks"][fqn], nm_mask(res["state"][f"{fqn}.weight"], 2, 4)), fqn
        torch.testing.assert_close(res["sparse_weight"], model[0].sparse_weight().detach().cpu(), **TOL)
        assert torch.equal(res["inference_dense"],
                           torch.where(res["masks"]["0"], res["state"]["0.weight"], 0))
        assert res["last_dim_error"] == (
            "NMSparseLinear.mask: expected a DTensor weight whose last dim (the N:M groups) is not split "
            "(Replicate or Shard(d) with d != 1) (got placements (Shard(dim=1),))")


def test_dcp_save_load_sparsified_model(results):
    saved = w.dcp_model(seed=0, device=_device())
    x, _ = w.batch(_device())
    for res in _case(results, "dcp"):
        _assert_state_close(res["loaded_state"], saved.state_dict())
        assert {"2.values_t", "2.meta_t", "4.meta", "0.weight"} <= res["loaded_state"].keys()
        assert torch.equal(res["loaded_y"], saved(x).detach().cpu())
    # The seed-1 model it was loaded into differed.
    assert not torch.equal(w.dcp_model(seed=1, device=_device())(x), saved(x))


def test_dcp_refuses_corrupt_meta(results):
    want = ("2.meta: invalid 2:4 metadata code 0xf at row 1, group 0 (each 4-bit code must name two distinct kept "
            "indices, the first below the second); the checkpoint is corrupt or not in the packed layout")
    for res in _case(results, "dcp"):
        # set_model_state_dict goes through SparseLinear24._load_from_state_dict (load_state_dict) and refuses.
        assert want in res["corrupt_error"]
        # ...but dcp.load had already written the corrupt codes into the model's own buffers (the state
        # dict from get_model_state_dict aliases them): the layer is not left unchanged on this path.
        assert int(res["aliased_meta_after_dcp_load"][1, 0]) == 0xFF
        if DEVICE == "cpu":  # where the forward would read them, the CPU kernels refuse them
            assert ("sparse24_linear: meta holds an invalid 2:4 code at row 1, group 0"
                    in res["forward_error_after_refusal"])
        # Loading into copies keeps the refused layer unchanged; the other layers load (load_state_dict
        # is not atomic across modules).
        assert want in res["corrupt_error_copies"]
        assert res["changed_after_refusal"] == ["0.bias", "0.weight", "4.bias", "4.meta", "4.values"]
    # The same checkpoint content through plain load_state_dict: the same refusal (one check, one message).
    layer = w.dcp_model(seed=0, device=_device()).get_submodule("2")
    state = layer.state_dict()
    state["meta"][1, 0] = 0xFF
    with pytest.raises(RuntimeError, match=r"meta: invalid 2:4 metadata code 0xf at row 1, group 0"):
        SparseLinear24(32, 16).load_state_dict(state)
