"""sparseops: sparse kernels for PyTorch (CPU and CUDA), used as ``torch.ops.sparseops.*`` or through
the typed functions re-exported here."""
from __future__ import annotations

from ._build import build_info, cuda_compiled
from .sparse24 import Sparse24, compress_24, decompress_24, nm_mask

__version__ = build_info()["version"]

__all__ = [
    "Sparse24",
    "build_info",
    "compress_24",
    "cuda_compiled",
    "decompress_24",
    "nm_mask",
]
