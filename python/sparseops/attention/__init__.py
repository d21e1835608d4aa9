"""Block-sparse attention: block masks (FlexAttention semantics) and their builders, the attention op
(forward and backward, CPU and CUDA), top-k block selection and the transformers integration. Kernels in ``csrc/attention/``."""
from .block_mask import (BlockMask, block_mask_from_dense, block_mask_from_flex, causal_block_mask, full_block_mask,
                         sliding_window_block_mask)
from .block_sparse import block_sparse_attention
from .topk import topk_block_mask
from .transformers_integration import register_transformers

__all__ = [
    "BlockMask",
    "block_mask_from_dense",
    "block_mask_from_flex",
    "block_sparse_attention",
    "causal_block_mask",
    "full_block_mask",
    "register_transformers",
    "sliding_window_block_mask",
    "topk_block_mask",
]
