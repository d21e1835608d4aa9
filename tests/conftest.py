"""Shared test fixtures and named skip markers. Nothing here queries the GPU at import time: the
CUDA check runs when a marked test is collected, so collection works on machines without a GPU."""
from __future__ import annotations

import pytest
import torch


def _cuda_ready() -> bool:
    import sparseops

    return sparseops.cuda_compiled() and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if any("requires_cuda" in item.keywords for item in items) and not _cuda_ready():
        skip = pytest.mark.skip(reason="needs a GPU and a CUDA build of sparseops")
        for item in items:
            if "requires_cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def devices():
    """Parametrisation over devices: CPU always, CUDA as a marked (skippable) case."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
