"""Peak extra memory of one call, measured once outside the timing (for cases that report memory).

CPU: the process's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) during
the call, minus the resident size just before it, after a warm-up call and ``malloc_trim`` (so that
memory freed by the warm-up and kept by the C allocator does not hide the call's own peak). It counts
every allocation (PyTorch's, C++ ``std::vector`` scratch, BLAS buffers, other libraries'), not only
tensors. CUDA: ``torch.cuda.max_memory_allocated`` growth (the caching allocator's tensors).
"""
from __future__ import annotations

import ctypes
import gc
from typing import Callable, Optional

import torch

__all__ = ["peak_extra_mib"]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _cpu_peak(fn: Callable[[], object]) -> Optional[float]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn()
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_bytes("VmRSS:")
        out = fn()
        peak = _status_bytes("VmHWM:")
        del out
    except OSError:  # not Linux, or /proc not writable here
        return None
    return max(0, peak - base) / 2**20


def _cuda_peak(fn: Callable[[], object]) -> float:
    fn()
    torch.cuda.synchronize()
    gc.collect()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return max(0, peak - base) / 2**20


def peak_extra_mib(fn: Callable[[], object], device: str) -> Optional[float]:
    """MiB that one call of ``fn`` needs beyond what was allocated before it (its result included while
    it is alive); ``None`` where it cannot be measured."""
    return _cuda_peak(fn) if device == "cuda" else _cpu_peak(fn)
