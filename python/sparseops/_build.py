"""build_info(): what this build of sparseops contains."""
from __future__ import annotations

from typing import Any

from ._loader import load_extension

_C = load_extension()


def build_info() -> dict[str, Any]:
    """Versions and build knobs of the loaded extension.

    Keys: ``version``, ``torch_built_against`` (``torch.__version__`` of the build, e.g. ``2.14.1+cu130``;
    importing sparseops under another torch raises ImportError), ``torch_cuda_built_against``
    (``torch.version.cuda`` of the build; None for a CPU-only torch), ``build_type``, ``cuda`` (CUDA kernels
    compiled?), ``cuda_version`` (the nvcc toolkit's), ``cuda_archs``, ``cutlass_version``, ``cusparselt_version``, ``cpu_threads``
    (torch's intra-op threads now), ``cpu_parallel_backend`` (how our CPU kernels' ``at::parallel_for``
    was compiled: ``"openmp"`` like torch's default build), ``cpu_isa`` (the CPU kernel variant in use: ``"avx512"``,
    ``"avx2"`` or ``"baseline"``; set ``SPARSEOPS_CPU_ISA=avx2`` or ``=baseline`` before import to cap it)
    ``cpu_amx_bf16`` (whether the bf16 kernels that have an AMX variant use it: an AVX-512 CPU with AMX-BF16
    that granted the tile state; ``SPARSEOPS_CPU_AMX=0`` turns it off) and ``cpu_isa_compiled``.
    """
    return dict(_C.build_info())


def cuda_compiled() -> bool:
    """True when this build has CUDA kernels (independent of whether a GPU is present)."""
    return bool(_C.build_info()["cuda"])
