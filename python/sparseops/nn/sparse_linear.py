"""2:4 sparse linear layers: SparseLinear24 (inference, compressed weight), NMSparseLinear (N:M training
with SR-STE), and sparsify_ (swap a model's nn.Linear modules in place, magnitude or Wanda pruning)."""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sparse24 import (
    Sparse24,
    compress_24,
    compress_24_transposable,
    decompress_24,
    nm_mask,
    nm_srste,
    sparse24_linear,
    transposable_mask_24,
)
from ..sparse24.formats import first_invalid_packed_meta

__all__ = [
    "InputNorms",
    "NMSparseLinear",
    "SparseLinear24",
    "SparsifyReport",
    "collect_input_norms",
    "set_gradient_flow_step",
    "sparsify_",
]

_log = logging.getLogger("sparseops")
_LAYOUTS = ("packed", "cutlass", "cusparselt")
_METHODS = ("magnitude", "wanda", "transposable")


# ---------------------------------------------------------------------------------------------
# Wanda statistics


class InputNorms:
    """Per-input-feature L2 norms ``||X_j||_2`` of a linear layer's inputs over calibration tokens: the
    activation statistic of Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
    Language Models"), whose score for weight ``W[i, j]`` is ``|W[i, j]| * ||X_j||_2``.

    Accumulates the sum of squares in float64 (``update`` takes any ``[*, in_features]`` batch), so
    the result does not depend on how the calibration data is split into batches.
    """

    def __init__(self, in_features: int, device: Optional[torch.device] = None):
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        if x.shape[-1] != self.sum_sq.shape[0]:
            raise ValueError(f"InputNorms.update: expected x.shape[-1] == {self.sum_sq.shape[0]} (got {tuple(x.shape)})")
        flat = x.detach().reshape(-1, x.shape[-1])
        self.sum_sq = self.sum_sq.to(flat.device)
        self.sum_sq += flat.double().square().sum(0)
        self.tokens += flat.shape[0]

    @property
    def norm(self) -> Tensor:
        """float32 ``[in_features]``."""
        return self.sum_sq.sqrt().float()

    @classmethod
    def from_activations(cls, x: Tensor) -> "InputNorms":
        stats = cls(x.shape[-1], x.device)
        stats.update(x)
        return stats


def _run_calibration(model: nn.Module, calibration: Any) -> None:
    if callable(calibration):
        calibration(model)
        return
    if isinstance(calibration, Tensor) or not isinstance(calibration, Iterable):
        raise TypeError(
            "sparsify_: expected calibration to be a callable taking the model, or an iterable of inputs "
            f"(tensors, tuples of positional args, or dicts of keyword args) (got {type(calibration).__name__})")
    for batch in calibration:
        if isinstance(batch, dict):
            model(**batch)
        elif isinstance(batch, (tuple, list)):
            model(*batch)
        else:
            model(batch)


@torch.no_grad()
def collect_input_norms(model: nn.Module, calibration: Any,
                        filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> dict[str, InputNorms]:
    """Runs ``calibration`` through ``model`` with forward pre-hooks on the selected ``nn.Linear``
    modules and returns their :class:`InputNorms` by fully qualified name.

    Args:
        model: any module; it runs in eval mode during calibration (its mode is restored after).
        calibration: a callable ``calibration(model)`` that runs the model on calibration data, or an
            iterable of inputs, each a tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict
            (``model(**x)``).
        filter_fn: ``filter_fn(module, fqn) -> bool`` over ``nn.Linear`` modules (default: all whose
            ``in_features % 4 == 0``).
    """
    filter_fn = filter_fn or (lambda module, fqn: _why_not_convertible(module, "wanda") is None)
    stats: dict[str, InputNorms] = {}
    handles = []
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Linear) and filter_fn(module, fqn):
            stats[fqn] = InputNorms(module.in_features, module.weight.device)

            def hook(mod, args, _s=stats[fqn]):
                _s.update(args[0])

            handles.append(module.register_forward_pre_hook(hook))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        _run_calibration(model, calibration)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    for fqn, s in stats.items():
        if s.tokens == 0:
            raise ValueError(f"sparsify_: calibration never ran the layer {fqn!r}: no Wanda statistics for it")
    return stats


