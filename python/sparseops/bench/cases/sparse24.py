"""sparse24 cases: the N:M mask and the 2:4 compress/decompress formats, against the pure-PyTorch
references (sparseops.reference) and a plain-torch topk mask."""
from __future__ import annotations

import torch
from torch import Tensor

import sparseops
from sparseops.bench import Case, register
from sparseops.reference import compress_24_ref, decompress_24_ref, nm_mask_ref

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _shapes(quick: bool) -> list[tuple[int, int]]:
    return [(1024, 1024)] if quick else [(4096, 4096), (11008, 4096)]


def _inputs(device: str, quick: bool):
    """(shape, dtype name, w) for every shape and dtype; w is created when the case is."""
    for shape in _shapes(quick):
        for name, dtype in _DTYPES.items():
            yield shape, name, torch.randn(shape, device=device, dtype=dtype)


def _params(w: Tensor, dtype_name: str, **extra) -> dict:
    return {**extra, "dtype": dtype_name, "shape": list(w.shape)}


def _shape_label(w: Tensor) -> str:
    return "x".join(map(str, w.shape))


def topk_mask(w: Tensor, n: int, m: int) -> Tensor:
    """The plain-torch way to build an n:m mask: topk of |w| in each group of m, scattered."""
    groups = w.abs().reshape(-1, m)
    idx = groups.topk(n, dim=-1, sorted=False).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(w.shape)


def _nm_mask_case(w: Tensor, dtype_name: str, n: int, m: int) -> Case:
    return Case(
        label=f"{n}:{m} {dtype_name} {_shape_label(w)}",
        params=_params(w, dtype_name, n=n, m=m),
        impls={
            "sparseops": lambda: sparseops.nm_mask(w, n, m),
            "reference": lambda: nm_mask_ref(w, n, m),
            "torch_topk": lambda: topk_mask(w, n, m),
        },
        baseline="reference",
        bytes=w.nbytes + w.numel(),  # read w, write a bool mask
    )


@register("sparse24", "nm_mask")
def nm_mask_cases(device: str, quick: bool):
    for _, dtype_name, w in _inputs(device, quick):
        for n, m in ((2, 4), (4, 8)):
            yield _nm_mask_case(w, dtype_name, n, m)


def _packed_bytes(w: Tensor) -> int:
    rows, cols = w.shape
    return w.nbytes // 2 + rows * ((cols // 4 + 1) // 2)  # values + packed meta


def _compress_case(w: Tensor, dtype_name: str) -> Case:
    return Case(
        label=f"prune {dtype_name} {_shape_label(w)}",
        params=_params(w, dtype_name, prune=True, layout="packed"),
        impls={
            "sparseops": lambda: sparseops.compress_24(w, prune=True),
            "reference": lambda: compress_24_ref(w, prune=True),
        },
        baseline="reference",
        bytes=w.nbytes + _packed_bytes(w),  # read w, write values + meta
    )


@register("sparse24", "compress_24")
def compress_24_cases(device: str, quick: bool):
    for _, dtype_name, w in _inputs(device, quick):
        yield _compress_case(w, dtype_name)


def _decompress_case(w: Tensor, dtype_name: str) -> Case:
    s = sparseops.compress_24(w, prune=True)
    values, meta = s.values, s.meta
    return Case(
        label=f"{dtype_name} {_shape_label(w)}",
        params=_params(w, dtype_name, layout="packed"),
        impls={
            "sparseops": lambda: sparseops.decompress_24(s),
            "reference": lambda: decompress_24_ref(values, meta),
        },
        baseline="reference",
        bytes=values.nbytes + meta.nbytes + w.nbytes,  # read values + meta, write the dense matrix
    )


@register("sparse24", "decompress_24")
def decompress_24_cases(device: str, quick: bool):
    for _, dtype_name, w in _inputs(device, quick):
        yield _decompress_case(w, dtype_name)
