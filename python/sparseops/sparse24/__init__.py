"""2:4 / N:M structured sparsity: the Python face of ``csrc/sparse24/``, one module per job.

- :mod:`.formats` — ``Sparse24``, ``nm_mask``, ``compress_24``, ``decompress_24``;
- :mod:`.linear` — ``sparse24_linear`` (CPU kernel, routing to CUDA) and ``compress_24_transposable``;
- :mod:`.linear_cuda` — the CUDA GEMM backends (GEMV, CUTLASS, cuSPARSELt) and ``cuda_backend_choice``;
- :mod:`.training` — SR-STE (``nm_srste``), ``transposable_mask_24``, ``GradientFlowSchedule``.

Each module registers the fake kernels and autograd of its ops on import; importing this package
registers them all. References: :mod:`sparseops.reference` (``sparse24``, ``linear24``, ``training``).
"""
from __future__ import annotations

from .formats import Sparse24, compress_24, decompress_24, nm_mask
from .linear import compress_24_transposable, sparse24_linear
from .linear_cuda import cuda_backend_choice
from .training import GradientFlowSchedule, nm_srste, transposable_mask_24

__all__ = [
    "GradientFlowSchedule",
    "Sparse24",
    "compress_24",
    "compress_24_transposable",
    "cuda_backend_choice",
    "decompress_24",
    "nm_mask",
    "nm_srste",
    "sparse24_linear",
    "transposable_mask_24",
]
