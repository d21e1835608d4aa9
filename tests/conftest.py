"""Shared test fixtures and named skip markers. Nothing here queries the GPU at import time: the
CUDA check runs when a marked test is collected, so collection works on machines without a GPU."""
from __future__ import annotations

import os
import time

import pytest
import torch

_START = time.monotonic()


def _cuda_ready() -> bool:
    import sparseops

    return sparseops.cuda_compiled() and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if any("requires_cuda" in item.keywords for item in items) and not _cuda_ready():
        skip = pytest.mark.skip(reason=_CUDA_SKIP_REASON)
        for item in items:
            if "requires_cuda" in item.keywords:
                item.add_marker(skip)


_CUDA_SKIP_REASON = "needs a GPU and a CUDA build of sparseops"


def pytest_terminal_summary(terminalreporter):
    """One line on why most tests skip here (under -q pytest gives no reasons)."""
    skipped = terminalreporter.stats.get("skipped", [])
    cuda = sum(1 for rep in skipped if _CUDA_SKIP_REASON in str(rep.longrepr))
    if cuda:
        terminalreporter.write_line(f"{cuda} of the {len(skipped)} skipped tests are CUDA tests, skipped here: each "
                                    f"{_CUDA_SKIP_REASON} (bench/gpu_check.sh runs them on a GPU machine)")


def pytest_runtest_teardown(item, nextitem):
    # SPARSEOPS_TEST_BUDGET_S: stop cleanly (failures and summary still reported) once this many
    # seconds have passed; bench/gpu_check.sh uses it so that a time limit does not lose the report.
    budget = float(os.environ.get("SPARSEOPS_TEST_BUDGET_S") or 0)
    if budget and time.monotonic() - _START > budget:
        item.session.shouldstop = f"SPARSEOPS_TEST_BUDGET_S={budget:g} s spent"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def devices():
    """Parametrisation over devices: CPU always, CUDA as a marked (skippable) case."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]
