"""Pure-PyTorch references for every sparseops op: readable first, the oracle the tests compare to."""
from .linear24 import sparse24_linear_ref
from .sparse24 import compress_24_ref, decompress_24_ref, nm_mask_ref
from .training import nm_srste_backward_ref, nm_srste_ref, transposable_mask_24_ref, transposable_patterns_ref

__all__ = ["compress_24_ref", "decompress_24_ref", "nm_mask_ref", "sparse24_linear_ref"]
__all__ += ["nm_srste_backward_ref", "nm_srste_ref", "transposable_mask_24_ref", "transposable_patterns_ref"]
from .attention import block_sparse_attention_ref, token_mask_ref, topk_block_mask_ref

__all__ += ["block_sparse_attention_ref", "token_mask_ref", "topk_block_mask_ref"]

from .ot import ot_dual_ref, ot_newton_cg_ref, ot_plan_ref, ot_sparse_plan_ref, sinkhorn_log_ref

__all__ += ["ot_dual_ref", "ot_newton_cg_ref", "ot_plan_ref", "ot_sparse_plan_ref", "sinkhorn_log_ref"]

from .codebook import codebook_ema_update_ref, codebook_grad_ref, codebook_lookup_ref, codebook_usage_ref

__all__ += ["codebook_ema_update_ref", "codebook_grad_ref", "codebook_lookup_ref", "codebook_usage_ref"]
