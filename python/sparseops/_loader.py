"""Loads the native extension loudly: a broken or missing build, or a build made for another torch, is
an ImportError that says what was found and how to fix it, never a warning."""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch  # noqa: F401  (loads libtorch before our extension, which links against it)

_REBUILD = ("Rebuild sparseops against the torch you run: `pip install --no-build-isolation --force-reinstall "
            "--no-deps <sparseops checkout or sdist>` in this environment (or install the torch it was built with)")


def torch_mismatch(built_torch: str, built_cuda: Optional[str], running_torch: str,
                   running_cuda: Optional[str]) -> Optional[str]:
    """The error for running an extension built against ``built_torch`` (CUDA ``built_cuda``) under
    ``running_torch`` (CUDA ``running_cuda``), or None when they are the same build of torch. The C++
    ABI and library set of torch can change with any release or CUDA flavour, so only an exact match
    is accepted."""
    if built_torch == running_torch and built_cuda == running_cuda:
        return None
    return (f"sparseops: this build of sparseops was compiled against torch {built_torch} "
            f"(CUDA {built_cuda or 'none: a CPU-only torch'}), but torch {running_torch} "
            f"(CUDA {running_cuda or 'none: a CPU-only torch'}) is imported. {_REBUILD}.")


def _check_built_against_this_torch() -> None:
    try:
        from . import _build_config
    except ImportError:  # a build from before _build_config existed: _C's own load decides
        return
    problem = torch_mismatch(_build_config.TORCH_VERSION, _build_config.TORCH_CUDA_VERSION,
                             torch.__version__, torch.version.cuda)
    if problem:
        raise ImportError(problem)


def load_extension():
    _check_built_against_this_torch()
    try:
        return importlib.import_module("sparseops._C")
    except ImportError as exc:
        here = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            "sparseops: could not load the native extension sparseops._C from "
            f"{here} ({exc}). Build and install the package from source with "
            "`pip install --no-build-isolation .` in an environment that already has torch; "
            "the extension must be built against the torch that is imported "
            f"(now {torch.__version__})."
        ) from exc
