"""N:M sparse training: SR-STE masking with its straight-through backward, transposable 2:4 masks,
and a gradient-flow schedule.

Python face of the ``sparseops::nm_srste``, ``nm_srste_backward`` and ``transposable_mask_24`` ops:
typed wrappers, fake kernels and autograd, side by side. Kernels: ``csrc/sparse24/srste_*`` and
``csrc/sparse24/transposable_*``; references: ``sparseops.reference.training``.

Method (SR-STE, Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From
Scratch"): the forward uses ``w * mask`` with ``mask`` the N:M magnitude mask of the current dense
weight; the backward passes the gradient straight through to every weight and adds a decay
``decay * w`` on the pruned ones, which pulls them towards zero so that the mask settles::

    grad_w = grad * (mask + pruned_grad_scale * (1 - mask)) + decay * (1 - mask) * w

``pruned_grad_scale = 1`` is SR-STE (``decay = 0`` plain STE). Decaying ``pruned_grad_scale`` from 1 to
0 during training (:class:`GradientFlowSchedule`) gives the decaying gradient flow of Bambhaniya et
al. 2024, "Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)

_ops = torch.ops.sparseops

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["GradientFlowSchedule", "nm_srste", "transposable_mask_24"]


# ---------------------------------------------------------------------------------------------
# nm_srste
#
# How decay and pruned_grad_scale reach the backward: they are arguments of the forward op's schema
# (``nm_srste(Tensor w, int n, int m, float decay, Tensor? pruned_grad_scale)``) that the forward kernels
# only validate, and setup_context hands them to the backward. The alternative -- a Python
# torch.library.custom_op wrapping the two C++ ops -- would add a second, Python-defined op for the same
# thing and an extra dispatch layer; with the arguments in the schema there is one op, one fake kernel
# and one autograd formula, opcheck covers it as is, and torch.compile traces it without graph breaks.
#
# pruned_grad_scale is a one-element float32 tensor in the schema, not a float: torch.compile turns a
# Python float argument of a custom op into a guard (it recompiles for every new value, so a schedule
# changing it each step would recompile each step), while a tensor updated in place (a module buffer,
# see sparseops.nn.NMSparseLinear) is a graph input like any other. The kernels read it themselves
# (the CUDA kernel from device memory), so there is no host sync either. A Python float is accepted too
# and wrapped here (1.0 becomes None, the schema default). decay stays a float: it is a constant.


ScaleLike = Union[float, Tensor]


def _scale_arg(pruned_grad_scale: ScaleLike) -> Optional[Tensor]:
    if isinstance(pruned_grad_scale, Tensor):
        return pruned_grad_scale
    if not isinstance(pruned_grad_scale, (int, float)):
        raise TypeError(f"nm_srste: expected pruned_grad_scale to be a float or a one-element float32 tensor "
                        f"(got {type(pruned_grad_scale).__name__})")
    if pruned_grad_scale == 1.0:
        return None
    return torch.tensor(float(pruned_grad_scale), dtype=torch.float32)


def nm_srste(
    w: Tensor,
    n: int = 2,
    m: int = 4,
    *,
    decay: float = 2e-4,
    pruned_grad_scale: ScaleLike = 1.0,
) -> Tensor:
    """N:M-masked weight for sparse training with the SR-STE gradient.

    Forward: ``w`` where the N:M magnitude mask keeps it, 0 elsewhere. The mask keeps, in every group of
    ``m`` consecutive elements of the last dim, the ``n`` largest ``|w|`` (ties to the lower index: the
    rule of :func:`sparseops.nm_mask`), except that a NaN ranks as the largest magnitude instead of
    raising, so a NaN stays in the output (and the loss) and no device sync is needed per step.

    Backward (w.r.t. ``w``): ``grad`` on kept elements, ``pruned_grad_scale * grad + decay * w`` on pruned
    ones (the formula in the module docstring, evaluated as a select).

    Args:
        w: dense weight, any shape with ``w.shape[-1] % m == 0``; float32/float16/bfloat16; CPU or CUDA.
        n, m: ``1 <= n < m <= 16``.
        decay: SR-STE's sparse-refined decay (>= 0, finite); 0 gives plain STE.
        pruned_grad_scale: gradient fraction reaching pruned weights (>= 0, finite): a float, or a
            one-element float32 tensor on the CPU or on ``w``'s device. Under ``torch.compile`` pass a
            tensor that you update in place (e.g. from a :class:`GradientFlowSchedule`) when the value
            changes during training: a changing Python float recompiles for every new value. A tensor on
            the GPU is read by the kernel (no sync) and is not validated.

    Returns:
        Tensor of ``w``'s shape and dtype (contiguous).

    Extra memory: the forward saves ``w`` and a bool mask (1 byte per element) for the backward; a
    contiguous copy of ``w`` when it is not contiguous. Compute in float32 for float16/bfloat16.
    """
    out, _ = _ops.nm_srste(w, n, m, float(decay), _scale_arg(pruned_grad_scale))
    return out


def _check_scale_fake(op: str, scale: Optional[Tensor], w: Tensor) -> None:
    if scale is None:
        return
    torch._check(scale.dtype == torch.float32, lambda: f"{op}: expected pruned_grad_scale to be float32 (got {scale.dtype})")
    torch._check(scale.numel() == 1 and scale.dim() <= 1,
                 lambda: f"{op}: expected pruned_grad_scale to be a one-element tensor (got shape {tuple(scale.shape)})")
    torch._check(scale.device.type == "cpu" or scale.device == w.device,
                 lambda: f"{op}: expected pruned_grad_scale on the CPU or on w's device ({w.device}), got {scale.device}")


@torch.library.register_fake("sparseops::nm_srste")
def _nm_srste_fake(w: Tensor, n: int = 2, m: int = 4, decay: float = 2e-4, pruned_grad_scale: Optional[Tensor] = None):
    op = "nm_srste"
    torch._check(w.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected w float32/float16/bfloat16 (got {w.dtype})")
    torch._check(2 <= m <= 16, lambda: f"{op}: expected 2 <= m <= 16 (got m={m})")
    torch._check(1 <= n < m, lambda: f"{op}: expected 1 <= n < m (got n={n}, m={m})")
    torch._check(w.dim() >= 1, lambda: f"{op}: expected w to have at least 1 dimension (got a 0-D tensor)")
    torch._check(w.shape[-1] % m == 0, lambda: f"{op}: expected w.size(-1) to be divisible by m={m} (got {w.shape[-1]})")
    torch._check(0 <= decay < math.inf, lambda: f"{op}: expected decay to be finite and >= 0 (got {decay})")
    _check_scale_fake(op, pruned_grad_scale, w)
    return w.new_empty(w.shape), w.new_empty(w.shape, dtype=torch.bool)


@torch.library.register_fake("sparseops::nm_srste_backward")
def _nm_srste_backward_fake(grad: Tensor, w: Tensor, mask: Tensor, decay: float,
                            pruned_grad_scale: Optional[Tensor] = None) -> Tensor:
    op = "nm_srste_backward"
    torch._check(w.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected w float32/float16/bfloat16 (got {w.dtype})")
    torch._check(grad.dtype == w.dtype, lambda: f"{op}: expected grad to have w's dtype {w.dtype} (got {grad.dtype})")
    torch._check(mask.dtype == torch.bool, lambda: f"{op}: expected mask to be bool (got {mask.dtype})")
    torch._check(grad.shape == w.shape, lambda: f"{op}: expected grad.shape == w.shape (got {grad.shape} vs {w.shape})")
    torch._check(mask.shape == w.shape, lambda: f"{op}: expected mask.shape == w.shape (got {mask.shape} vs {w.shape})")
    torch._check(0 <= decay < math.inf, lambda: f"{op}: expected decay to be finite and >= 0 (got {decay})")
    _check_scale_fake(op, pruned_grad_scale, w)
    return w.new_empty(w.shape)


def _nm_srste_setup(ctx, inputs, output) -> None:
    w, _, _, decay, pruned_grad_scale = inputs
    _, mask = output
    ctx.decay = decay
    if ctx.needs_input_grad[0]:
        ctx.save_for_backward(w, mask, pruned_grad_scale)


def _nm_srste_backward(ctx, grad_out: Optional[Tensor], grad_mask: Optional[Tensor]):
    grad_w = None
    if ctx.needs_input_grad[0] and grad_out is not None:
        w, mask, scale = ctx.saved_tensors
        grad_w = _ops.nm_srste_backward(grad_out.contiguous(), w, mask, ctx.decay, scale)
    return grad_w, None, None, None, None


torch.library.register_autograd("sparseops::nm_srste", _nm_srste_backward, setup_context=_nm_srste_setup)


# ---------------------------------------------------------------------------------------------
# transposable_mask_24


def transposable_mask_24(w: Tensor) -> Tensor:
    """Transposable 2:4 mask: 2:4 along the rows of ``w`` and along the rows of ``w.T``.

    For every 4x4 block, picks among the 90 4x4 0/1 patterns with exactly two ones per row and per column
    the one that keeps the largest sum of ``|w|`` (exact search, float32 sums). Ties go to the first
    pattern in the enumeration order documented in ``csrc/common/transposable24.h`` (lexicographic in
    the per-row column pairs {0,1} < {0,2} < {0,3} < {1,2} < {1,3} < {2,3}). Such a mask keeps both
    ``x @ W.T`` (forward) and ``grad @ W`` (backward) 2:4-accelerable.

    Args:
        w: ``[rows, cols]`` with ``rows % 4 == 0`` and ``cols % 4 == 0``; float32/float16/bfloat16; CPU or CUDA.

    Returns:
        A contiguous bool tensor of ``w``'s shape with exactly 2 True per group of 4 along both dims.

    Raises on NaN (magnitudes cannot be ranked). Extra memory: a contiguous copy of ``w`` when it is not
    contiguous; on CUDA the NaN check reads back one int64 (a device sync).
    """
    return _ops.transposable_mask_24(w)


@torch.library.register_fake("sparseops::transposable_mask_24")
def _transposable_mask_24_fake(w: Tensor) -> Tensor:
    op = "transposable_mask_24"
    torch._check(w.dtype in _FLOAT_DTYPES, lambda: f"{op}: expected w float32/float16/bfloat16 (got {w.dtype})")
    torch._check(w.dim() == 2, lambda: f"{op}: expected w to be 2-D (got {w.dim()}-D)")
    torch._check(w.shape[0] % 4 == 0 and w.shape[1] % 4 == 0,
                 lambda: f"{op}: expected both dimensions of w to be divisible by 4 (got shape {tuple(w.shape)})")
    return w.new_empty(w.shape, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# GradientFlowSchedule

_SCHEDULE_KINDS = ("cosine", "linear", "exponential", "constant")


@dataclass(frozen=True)
class GradientFlowSchedule:
    """Maps a training step to ``pruned_grad_scale`` for :func:`nm_srste` (progressive gradient flow).

    ``start`` before ``start_step``, ``end`` from ``end_step`` on, and in between:

    - ``"cosine"``: ``end + (start - end) * (1 + cos(pi * t)) / 2``
    - ``"linear"``: ``start + (end - start) * t``
    - ``"exponential"``: ``start * (end / start) ** t`` (needs ``start > 0`` and ``end > 0``, e.g. 1 -> 1e-3)
    - ``"constant"``: ``start`` always

    with ``t = (step - start_step) / (end_step - start_step)``. The default (cosine from 1 to 0 over
    ``[start_step, end_step)``) lets pruned weights keep learning early on and freezes the mask's
    competitors out gradually.

    Example::

        sched = GradientFlowSchedule(start_step=0, end_step=10_000)
        w_sparse = nm_srste(w, pruned_grad_scale=sched(step))
    """

    start_step: int = 0
    end_step: int = 1
    start: float = 1.0
    end: float = 0.0
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in _SCHEDULE_KINDS:
            raise ValueError(f"GradientFlowSchedule: expected kind in {_SCHEDULE_KINDS} (got {self.kind!r})")
        if self.end_step <= self.start_step:
            raise ValueError(
                f"GradientFlowSchedule: expected end_step > start_step (got start_step={self.start_step}, end_step={self.end_step})")
        for name in ("start", "end"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"GradientFlowSchedule: expected {name} to be finite and >= 0 (got {v})")
        if self.kind == "exponential" and (self.start <= 0 or self.end <= 0):
            raise ValueError(
                f"GradientFlowSchedule: kind='exponential' expects start > 0 and end > 0 (got start={self.start}, end={self.end})")

    def __call__(self, step: int) -> float:
        if self.kind == "constant" or step < self.start_step:
            return float(self.start)
        if step >= self.end_step:
            return float(self.end)
        t = (step - self.start_step) / (self.end_step - self.start_step)
        if self.kind == "cosine":
            return float(self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t)))
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * t)
        return float(self.start * (self.end / self.start) ** t)
