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
from .vector_quantizer import VQOutput, VectorQuantizer

__all__ = [
    "BlockSparseAttention",
    "VQOutput",
    "VectorQuantizer",
    "InputNorms",
    "NMSparseLinear",
    "SparseLinear24",
    "SparsifyReport",
    "collect_input_norms",
    "set_gradient_flow_step",
    "sparsify_",
]
