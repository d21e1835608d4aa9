"""sparseops: sparse kernels for PyTorch (CPU and CUDA), used as ``torch.ops.sparseops.*`` or through
the typed functions re-exported here (and the modules in :mod:`sparseops.nn`)."""
from __future__ import annotations

from ._build import build_info, cuda_compiled
from .sparse24 import (
    GradientFlowSchedule,
    Sparse24,
    compress_24,
    compress_24_transposable,
    cuda_backend_choice,
    decompress_24,
    nm_mask,
    nm_srste,
    sparse24_linear,
    transposable_mask_24,
)
from .attention import (BlockMask, block_mask_from_dense, block_mask_from_flex, block_sparse_attention,
                        causal_block_mask, full_block_mask, register_transformers, sliding_window_block_mask,
                        topk_block_mask)
from .codebook import (codebook_ema_update_, codebook_grad, codebook_lookup, codebook_perplexity,
                       codebook_usage, codebook_utilisation, vq_ste)
from . import nn  # noqa: F401
from . import ot  # noqa: F401  (entropic optimal transport: sparseops.ot.sinkhorn, ...)

__version__ = build_info()["version"]

__all__ = [
    "BlockMask",
    "block_mask_from_dense",
    "block_mask_from_flex",
    "block_sparse_attention",
    "causal_block_mask",
    "full_block_mask",
    "sliding_window_block_mask",
    "topk_block_mask",
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
    "ot",
    "register_transformers",
    "sparse24_linear",
    "transposable_mask_24",
]
