"""The strongest dense CPU GEMV/GEMM a user could pick instead of a 2:4 layer, as benchmark peers.

``F.linear`` on CPU goes through MKL, which is weak on AMD CPUs at small M; so the 2:4 cases also time:

* ``onednn_prepacked``: torch's oneDNN linear (``torch.ops.mkldnn._linear_pointwise``) on a weight
  reordered once for the case's batch size (what ``torch.compile`` with freezing runs); fp32 and bf16
  (fp16 needs AVX512-FP16 or AVX-NE-CONVERT).
* ``numpy_openblas``: numpy's ``x @ W.T`` (OpenBLAS sgemv/sgemm), fp32 only, with OpenBLAS limited to
  torch's thread count. The OpenBLAS kernel it ran (its ``architecture``) goes in the case's params, and
  so do ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` when set: they are read when numpy loads, so a
  machine that sets them must run the bench with them unset (``env -u OPENBLAS_CORETYPE ...``) to
  measure OpenBLAS's own choice.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import Tensor

from sparseops.bench import unavailable

_OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def onednn_prepacked(x: Tensor, w: Tensor) -> Callable[[], object]:
    """``x @ w.T`` by oneDNN with ``w`` reordered for ``x``'s row count (the reorder is not timed)."""
    if x.device.type != "cpu":
        return unavailable("oneDNN prepacked linear: CPU only")
    if not torch.backends.mkldnn.is_available():
        return unavailable("oneDNN prepacked linear: this torch has no oneDNN")
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
        run = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # noqa: E731
        run()
    except RuntimeError as exc:  # e.g. fp16 without AVX512-FP16 / AVX-NE-CONVERT
        return unavailable(f"oneDNN prepacked linear: {str(exc).splitlines()[0][:100]}")
    return run


def numpy_openblas(x: Tensor, w: Tensor) -> Callable[[], object]:
    """``x @ w.T`` in numpy (OpenBLAS), fp32 on CPU only, on as many threads as torch uses."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return unavailable("numpy/OpenBLAS: fp32 on the CPU only")
    try:
        import numpy as np  # noqa: F401
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        return unavailable(f"numpy/OpenBLAS: {exc.name} not installed (pip install numpy threadpoolctl)")
    xn, wn = x.numpy(), w.numpy()
    threads = torch.get_num_threads()

    def run() -> object:
        with threadpool_limits(limits=threads, user_api="blas"):
            return xn @ wn.T

    return run


def openblas_params() -> dict[str, Any]:
    """Which OpenBLAS numpy loaded (kernel architecture, version) and the environment that steers it."""
    try:
        from threadpoolctl import threadpool_info
        import numpy as np

        np.ones(1) @ np.ones(1)  # loads the BLAS
        blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    except ImportError:
        return {}
    info: dict[str, Any] = {}
    if blas:
        info["openblas_kernel"] = blas[0].get("architecture")
        info["openblas_version"] = blas[0].get("version")
    info.update({k.lower(): os.environ[k] for k in _OPENBLAS_ENV if k in os.environ})
    return info
