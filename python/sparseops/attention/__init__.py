"""Block-sparse attention: block masks (FlexAttention semantics) and their builders. Kernels in
``csrc/attention/``."""
from .block_mask import (BlockMask, block_mask_from_dense, causal_block_mask, full_block_mask,
                         sliding_window_block_mask)

__all__ = ["BlockMask", "block_mask_from_dense", "causal_block_mask", "full_block_mask", "sliding_window_block_mask"]
