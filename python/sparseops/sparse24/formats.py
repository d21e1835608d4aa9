"""N:M structured sparsity: masks and the 2:4 compressed formats.

Python face of the ``sparseops::nm_mask``, ``compress_24`` and ``decompress_24`` ops: typed wrappers,
their fake (meta) kernels and autograd, side by side. Kernels: ``csrc/sparse24/``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads the extension that defines the ops)

_ops = torch.ops.sparseops

LAYOUTS = ("packed", "cutlass")
CUDA_ONLY_LAYOUTS = ("cusparselt",)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Sparse24(NamedTuple):
    """A 2:4-compressed matrix W of shape ``[rows, cols]``.

    ``values``: ``[rows, cols/2]`` in W's dtype, the two kept elements of every group of 4 in index order.
    ``meta``: which two were kept, one 4-bit code per group (bits 1:0 = first index, 3:2 = second):

    - ``layout="packed"`` (CPU and CUDA): ``uint8 [rows, ceil(cols/8)]``, group ``2j`` in the low and
      ``2j+1`` in the high nibble of byte ``j``.
    - ``layout="cutlass"`` (fp16/bf16, rows % 32 == 0, cols % 32 == 0): ``int16 [rows, cols/16]`` in the
      reordered layout the CUTLASS sm80 sparse GEMM reads (see ``csrc/common/sparse24_format.h``).
    - ``layout="cusparselt"`` (CUDA only): ``values`` is cuSPARSELt's opaque compressed buffer (uint8,
      values and metadata together), ``meta`` an empty tensor, and ``dense_shape`` = (rows, cols).

    A NamedTuple of plain tensors (no tensor subclass), so it passes through ``torch.compile``,
    ``state_dict`` and pickling unchanged.
    """

    values: Tensor
    meta: Tensor
    layout: str = "packed"
    dense_shape: Optional[tuple[int, int]] = None  # set for layouts whose values do not imply it

    @property
    def shape(self) -> torch.Size:
        if self.dense_shape is not None:
            return torch.Size(self.dense_shape)
        return torch.Size((self.values.shape[0], 2 * self.values.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device


# ---------------------------------------------------------------------------------------------
# nm_mask


def nm_mask(w: Tensor, n: int = 2, m: int = 4, *, score: Optional[Tensor] = None) -> Tensor:
    """N:M mask along the last dimension.

    In every group of ``m`` consecutive elements of the last dim, keeps the ``n`` with the largest
    ``|score|`` (``score`` defaults to ``w``; pass e.g. ``|w| * ||x||`` for Wanda); ties go to the lower
    index.

    Args:
        w: any shape with ``w.shape[-1] % m == 0``; float32, float16 or bfloat16; CPU or CUDA.
        n, m: ``1 <= n < m <= 16``.
        score: optional, same shape and device as ``w``, float32/float16/bfloat16.

    Returns:
        A contiguous bool tensor of ``w``'s shape.

    Raises on NaN scores (they cannot be ranked). Extra memory: a contiguous copy of the scores when
    they are not contiguous. On CUDA the NaN check reads back one int64 (a device sync).
    """
    return _ops.nm_mask(w, n, m, score)


@torch.library.register_fake("sparseops::nm_mask")
def _nm_mask_fake(w: Tensor, n: int, m: int, score: Optional[Tensor] = None) -> Tensor:
    torch._check(w.dtype in _FLOAT_DTYPES, lambda: f"nm_mask: expected w float32/float16/bfloat16 (got {w.dtype})")
    torch._check(2 <= m <= 16, lambda: f"nm_mask: expected 2 <= m <= 16 (got m={m})")
    torch._check(1 <= n < m, lambda: f"nm_mask: expected 1 <= n < m (got n={n}, m={m})")
    torch._check(w.dim() >= 1, lambda: "nm_mask: expected w to have at least 1 dimension")
    torch._check(w.shape[-1] % m == 0, lambda: f"nm_mask: expected w.size(-1) divisible by m={m}")
    if score is not None:
        torch._check(score.shape == w.shape, lambda: "nm_mask: expected score.shape == w.shape")
    return w.new_empty(w.shape, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# compress_24 / decompress_24


def compress_24(w: Tensor, *, prune: bool = False, layout: str = "packed") -> Sparse24:
    """Compresses a 2-D matrix that is 2:4 sparse along its rows.

    Args:
        w: ``[rows, cols]`` with ``cols % 4 == 0``; float32/float16/bfloat16 (``layout="cutlass"``:
            float16/bfloat16 with ``rows % 32 == 0`` and ``cols % 32 == 0``); CPU or CUDA.
            ``layout="cusparselt"`` (CUDA): float16/bfloat16 with ``rows % 16 == 0`` and ``cols % 16 == 0``,
            or an already quantised int8 / float8_e4m3fn W (e4m3: sm90+) with ``rows % 32 == 0`` and
            ``cols % 32 == 0``; quantise first, then compress (the scale is passed to the linear op).
        prune: keep the 2 largest-magnitude elements of every group (ties to the lower index) instead
            of requiring ``w`` to be 2:4 already. For int8/float8_e4m3fn ``w`` the ranking runs on an
            fp16 copy (exact); prefer pruning the float weight before quantising, so that the scale is
            computed from the kept values. Without it, a group with more than 2 non-zeros is an
            error naming its row and columns.
        layout: ``"packed"``, ``"cutlass"`` or (CUDA) ``"cusparselt"`` (see :class:`Sparse24`).

    Groups with fewer than 2 non-zeros keep their lowest-index zeros, so the round trip
    ``decompress_24(compress_24(w)) == w`` is exact for 2:4 input.

    Extra memory: a contiguous copy of ``w`` when it is not contiguous; on CUDA one int64 for the
    error report (read back: a device sync).
    Differentiable: the gradient of ``values`` flows back to the kept positions of ``w``.
    """
    if layout in CUDA_ONLY_LAYOUTS:
        if not isinstance(w, Tensor) or w.device.type != "cuda":
            where = w.device if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"compress_24: layout={layout!r} is CUDA-only (cuSPARSELt's opaque device format; got w "
                             f"on {where}); on the CPU use layout='packed' (the default) or 'cutlass'")
        if prune:
            if w.dtype in (torch.int8, torch.float8_e4m3fn):
                # nm_mask is float-only: rank on an fp16 copy (exact for every int8 and e4m3 value) and
                # zero in fp16, then cast back (exact again). Extra memory: two fp16 copies of w.
                w16 = w.to(torch.float16)
                w = (w16 * nm_mask(w16, 2, 4)).to(w.dtype)
            else:
                w = w * nm_mask(w, 2, 4)
        buffer = _ops.compress_24_cusparselt(w)
        return Sparse24(buffer, buffer.new_empty((0,)), layout, (w.shape[0], w.shape[1]))
    if layout not in LAYOUTS:
        raise ValueError(f"compress_24: expected layout in {LAYOUTS + CUDA_ONLY_LAYOUTS} (got {layout!r})")
    values, meta = _ops.compress_24(w, prune, layout)
    return Sparse24(values, meta, layout)


def decompress_24(s: Sparse24) -> Tensor:
    """Dense ``[rows, cols]`` matrix from a :class:`Sparse24` (zeros where nothing was kept).

    Extra memory: none beyond the output. An invalid code in ``meta`` is an error (on CUDA its check
    reads back one int64: a device sync). Differentiable w.r.t. ``values`` (layout="packed").
    """
    if not isinstance(s, Sparse24):
        raise TypeError(f"decompress_24: expected a Sparse24 (got {type(s).__name__})")
    if s.layout in CUDA_ONLY_LAYOUTS:
        raise ValueError(f"decompress_24: layout {s.layout!r} is opaque and cannot be decompressed; keep a packed copy")
    return _ops.decompress_24(s.values, s.meta, s.layout)


def _packed_meta_cols(cols: int) -> int:
    return (cols // 4 + 1) // 2


@torch.library.register_fake("sparseops::compress_24")
def _compress_24_fake(w: Tensor, prune: bool = False, layout: str = "packed") -> tuple[Tensor, Tensor]:
    torch._check(layout in LAYOUTS, lambda: f"compress_24: expected layout in {LAYOUTS} (got {layout!r})")
    torch._check(w.dtype in _FLOAT_DTYPES, lambda: f"compress_24: expected w float32/float16/bfloat16 (got {w.dtype})")
    torch._check(w.dim() == 2, lambda: f"compress_24: expected w to be 2-D (got {w.dim()}-D)")
    rows, cols = w.shape
    torch._check(cols % 4 == 0, lambda: "compress_24: expected w.size(1) to be divisible by 4")
    values = w.new_empty((rows, cols // 2))
    if layout == "packed":
        meta = w.new_empty((rows, _packed_meta_cols(cols)), dtype=torch.uint8)
    else:
        torch._check(rows % 32 == 0 and cols % 32 == 0, lambda: "compress_24: layout='cutlass' needs rows%32, cols%32 == 0")
        meta = w.new_empty((rows, cols // 16), dtype=torch.int16)
    return values, meta


@torch.library.register_fake("sparseops::decompress_24")
def _decompress_24_fake(values: Tensor, meta: Tensor, layout: str = "packed") -> Tensor:
    torch._check(layout in LAYOUTS, lambda: f"decompress_24: expected layout in {LAYOUTS} (got {layout!r})")
    torch._check(values.dim() == 2 and meta.dim() == 2, lambda: "decompress_24: expected 2-D values and meta")
    rows, half = values.shape
    cols = 2 * half
    torch._check(cols % 4 == 0, lambda: "decompress_24: expected values.size(1) to be even")
    expected = _packed_meta_cols(cols) if layout == "packed" else cols // 16
    torch._check(meta.shape[0] == rows and meta.shape[1] == expected, lambda: "decompress_24: meta shape mismatch")
    return values.new_empty((rows, cols))


def _compress_24_setup(ctx, inputs, output) -> None:
    _, meta = output
    ctx.save_for_backward(meta)
    ctx.layout = inputs[2]


def _compress_24_backward(ctx, grad_values: Optional[Tensor], grad_meta: Optional[Tensor]):
    (meta,) = ctx.saved_tensors
    grad_w = None
    if ctx.needs_input_grad[0] and grad_values is not None:
        grad_w = _ops.decompress_24(grad_values.contiguous(), meta, ctx.layout)
    return grad_w, None, None


torch.library.register_autograd("sparseops::compress_24", _compress_24_backward, setup_context=_compress_24_setup)


def _kept_indices_packed(meta: Tensor, groups: int) -> Tensor:
    """[rows, groups, 2] int64 column-in-group indices of the kept elements, decoded from packed meta."""
    nibbles = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(meta.shape[0], -1)[:, :groups].long()
    return torch.stack((nibbles & 3, (nibbles >> 2) & 3), dim=-1)


def first_invalid_packed_meta(meta: Tensor, cols: int) -> Optional[tuple[int, int]]:
    """``(row, group)`` of the first invalid 4-bit code in packed 2:4 metadata of a ``[rows, cols]``
    matrix, or None when every code is valid (the padding nibble after an odd group count is not read).

    For checking metadata that arrives from outside (a state dict, a file) once, where it is cheap;
    the ops check it themselves too. Extra memory: a few bytes per group, on ``meta``'s device.
    """
    groups = cols // 4
    nibbles = torch.stack((meta & 0xF, meta >> 4), dim=-1).reshape(meta.shape[0], -1)[:, :groups]
    bad = (nibbles & 3) >= (nibbles >> 2)  # a valid code's first kept index is below its second
    if not bool(bad.any()):
        return None
    flat = int(bad.reshape(-1).nonzero()[0])
    return flat // groups, flat % groups


def _decompress_24_setup(ctx, inputs, output) -> None:
    _, meta, layout = inputs
    ctx.save_for_backward(meta)
    ctx.layout = layout


def _decompress_24_backward(ctx, grad_dense: Tensor):
    (meta,) = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[0]:
        if ctx.layout != "packed":
            raise NotImplementedError("decompress_24: backward is implemented for layout='packed' only")
        rows, cols = grad_dense.shape
        idx = _kept_indices_packed(meta, cols // 4)
        grad_values = grad_dense.reshape(rows, cols // 4, 4).gather(-1, idx).reshape(rows, cols // 2)
    return grad_values, None, None


torch.library.register_autograd("sparseops::decompress_24", _decompress_24_backward, setup_context=_decompress_24_setup)
