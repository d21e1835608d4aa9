"""Modules built on sparseops kernels."""
from .sparse_linear import (
    InputNorms,
    NMSparseLinear,
    SparseLinear24,
    collect_input_norms,
    set_gradient_flow_step,
    sparsify_,
)
from .vector_quantizer import VQOutput, VectorQuantizer

__all__ = [
    "VQOutput",
    "VectorQuantizer",
    "InputNorms",
    "NMSparseLinear",
    "SparseLinear24",
    "collect_input_norms",
    "set_gradient_flow_step",
    "sparsify_",
]
