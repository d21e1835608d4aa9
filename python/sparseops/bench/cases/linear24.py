"""sparse24_linear cases: the 2:4 sparse linear layer against torch.nn.functional.linear on the same
weight decompressed to dense (the job a user replaces), over LLM-like shapes (N, K) and batch rows M;
on CPU also against the strongest dense code a user could pick instead (``dense_peers``: oneDNN with a
prepacked weight, numpy/OpenBLAS), whose ratios are in the JSON.

M <= 16 is the decode/GEMV regime, reported against memory bandwidth (bytes = packed weight + x + y);
larger M is reported against compute (flops = 2*M*N*K, the dense-equivalent work).
On CPU, M = 1 bf16 with (4096, 4096) keeps the packed weight (18 MB) inside a 32 MB L3 while the dense
one (32 MB) does not: such cases measure a cache-resident sparse weight, as in a small model's loop.

sparse24_linear_grad_x: the backward's ``grad_x [M, K] = grad_z [M, N] @ W [N, K]`` for a W with a
transposable 2:4 mask, as the backward runs it with ``w24_t`` (``sparse24_linear(grad_z, W^T packed)``),
against ``grad_z @ W`` with W already dense (torch matmul, the baseline) and against what the backward
does without ``w24_t`` (decompress W, then the matmul).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import sparseops
from sparseops.bench import Case, register
from sparseops import compress_24_transposable, sparse24_linear

from .dense_peers import numpy_openblas, onednn_prepacked, openblas_params

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_GEMV_MAX_M = 16


def _shapes(quick: bool) -> list[tuple[int, int]]:
    return [(4096, 4096)] if quick else [(4096, 4096), (11008, 4096), (4096, 11008)]


def _rows(quick: bool, dtype_name: str) -> list[int]:
    if dtype_name == "fp16":
        return [1, 8]  # the GEMV regime; large-M fp16 runs the same tiles as bf16
    return [1, 8, 256] if quick else [1, 8, 64, 2048]


def _case(device: str, w24: sparseops.Sparse24, w: Tensor, dtype_name: str, m: int) -> Case:
    n, k = w.shape
    x = torch.randn(m, k, device=device, dtype=w.dtype)
    packed = w24.values.nbytes + w24.meta.nbytes
    io = x.nbytes + m * n * x.element_size()
    amount = {"bytes": packed + io} if m <= _GEMV_MAX_M else {"flops": 2 * m * n * k}
    impls = {"sparseops": lambda: sparse24_linear(x, w24), "torch_dense_linear": lambda: F.linear(x, w)}
    params = {"dtype": dtype_name, "m": m, "n": n, "k": k, "activation": "none", "bias": False}
    if device == "cpu":  # the best dense code a user could pick instead (see dense_peers)
        impls["onednn_prepacked"] = onednn_prepacked(x, w)
        if w.dtype == torch.float32:
            impls["numpy_openblas"] = numpy_openblas(x, w)
            params.update(openblas_params())
    return Case(
        label=f"{dtype_name} M={m} N={n} K={k}",
        params=params,
        impls=impls,
        baseline="torch_dense_linear",
        **amount,
    )


@register("sparse24", "sparse24_linear")
def sparse24_linear_cases(device: str, quick: bool):
    for n, k in _shapes(quick):
        for dtype_name, dtype in _DTYPES.items():
            w24 = sparseops.compress_24(torch.randn(n, k, device=device, dtype=dtype), prune=True)
            w = sparseops.decompress_24(w24)
            for m in _rows(quick, dtype_name):
                yield _case(device, w24, w, dtype_name, m)


def _grad_x_case(device: str, w24: sparseops.Sparse24, w24_t: sparseops.Sparse24, w: Tensor, dtype_name: str,
                 m: int) -> Case:
    n, k = w.shape
    grad_z = torch.randn(m, n, device=device, dtype=w.dtype)
    packed = w24_t.values.nbytes + w24_t.meta.nbytes
    io = grad_z.nbytes + m * k * grad_z.element_size()
    amount = {"bytes": packed + io} if m <= _GEMV_MAX_M else {"flops": 2 * m * n * k}
    return Case(
        label=f"grad_x = grad_z @ W {dtype_name} M={m} N={n} K={k}",
        params={"dtype": dtype_name, "m": m, "n": n, "k": k, "job": "grad_x"},
        impls={
            "sparseops": lambda: sparse24_linear(grad_z, w24_t),  # the backward's grad_x with w24_t
            "torch_dense_matmul": lambda: grad_z @ w,
            "decompress_then_matmul": lambda: grad_z @ sparseops.decompress_24(w24),
        },
        baseline="torch_dense_matmul",
        **amount,
    )


@register("sparse24", "sparse24_linear_grad_x")
def sparse24_linear_grad_x_cases(device: str, quick: bool):
    n, k = 4096, 4096
    for dtype_name in ("fp32", "bf16"):
        dtype = _DTYPES[dtype_name]
        w24, w24_t = compress_24_transposable(torch.randn(n, k, device=device, dtype=dtype), prune=True)
        w = sparseops.decompress_24(w24)
        for m in (1, 8, 64):
            yield _grad_x_case(device, w24, w24_t, w, dtype_name, m)
