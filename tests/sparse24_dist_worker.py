"""One rank of the 2:4 distributed checks (tests/test_sparse24_distributed.py): DDP and FSDP2 training of
NMSparseLinear / SparseLinear24 models, and torch.distributed.checkpoint save/load of a sparsified model.

Run as ``python sparse24_dist_worker.py RANK WORLD INIT_FILE OUT_FILE CKPT_DIR DEVICE`` (DEVICE "cpu" uses
gloo, "cuda" uses NCCL on cuda:RANK); every case's results (or its traceback) go to OUT_FILE with
torch.save. The models, data and training loop are defined here once and imported by the test, which
runs the same steps in a single process on the whole batch and compares.
"""
from __future__ import annotations

import sys
import traceback
from datetime import timedelta

import torch
import torch.nn.functional as F
from torch import nn

from sparseops import GradientFlowSchedule
from sparseops.nn import NMSparseLinear, SparseLinear24, set_gradient_flow_step, sparsify_

STEPS = 3
BATCH = 8  # split in equal halves over 2 ranks


def batch(device, rank: int = 0, world: int = 1):
    """The global batch (x [8, 16], target [8, 8]), or this rank's equal share of it."""
    gen = torch.Generator().manual_seed(123)
    x, y = torch.randn(BATCH, 16, generator=gen), torch.randn(BATCH, 8, generator=gen)
    share = BATCH // world
    return x[rank * share:(rank + 1) * share].to(device), y[rank * share:(rank + 1) * share].to(device)


def nm_model(seed: int, device) -> nn.Sequential:
    """Two SR-STE layers; a gradient-flow schedule (set_step each step) and a large decay, so that the
    pruned weights' gradients matter."""
    torch.manual_seed(seed)
    return nn.Sequential(NMSparseLinear(16, 32, schedule=GradientFlowSchedule(start_step=0, end_step=STEPS)),
                         nn.ReLU(), NMSparseLinear(32, 8, decay=0.05)).to(device)


def sparse24_model(seed: int, device) -> nn.Sequential:
    """A trainable nn.Linear feeding two SparseLinear24 layers (W buffers, bias trainable): a transposable
    one (values_t/meta_t, grad_x on the 2:4 kernel) and a magnitude one."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    sparsify_(model, lambda module, fqn: fqn == "2", method="transposable")
    sparsify_(model, lambda module, fqn: fqn == "4")
    return model.to(device)


def make_optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)


def train(model: nn.Module, schedule_owner: nn.Module, opt, x, y, global_loss=lambda loss: loss) -> list[float]:
    """STEPS steps of MSE training; returns each step's loss over the global batch. Gradients of the last
    step stay in ``.grad`` (zeroed before each backward, not after the step)."""
    losses = []
    for step in range(STEPS):
        set_gradient_flow_step(schedule_owner, step)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(global_loss(loss.detach())))
    return losses


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {fqn: m.mask() for fqn, m in model.named_modules() if isinstance(m, NMSparseLinear)}


def dcp_model(seed: int, device) -> nn.Sequential:
    return sparse24_model(seed, device)


# ---------------------------------------------------------------------------------------------
# The distributed side of each case


def _plain(t):
    """A CPU copy of a tensor or DTensor (whole tensor: a collective for a DTensor)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: _plain(v) for k, v in model.state_dict().items()}


def _mean_over_ranks(loss):
    import torch.distributed as dist

    loss = loss.clone()
    dist.all_reduce(loss)
    return loss / dist.get_world_size()


def case_ddp_nm(rank, device, opt_name):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = nm_model(seed=rank, device=device)  # rank 1 starts elsewhere: DDP must broadcast rank 0's state
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    x, y = batch(device, rank, 2)
    losses = train(ddp, model, make_optimizer(opt_name, ddp.parameters()), x, y, _mean_over_ranks)
    return {"state": _state(model), "masks": {k: _plain(v) for k, v in masks(model).items()}, "losses": losses}


