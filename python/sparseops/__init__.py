"""sparseops: sparse kernels for PyTorch (CPU and CUDA), used as ``torch.ops.sparseops.*`` or through
the typed functions re-exported here (and the modules in :mod:`sparseops.nn`)."""
from __future__ import annotations

from ._build import build_info, cuda_compiled
from .sparse24 import Sparse24, compress_24, decompress_24, nm_mask
from .linear24 import compress_24_transposable, sparse24_linear
from . import linear24_cuda  # noqa: F401  (fake kernels + autograd of the CUDA-only 2:4 GEMM ops)
from .linear24_cuda import cuda_backend_choice
from .training import GradientFlowSchedule, nm_srste, transposable_mask_24
from .codebook import (codebook_ema_update_, codebook_grad, codebook_lookup, codebook_perplexity,
                       codebook_usage, codebook_utilisation, vq_ste)
from . import nn  # noqa: F401

__version__ = build_info()["version"]

__all__ = [
    "codebook_ema_update_",
    "codebook_grad",
    "codebook_lookup",
    "codebook_perplexity",
    "codebook_usage",
    "codebook_utilisation",
    "vq_ste",
    "GradientFlowSchedule",
    "Sparse24",
    "build_info",
    "compress_24",
    "compress_24_transposable",
    "cuda_backend_choice",
    "cuda_compiled",
    "decompress_24",
    "nm_mask",
    "nm_srste",
    "nn",
    "sparse24_linear",
    "transposable_mask_24",
]