# ---------------------------------------------------------------------------------------------
# SparseLinear24


def _check_bias_shape(where: str, bias: Optional[Tensor], out_features: int) -> None:
    # copy_ would broadcast a [1] or [] bias silently.
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"{where}: expected bias of shape [{out_features}] (out_features) (got {list(bias.shape)})")


def _checked_layout(layout: str) -> str:
    if layout not in _LAYOUTS:
        raise ValueError(f"SparseLinear24: expected layout in {_LAYOUTS} (got {layout!r})")
    return layout


def _check_loaded_meta(state_dict, prefix: str, name: str, cols: int, error_msgs: list) -> None:
    """Adds an error for ``prefix + name`` in ``state_dict`` if it holds an invalid 2:4 code, so that
    ``load_state_dict`` refuses corrupt metadata instead of a later forward computing with it."""
    meta = state_dict.get(prefix + name)
    if not isinstance(meta, Tensor) or meta.dtype != torch.uint8 or meta.dim() != 2 or meta.is_meta:
        return  # missing or of the wrong type/shape: load_state_dict's own checks report it
    where = first_invalid_packed_meta(meta, cols)
    if where is not None:
        row, group = where
        error_msgs.append(f"{prefix}{name}: invalid 2:4 metadata code {int(_nibble(meta, row, group)):#x} at row {row}, "
                          f"group {group} (each 4-bit code must name two distinct kept indices, the first below "
                          f"the second); the checkpoint is corrupt or not in the packed layout")


