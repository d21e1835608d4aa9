"""Entropic optimal transport: fused log-domain batched Sinkhorn (balanced and unbalanced) and
Sinkhorn-Newton-Sparse, and point clouds without the cost matrix, on CPU and CUDA. Kernels in ``csrc/ot/``; references in
``sparseops.reference.ot``."""
from .cost import cost_matrix
from .sinkhorn import OTResult, sinkhorn
from .newton_sparse import sinkhorn_newton_sparse
from .points import sinkhorn_points

__all__ = ["OTResult", "cost_matrix", "sinkhorn", "sinkhorn_newton_sparse", "sinkhorn_points"]