def case_ddp_sparse24(rank, device):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = sparse24_model(seed=rank, device=device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    x, y = batch(device, rank, 2)
    losses = train(ddp, model, make_optimizer("sgd", ddp.parameters()), x, y, _mean_over_ranks)
    grads = {k: _plain(p.grad) for k, p in model.named_parameters()}
    return {"state": _state(model), "grads": grads, "losses": losses}


def case_fsdp2_nm(rank, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    mesh = init_device_mesh(device.type, (2,))
    model = nm_model(seed=0, device=device)  # fully_shard does not broadcast: every rank starts alike
    for layer in model:
        if isinstance(layer, NMSparseLinear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    x, y = batch(device, rank, 2)
    losses = train(model, model, make_optimizer("adamw", model.parameters()), x, y, _mean_over_ranks)
    first = model[0]
    shard_mask = first.mask()
    out = {"state": _state(model), "losses": losses,
           "weight_is_dtensor": isinstance(first.weight, DTensor),
           "mask_placements": str(tuple(shard_mask.placements)) if isinstance(shard_mask, DTensor) else None,
           "masks": {k: _plain(v) for k, v in masks(model).items()},
           "sparse_weight": _plain(first.sparse_weight()),
           "inference_dense": first.to_inference().to_dense().cpu()}
    # A weight split along its last dim (the N:M groups) is refused, not silently masked per shard.
    bad = NMSparseLinear(16, 4).to(device)
    bad.weight = nn.Parameter(distribute_tensor(bad.weight.detach(), mesh, [Shard(1)]))
    try:
        bad.mask()
    except ValueError as exc:
        out["last_dim_error"] = str(exc)
    return out


def case_dcp(rank, device, ckpt_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    x, _ = batch(device)
    saved = dcp_model(seed=0, device=device)
    dcp.save(get_model_state_dict(saved), checkpoint_id=f"{ckpt_dir}/good")
    fresh = dcp_model(seed=1, device=device)
    state = get_model_state_dict(fresh)
    dcp.load(state, checkpoint_id=f"{ckpt_dir}/good")
    set_model_state_dict(fresh, state)
    out = {"loaded_y": fresh(x).detach().cpu(), "loaded_state": _state(fresh)}

    # A checkpoint whose meta holds an invalid 2:4 code (0xF: indices 3, 3) in the transposable layer.
    saved.get_submodule("2").meta[1, 0] = 0xFF
    dcp.save(get_model_state_dict(saved), checkpoint_id=f"{ckpt_dir}/corrupt")
    # (a) The recommended path as is: dcp.load writes into the state dict's tensors, which
    # get_model_state_dict returns as the module's own buffers; set_model_state_dict then runs
    # load_state_dict, whose check refuses the metadata -- after dcp.load has already written it.
    fresh = dcp_model(seed=1, device=device)
    state = get_model_state_dict(fresh)
    dcp.load(state, checkpoint_id=f"{ckpt_dir}/corrupt")
    out["aliased_meta_after_dcp_load"] = _plain(fresh.get_submodule("2").meta)
    try:
        set_model_state_dict(fresh, state)
    except RuntimeError as exc:
        out["corrupt_error"] = str(exc)
    try:  # the CPU kernels check the metadata they read on every call; CUDA trusts it
        fresh(x)
    except RuntimeError as exc:
        out["forward_error_after_refusal"] = str(exc)
    # (b) Loading into copies of the state dict keeps the refused layer unchanged (the other modules load:
    # load_state_dict is not atomic across modules).
    fresh = dcp_model(seed=1, device=device)
    before = _state(fresh)
    state = {k: v.clone() for k, v in get_model_state_dict(fresh).items()}
    dcp.load(state, checkpoint_id=f"{ckpt_dir}/corrupt")
    try:
        set_model_state_dict(fresh, state)
    except RuntimeError as exc:
        out["corrupt_error_copies"] = str(exc)
    out["changed_after_refusal"] = sorted(k for k, v in _state(fresh).items() if not torch.equal(before[k], v))
    return out


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    rank, world, init_file, out_file, ckpt_dir, device_type = argv
    rank, world = int(rank), int(world)
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device(device_type)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="file://" + init_file,
                            rank=rank, world_size=world, timeout=timedelta(seconds=120))
    cases = {"ddp_nm_sgd": lambda: case_ddp_nm(rank, device, "sgd"),
             "ddp_nm_adamw": lambda: case_ddp_nm(rank, device, "adamw"),
             "ddp_sparse24": lambda: case_ddp_sparse24(rank, device),
             "fsdp2_nm": lambda: case_fsdp2_nm(rank, device),
             "dcp": lambda: case_dcp(rank, device, ckpt_dir)}
    results = {}
    for name, run in cases.items():
        try:
            results[name] = run()
        except Exception:  # reported by the test of this case; the other cases still run
            results[name] = {"traceback": traceback.format_exc()}
        dist.barrier()
    torch.save(results, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