def _nibble(meta: Tensor, row: int, group: int) -> int:
    byte = int(meta[row, group // 2])
    return (byte >> 4) if group % 2 else (byte & 0xF)


class SparseLinear24(nn.Module):
    """``y = x @ W.T + bias`` with a 2:4-sparse ``W [out_features, in_features]`` stored compressed.

    State (``state_dict``): ``values`` ``[out, in/2]`` in the layer's dtype and ``meta`` uint8
    ``[out, ceil(in/8)]`` -- the ``"packed"`` :class:`sparseops.Sparse24` layout, on any device -- and
    ``bias`` ``[out]`` (a parameter) or None. Memory: ``W`` takes 1/2 of the dense bytes plus 1/16 of a
    byte per element of metadata (fp16: 53% of dense; fp32: 52%).

    ``layout="cutlass"`` (CUDA, fp16/bf16) or ``"cusparselt"`` (CUDA) additionally keep a non-persistent
    copy of ``W`` in that layout, rebuilt from the packed state after ``from_dense``, ``load_state_dict``
    and device/dtype moves, and run the GEMM on it.

    Layers made with ``from_dense(..., method="transposable")`` (mask 2:4 along both dims) also hold
    ``W^T`` packed: buffers ``values_t [in, out/2]`` and ``meta_t`` uint8 ``[in, ceil(out/8)]`` (in the
    ``state_dict`` when present; ``None`` otherwise). With the packed layout the forward passes them as
    ``w24_t``, so the backward's ``grad_x`` (training the bias or the layers before this one) runs on
    the 2:4 kernel instead of a dense ``W``. ``W`` itself is a buffer (no gradient). Loading a state dict
    without them drops them (the loaded ``W`` need not be transposable); one with them creates them.
    ``load_state_dict`` refuses metadata with an invalid code (naming the key, row and group) and then
    leaves the layer unchanged; the check reads each code once (a few bytes per group of 4 weights).

    Distributed: ``W`` (and ``W^T``) are buffers, so DDP broadcasts rank 0's at construction and only the
    bias gradient is averaged. ``torch.distributed.checkpoint``: ``set_model_state_dict`` runs
    ``load_state_dict``, hence the same metadata check; but ``dcp.load`` first writes the checkpoint into
    the tensors of the state dict it is given, and those of ``get_model_state_dict(model)`` are this
    layer's own buffers, so when the check refuses, the layer already holds the corrupt codes (the CPU
    forward then raises on them; CUDA trusts them). Load into copies
    (``{k: v.clone() for k, v in get_model_state_dict(model).items()}``) to keep the layer unchanged. The
    model loaded into decides which keys are read: build it like the saved one (``values_t``/``meta_t``
    are read only into a layer that has them, e.g. from the same ``sparsify_`` method).

    Forward: ``sparseops.sparse24_linear(x, W, bias, activation=activation, backend=backend,
    w24_t=W^T or None)`` with ``x [*, in_features]`` of the layer's dtype and device. Works under
    ``torch.compile``.

    Construction initialises ``W`` like ``nn.Linear`` (Kaiming-uniform) and prunes it to 2:4 by
    magnitude; use :meth:`from_dense` to convert a trained ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: Optional[torch.dtype] = None,
                 device: Optional[Union[str, torch.device]] = None, layout: str = "packed", backend: str = "auto",
                 activation: Optional[str] = None):
        super().__init__()
        if in_features <= 0 or in_features % 4 != 0:
            raise ValueError(f"SparseLinear24: expected in_features to be a positive multiple of 4 (got {in_features})")
        if out_features <= 0:
            raise ValueError(f"SparseLinear24: expected out_features > 0 (got {out_features})")
        _checked_layout(layout)
        self.in_features, self.out_features = in_features, out_features
        self.layout, self.backend, self.activation = layout, backend, activation
        factory = {"dtype": dtype, "device": device}
        self.register_buffer("values", torch.empty(out_features, in_features // 2, **factory))
        self.register_buffer("meta", torch.empty(out_features, (in_features // 4 + 1) // 2, dtype=torch.uint8, device=device))
        # W^T packed (method="transposable" only); None buffers are left out of the state_dict.
        self.register_buffer("values_t", None)
        self.register_buffer("meta_t", None)
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._layout_w24: Optional[Sparse24] = None
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._sync_layout())
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.values.is_meta:
            return
        dense = torch.empty(self.out_features, self.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
        self._set_weight(dense.to(self.values))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def _set_weight(self, w: Tensor, mask: Optional[Tensor] = None, transposed: bool = False) -> None:
        """Stores ``w`` pruned by ``mask`` (default: 2:4 magnitude) in the packed buffers; with
        ``transposed`` (``mask`` transposable) also ``W^T`` in ``values_t``/``meta_t``, else drops them."""
        if mask is None:
            mask = nm_mask(w, 2, 4)
        pruned = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
        if transposed:
            w24, w24_t = compress_24_transposable(pruned)
            self.values_t, self.meta_t = w24_t.values.to(self.values.dtype), w24_t.meta
        else:
            w24 = compress_24(pruned)
            self.values_t = self.meta_t = None
        self.values.copy_(w24.values)
        self.meta.copy_(w24.meta)
        self._sync_layout()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        vt, mt = state_dict.get(prefix + "values_t"), state_dict.get(prefix + "meta_t")
        n_errors = len(error_msgs)
        _check_loaded_meta(state_dict, prefix, "meta", self.in_features, error_msgs)
        if mt is not None:
            _check_loaded_meta(state_dict, prefix, "meta_t", self.out_features, error_msgs)
        if len(error_msgs) > n_errors:
            return  # load_state_dict raises; copying nothing leaves this layer as it was
        # values_t/meta_t are optional: make the module's set match the state dict's before loading.
        if vt is None or mt is None:
            self.values_t = self.meta_t = None
        elif isinstance(vt, Tensor) and isinstance(mt, Tensor):
            if self.values_t is None or self.values_t.shape != vt.shape:
                self.values_t = torch.empty(vt.shape, dtype=self.values.dtype, device=self.values.device)
            if self.meta_t is None or self.meta_t.shape != mt.shape:
                self.meta_t = torch.empty(mt.shape, dtype=torch.uint8, device=self.meta.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @torch.no_grad()
    def _sync_layout(self) -> None:
        """Rebuilds the non-persistent copy of W in ``self.layout`` from the packed state."""
        self._layout_w24 = None
        if self.layout == "packed" or self.values.is_meta:
            return
        if self.values.device.type != "cuda":
            return  # built when the module moves to CUDA (_apply); forward on another device raises
        dense = decompress_24(self.weight24("packed"))
        self._layout_w24 = compress_24(dense, layout=self.layout)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._sync_layout()
        return self

    def weight24(self, layout: Optional[str] = None) -> Sparse24:
        """W as a :class:`sparseops.Sparse24` in ``layout`` (default: the layer's)."""
        layout = layout or self.layout
        if layout == "packed":
            return Sparse24(self.values, self.meta, "packed")
        if self._layout_w24 is None or layout != self.layout:
            raise ValueError(f"SparseLinear24: layout={layout!r} needs the module on CUDA with layout={layout!r} "
                             f"(module layout {self.layout!r}, device {self.values.device})")
        return self._layout_w24

    def weight24_t(self) -> Optional[Sparse24]:
        """``W^T [in_features, out_features]`` packed (layers from ``method="transposable"``), else None."""
        if self.values_t is None or self.meta_t is None:
            return None
        return Sparse24(self.values_t, self.meta_t, "packed")

    def forward(self, x: Tensor) -> Tensor:
        w24_t = self.weight24_t() if self.layout == "packed" else None
        return sparse24_linear(x, self.weight24(), self.bias, activation=self.activation, backend=self.backend,
                               w24_t=w24_t)

    @torch.no_grad()
    def to_dense(self) -> Tensor:
        """The dense ``W [out_features, in_features]`` (zeros where pruned), for inspection."""
        return decompress_24(self.weight24("packed"))

    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, method: str = "magnitude", calibration: Union[Tensor, InputNorms, None] = None,
                   *, layout: str = "packed", backend: str = "auto", activation: Optional[str] = None) -> "SparseLinear24":
        """Prunes ``linear.weight`` to 2:4 and compresses it; same dtype and device as ``linear``.

        Args:
            linear: an ``nn.Linear`` (or anything with ``weight [out, in]``, ``bias``) with
                ``in_features % 4 == 0`` and a float32/float16/bfloat16 weight.
            method: ``"magnitude"``: keep the 2 largest ``|W|`` of every group of 4 along the input dim;
                ``"wanda"``: keep the 2 largest ``|W[i, j]| * ||X_j||_2`` (needs ``calibration``);
                ``"transposable"``: ``sparseops.transposable_mask_24(W)`` (2:4 along both dims of every
                4x4 block, keeping the most ``|W|``; needs ``out_features % 4 == 0``), and ``W^T`` is
                stored too (``values_t``/``meta_t``: another ~half of the dense bytes) so that the
                backward's ``grad_x`` is a 2:4 product (see the class docstring).
            calibration: for ``"wanda"``: activations ``[*, in_features]`` that reach this layer, or
                their :class:`InputNorms` (see :func:`collect_input_norms`).
        """
        if method not in _METHODS:
            raise ValueError(f"SparseLinear24.from_dense: expected method in {_METHODS} (got {method!r})")
        w = linear.weight.detach()
        if w.dim() != 2:
            raise ValueError(f"SparseLinear24.from_dense: expected a 2-D weight (got shape {tuple(w.shape)})")
        out_features, in_features = w.shape
        if in_features % 4 != 0:
            raise ValueError(f"SparseLinear24.from_dense: expected in_features to be a multiple of 4 (got {in_features})")
        score = None
        if method == "wanda":
            if calibration is None:
                raise ValueError("SparseLinear24.from_dense: method='wanda' needs calibration (activations or InputNorms)")
            if isinstance(calibration, Tensor):
                calibration = InputNorms.from_activations(calibration)
            if not isinstance(calibration, InputNorms):
                raise TypeError(f"SparseLinear24.from_dense: expected calibration to be a Tensor or InputNorms "
                                f"(got {type(calibration).__name__})")
            norm = calibration.norm
            if norm.shape != (in_features,):
                raise ValueError(f"SparseLinear24.from_dense: expected calibration statistics for {in_features} input "
                                 f"features (got {norm.shape[0]})")
            score = w.float().abs() * norm.to(w.device)[None, :]
        elif calibration is not None:
            raise ValueError("SparseLinear24.from_dense: calibration is only used by method='wanda'")
        transposed = method == "transposable"
        if transposed:
            if out_features % 4 != 0:
                raise ValueError("SparseLinear24.from_dense: method='transposable' needs out_features to be a "
                                 f"multiple of 4 (got {out_features})")
            mask = transposable_mask_24(w)
        else:
            mask = nm_mask(w, 2, 4, score=score)
        bias = getattr(linear, "bias", None)
        _check_bias_shape("SparseLinear24.from_dense", bias, out_features)
        module = cls(in_features, out_features, bias is not None, dtype=w.dtype, device=w.device, backend=backend,
                     activation=activation)
        module.layout = _checked_layout(layout)
        module._set_weight(w, mask, transposed)
        if bias is not None:
            module.bias.copy_(bias.detach())
        return module

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"layout={self.layout!r}, backend={self.backend!r}, activation={self.activation!r}")


# ---------------------------------------------------------------------------------------------
# sparsify_


@dataclass
class SparsifyReport:
    """What :func:`sparsify_` did: ``converted`` lists the fully qualified names of the ``nn.Linear``
    modules it replaced; ``skipped`` maps every other ``nn.Linear`` of the model to the reason."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"sparsify_: converted {len(self.converted)} nn.Linear layer(s) to SparseLinear24, "
                 f"skipped {len(self.skipped)}"]
        lines += [f"  skipped {fqn or '<model>'}: {why}" for fqn, why in self.skipped.items()]
        return "\n".join(lines)


def _why_not_convertible(linear: nn.Linear, method: str) -> Optional[str]:
    if linear.in_features % 4 != 0:
        return f"in_features={linear.in_features} is not a multiple of 4"
    if method == "transposable" and linear.out_features % 4 != 0:
        return f"out_features={linear.out_features} is not a multiple of 4 (method='transposable')"
    return None


def sparsify_(model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, method: str = "magnitude",
              calibration: Any = None, *, layout: str = "packed", backend: str = "auto") -> SparsifyReport:
    """Replaces ``nn.Linear`` modules of ``model`` in place by :class:`SparseLinear24` (2:4 pruned).

    Args:
        model: any module; modified in place.
        filter_fn: ``filter_fn(module, fqn) -> bool`` deciding which ``nn.Linear`` modules to convert
            (default: all). Layers whose shape 2:4 cannot serve (``in_features % 4 != 0``; for
            ``"transposable"`` also ``out_features % 4 != 0``) are skipped either way.
        method: ``"magnitude"``, ``"wanda"`` or ``"transposable"`` (see :meth:`SparseLinear24.from_dense`).
        calibration: for ``"wanda"``: a callable ``calibration(model)`` that runs the model on calibration
            data, or an iterable of model inputs (see :func:`collect_input_norms`). All layers' statistics
            come from the dense model, collected in one pass before any layer is swapped.
        layout, backend: passed to every :class:`SparseLinear24`.

    Returns:
        a :class:`SparsifyReport` of the layers converted and skipped (with the reason); the same summary
        is logged at INFO level on the ``sparseops`` logger. An error while converting a layer names it.
    """
    if method not in _METHODS:
        raise ValueError(f"sparsify_: expected method in {_METHODS} (got {method!r})")
    if method == "wanda" and calibration is None:
        raise ValueError("sparsify_: method='wanda' needs calibration (a callable running the model, or a list of inputs)")
    if method != "wanda" and calibration is not None:
        raise ValueError("sparsify_: calibration is only used by method='wanda'")
    if isinstance(model, nn.Linear):
        raise ValueError("sparsify_: the model itself is an nn.Linear; use SparseLinear24.from_dense(model)")
    report = SparsifyReport()
    targets = []
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        why = "excluded by filter_fn" if filter_fn is not None and not filter_fn(module, fqn) else None
        why = why or _why_not_convertible(module, method)
        if why:
            report.skipped[fqn] = why
        else:
            targets.append((fqn, module))
    selected = {id(m) for _, m in targets}
    stats = collect_input_norms(model, calibration, lambda m, _: id(m) in selected) if method == "wanda" else {}
    for fqn, linear in targets:
        try:
            new = SparseLinear24.from_dense(linear, method, stats.get(fqn), layout=layout, backend=backend)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"sparsify_: layer {fqn}: {exc}") from exc
        new.train(linear.training)
        parent_name, _, child_name = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, new)
        report.converted.append(fqn)
    _log.info("%s", report)
    return report


# ---------------------------------------------------------------------------------------------
# NMSparseLinear


def _dtensor_class() -> Optional[type]:
    # Only look for DTensor once something imported it: importing torch.distributed.tensor here would
    # add ~0.7 s to `import sparseops`, and no tensor can be a DTensor before that import.
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def _full_tensor(t: Tensor) -> Tensor:
    """``t`` itself, or the whole tensor of a DTensor ``t`` (a collective: every rank must call it)."""
    dtensor = _dtensor_class()
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def _on_local_shard(w: Tensor, fn: Callable[[Tensor], Tensor], where: str) -> Tensor:
    """``fn(w)`` for a plain tensor. For a DTensor ``w`` (a parameter sharded by FSDP2 ``fully_shard`` or
    tensor parallelism), ``fn`` of the local shard, rewrapped with ``w``'s mesh and placements: the
    sparseops ops have no DTensor sharding rule, and ``fn`` (an N:M mask along the last dim) is exact on
    each shard as long as no placement splits the last dim."""
    dtensor = _dtensor_class()
    if dtensor is None or not isinstance(w, dtensor):
        return fn(w)
    last = w.dim() - 1
    for p in w.placements:
        if p.is_partial() or (p.is_shard() and p.dim % w.dim() == last):
            raise ValueError(f"{where}: expected a DTensor weight whose last dim (the N:M groups) is not split "
                             f"(Replicate or Shard(d) with d != {last}) (got placements {tuple(w.placements)})")
    return dtensor.from_local(fn(w.to_local()), w.device_mesh, w.placements, run_check=False, shape=w.shape,
                              stride=w.stride())


class NMSparseLinear(nn.Module):
    """Linear layer trained N:M sparse from scratch (or fine-tuned) with SR-STE.

    Keeps a dense ``weight [out_features, in_features]`` (a parameter, updated by the optimizer) and
    computes ``F.linear(x, nm_srste(weight, n, m, decay, pruned_grad_scale), bias)``: the forward uses
    the N:M magnitude-masked weight (re-chosen every step), the backward passes the gradient straight
    through to all weights and decays the pruned ones (see :mod:`sparseops.sparse24.training`). The matmul is
    dense; :meth:`to_inference` returns the compressed :class:`SparseLinear24` (2:4 only).

    ``schedule`` (e.g. :class:`sparseops.GradientFlowSchedule`) maps a training step to
    ``pruned_grad_scale``; call :meth:`set_step` (or :func:`set_gradient_flow_step` on the model) each step.
    The value lives in a float32 buffer updated in place, so ``torch.compile`` does not recompile.

    Extra memory (training): the masked weight and a bool mask per step, on top of the dense weight.

    Distributed: under DDP it trains like any module (``step``/``pruned_grad_scale`` are buffers, broadcast
    with the others). Under FSDP2 ``fully_shard`` the forward sees the all-gathered weight; outside the
    forward ``weight`` is a DTensor, and :meth:`mask` / :meth:`sparse_weight` work shard by shard and
    return DTensors placed like ``weight`` (any placement that does not split the last dim; else a
    ValueError), while :meth:`to_inference` gathers the full weight (a collective: call it on every rank).
    ``tests/test_sparse24_distributed.py`` checks all of this against a single process.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, n: int = 2, m: int = 4,
                 decay: float = 2e-4, schedule: Optional[Callable[[int], float]] = None,
                 dtype: Optional[torch.dtype] = None, device: Optional[Union[str, torch.device]] = None):
        super().__init__()
        if not (2 <= m <= 16 and 1 <= n < m):
            raise ValueError(f"NMSparseLinear: expected 1 <= n < m <= 16 (got n={n}, m={m})")
        if in_features <= 0 or in_features % m != 0:
            raise ValueError(f"NMSparseLinear: expected in_features to be a positive multiple of m={m} (got {in_features})")
        if not (math.isfinite(decay) and decay >= 0):
            raise ValueError(f"NMSparseLinear: expected decay to be finite and >= 0 (got {decay})")
        self.in_features, self.out_features, self.n, self.m = in_features, out_features, n, m
        self.decay = float(decay)
        self.schedule = schedule
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("pruned_grad_scale", torch.ones((), dtype=torch.float32, device=device), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.set_step(int(module.step)))
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # model.half() / .to(dtype) convert floating buffers; the kernels read the scale as float32.
        self.pruned_grad_scale = self.pruned_grad_scale.float()
        return self

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def set_step(self, step: int) -> None:
        """Records the training step and sets ``pruned_grad_scale = schedule(step)`` (1 without a schedule)."""
        self.step.fill_(step)
        if self.pruned_grad_scale.is_meta:
            return
        self.pruned_grad_scale.fill_(1.0 if self.schedule is None else float(self.schedule(step)))

    def sparse_weight(self) -> Tensor:
        """The N:M-masked weight the forward uses (differentiable with the SR-STE gradient)."""
        return _on_local_shard(self.weight, lambda w: nm_srste(w, self.n, self.m, decay=self.decay,
                                                                 pruned_grad_scale=self.pruned_grad_scale),
                               "NMSparseLinear.sparse_weight")

    @torch.no_grad()
    def mask(self) -> Tensor:
        """The current bool N:M mask of ``weight``."""
        return _on_local_shard(self.weight, lambda w: torch.ops.sparseops.nm_srste(w, self.n, self.m, 0.0, None)[1],
                               "NMSparseLinear.mask")

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.sparse_weight(), self.bias)

    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, *, n: int = 2, m: int = 4, decay: float = 2e-4,
                   schedule: Optional[Callable[[int], float]] = None) -> "NMSparseLinear":
        """An NMSparseLinear starting from ``linear``'s weights (sparse fine-tuning of a dense model)."""
        w = linear.weight
        _check_bias_shape("NMSparseLinear.from_dense", linear.bias, w.shape[0])
        module = cls(w.shape[1], w.shape[0], linear.bias is not None, n=n, m=m, decay=decay, schedule=schedule,
                     dtype=w.dtype, device=w.device)
        module.weight.copy_(w)
        if linear.bias is not None:
            module.bias.copy_(linear.bias)
        return module

    @torch.no_grad()
    def to_inference(self, *, layout: str = "packed", backend: str = "auto") -> SparseLinear24:
        """The trained layer as a :class:`SparseLinear24` computing the same function (2:4 only)."""
        if (self.n, self.m) != (2, 4):
            raise ValueError(f"NMSparseLinear.to_inference: SparseLinear24 stores 2:4 weights (this layer is {self.n}:{self.m})")
        weight = _full_tensor(self.weight.detach())  # FSDP2/TP: the whole weight on every rank
        out = SparseLinear24(self.in_features, self.out_features, self.bias is not None, dtype=weight.dtype,
                             device=weight.device, backend=backend)
        out.layout = _checked_layout(layout)
        out._set_weight(weight, torch.ops.sparseops.nm_srste(weight, self.n, self.m, 0.0, None)[1])
        if self.bias is not None:
            out.bias.copy_(_full_tensor(self.bias.detach()))
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"n={self.n}, m={self.m}, decay={self.decay}")


def set_gradient_flow_step(model: nn.Module, step: int) -> None:
    """Calls :meth:`NMSparseLinear.set_step` on every NMSparseLinear in ``model``."""
    for module in model.modules():
        if isinstance(module, NMSparseLinear):
            module.set_step(step)
