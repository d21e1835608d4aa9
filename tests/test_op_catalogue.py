"""Guard for every op in torch.ops.sparseops: each one has a CPU kernel, a fake (meta) kernel, an opcheck
test somewhere in tests/, and -- where this build compiled CUDA -- a CUDA kernel. A new op that skips
any of these fails here, whichever family it belongs to."""
from __future__ import annotations

import pathlib
import re

import pytest
import torch
from torch._library.simple_registry import singleton as _python_registry

import sparseops

# Ops that exist only on CUDA, with the reason. Everything else must have a CPU kernel.
CUDA_ONLY = {
    "sparse24_linear_cutlass": "wraps the CUTLASS sm80 tensor-core SparseGemm",
    "compress_24_cusparselt": "produces cuSPARSELt's opaque device format",
    "sparse24_linear_cusparselt": "wraps cuSPARSELt",
}

TESTS_DIR = pathlib.Path(__file__).parent
# opcheck(<anything>.<op_name>, ...) anywhere in tests/ counts as that op's opcheck test.
_OPCHECK_CALL = re.compile(r"opcheck\(\s*[\w.]*?(\w+)\s*,")


def sparseops_ops() -> list[str]:
    names = {n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sparseops::")}
    return sorted(names)


def opchecked_ops() -> set[str]:
    found: set[str] = set()
    for path in TESTS_DIR.glob("test_*.py"):
        found.update(_OPCHECK_CALL.findall(path.read_text()))
    return found


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparseops::{op}", key)


def has_fake(op: str) -> bool:
    entry = _python_registry.find(f"sparseops::{op}")
    return entry.fake_impl.kernel is not None or has_kernel(op, "Meta")


def test_catalogue_is_not_empty():
    assert {"nm_mask", "compress_24", "decompress_24"} <= set(sparseops_ops())


@pytest.mark.parametrize("op", sparseops_ops())
def test_op_is_complete(op):
    problems = []
    if op not in CUDA_ONLY and not has_kernel(op, "CPU"):
        problems.append("no CPU kernel (add one, or list it in CUDA_ONLY with the reason)")
    if op in CUDA_ONLY and not sparseops.cuda_compiled():
        pass  # a CPU-only build has no kernel for it, by design
    elif sparseops.cuda_compiled() and not has_kernel(op, "CUDA"):
        problems.append("no CUDA kernel although this build compiled CUDA")
    if not has_fake(op):
        problems.append("no fake kernel (torch.library.register_fake or a Meta kernel)")
    if op not in opchecked_ops():
        problems.append("no torch.library.opcheck test in tests/")
    assert not problems, f"sparseops::{op}: " + "; ".join(problems)


def test_cpu_kernels_use_torchs_parallel_backend():
    """at::parallel_for is inline in torch's headers: built without -fopenmp, every CPU kernel of ours
    would silently run on one thread against an OpenMP torch."""
    torch_backend = "openmp" if "parallel backend: OpenMP" in torch.__config__.parallel_info() else "native"
    assert sparseops.build_info()["cpu_parallel_backend"] == torch_backend
