"""Modules built on sparseops kernels."""
from .block_sparse_attention import BlockSparseAttention
from .sparse_linear import (
    InputNorms,
    NMSparseLinear,
    SparseLinear24,
    SparsifyReport,
    collect_input_norms,
    set_gradient_flow_step,
    sparsify_,
)

__all__ = [
    "BlockSparseAttention",
    "InputNorms",
    "NMSparseLinear",
    "SparseLinear24",
    "SparsifyReport",
    "collect_input_norms",
    "set_gradient_flow_step",
    "sparsify_",
]
