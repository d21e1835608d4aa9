"""Loads the native extension loudly: a broken or missing build is an ImportError that says what was
tried and how to fix it, never a warning."""
from __future__ import annotations

import importlib
import os

import torch  # noqa: F401  (loads libtorch before our extension, which links against it)


def load_extension():
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
