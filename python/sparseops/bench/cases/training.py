"""N:M training cases: one SR-STE step (masked forward + straight-through backward) against the usual
plain-torch autograd.Function, and the transposable 2:4 mask against the exhaustive 90-pattern search
written with torch ops (sparseops.reference)."""
from __future__ import annotations

import torch
from torch import Tensor

import sparseops
from sparseops.bench import Case, register
from sparseops.bench.cases.sparse24 import topk_mask
from sparseops.reference import transposable_mask_24_ref

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_DECAY = 2e-4


class TorchSRSTE(torch.autograd.Function):
    """SR-STE as it is commonly written in plain torch: a topk mask per group, ``w * mask`` forward,
    ``grad + decay * (1 - mask) * w`` backward."""

    @staticmethod
    def forward(ctx, w: Tensor, n: int, m: int, decay: float) -> Tensor:
        mask = topk_mask(w.detach(), n, m)
        ctx.save_for_backward(w, mask)
        ctx.decay = decay
        return w * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, mask = ctx.saved_tensors
        return grad + ctx.decay * (~mask) * w, None, None, None


def _srste_step(fn, w: Tensor, grad: Tensor):
    def step() -> None:
        w.grad = None
        fn(w).backward(grad)

    return step


def _srste_case(shape: tuple[int, int], dtype_name: str, device: str) -> Case:
    dtype = _DTYPES[dtype_name]
    w = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    elem = w.element_size()
    return Case(
        label=f"2:4 {dtype_name} {shape[0]}x{shape[1]} forward+backward",
        params={"dtype": dtype_name, "shape": list(shape), "n": 2, "m": 4, "decay": _DECAY},
        impls={
            "sparseops": _srste_step(lambda t: sparseops.nm_srste(t, 2, 4, decay=_DECAY), w, grad),
            "torch_srste": _srste_step(lambda t: TorchSRSTE.apply(t, 2, 4, _DECAY), w, grad),
        },
        baseline="torch_srste",
        # forward: read w, write out + a bool mask; backward: read grad, w, mask, write grad_w
        bytes=w.numel() * (5 * elem + 2),
    )


@register("sparse24", "nm_srste")
def nm_srste_cases(device: str, quick: bool):
    for shape in [(1024, 1024)] if quick else [(4096, 4096), (11008, 4096)]:
        for dtype_name in _DTYPES:
            yield _srste_case(shape, dtype_name, device)


def _transposable_case(n: int, dtype_name: str, device: str) -> Case:
    w = torch.randn(n, n, device=device, dtype=_DTYPES[dtype_name])
    return Case(
        label=f"{dtype_name} {n}x{n}",
        params={"dtype": dtype_name, "shape": [n, n]},
        impls={
            "sparseops": lambda: sparseops.transposable_mask_24(w),
            "reference": lambda: transposable_mask_24_ref(w),
        },
        baseline="reference",
        bytes=w.nbytes + w.numel(),  # read w, write a bool mask
    )


@register("sparse24", "transposable_mask_24")
def transposable_mask_24_cases(device: str, quick: bool):
    # The reference scores all 90 patterns of every 4x4 block at once (~360 B per element of w in
    # temporaries): 4096x4096 is its largest comfortable size.
    for dtype_name in _DTYPES:
        yield _transposable_case(1024 if quick else 4096, dtype_name, device)
