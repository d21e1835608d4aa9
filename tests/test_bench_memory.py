"""sparseops.bench.memory.peak_extra_mib: the peak extra memory the module bench reports per impl."""
from __future__ import annotations

import sys

import pytest
import torch

from sparseops.bench.memory import peak_extra_mib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_extra_counts_a_temporary_and_not_what_existed_before():
    kept = torch.ones(32 << 18)  # 32 MiB allocated before: not extra

    def step():
        tmp = torch.ones(64 << 18)  # 64 MiB alive during the call only
        return float(tmp[0] + kept[0])

    peak = peak_extra_mib(step, "cpu")
    if peak is None:
        pytest.skip("/proc/self/clear_refs not writable here")
    assert 60 <= peak < 90, peak
    small = peak_extra_mib(lambda: float(kept.sum()), "cpu")
    assert small < 16, small
