"""Timing: ``torch.utils.benchmark`` on CPU, CUDA events on GPU; and the machine's reference limits
(read bandwidth, dense-matmul peak) measured the same way."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Optional

import logging

import torch

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on
# machines without a GPU when first imported: irrelevant here, so quieted for the import.
_cpp_ext_log = logging.getLogger("torch.utils.cpp_extension")
_level = _cpp_ext_log.level
_cpp_ext_log.setLevel(logging.ERROR)
try:
    import torch.utils.benchmark as torch_benchmark
finally:
    _cpp_ext_log.setLevel(_level)


@dataclass(frozen=True)
class TimingSettings:
    min_run_time: float  # seconds of timed calls per impl (CPU: blocked_autorange; GPU: reps budget)
    rounds: int  # CPU: the impls of a case are timed in turn this many times, min_run_time / rounds each
    gpu_warmup: int  # untimed calls before the GPU measurement
    gpu_min_reps: int
    gpu_max_reps: int
    stream_bytes: int  # size of the tensor the read-bandwidth reference streams
    matmul_n: int  # n of the n x n x n dense matmul peak reference


# quick: everything registered must finish in under 2 minutes on 2 cores. smoke: for tests.
FULL = TimingSettings(rounds=3, min_run_time=0.5, gpu_warmup=10, gpu_min_reps=20, gpu_max_reps=2000, stream_bytes=1 << 28, matmul_n=4096)
QUICK = TimingSettings(rounds=2, min_run_time=0.1, gpu_warmup=3, gpu_min_reps=10, gpu_max_reps=500, stream_bytes=1 << 26, matmul_n=1024)
SMOKE = TimingSettings(rounds=1, min_run_time=0.005, gpu_warmup=1, gpu_min_reps=3, gpu_max_reps=20, stream_bytes=1 << 22, matmul_n=256)


@dataclass(frozen=True)
class Timing:
    median_s: float
    iqr_s: float
    runs: int  # timed calls in total

    @staticmethod
    def of(samples: list[tuple[float, int]]) -> "Timing":
        """From (seconds per call, calls) samples: the median and IQR per call over the samples."""
        times = [t for t, _ in samples]
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        return Timing(median_s=statistics.median(times), iqr_s=q[2] - q[0], runs=sum(c for _, c in samples))


class Timer:
    """Times zero-argument callables on one device. Nothing but the call itself is inside the timed
    region: inputs are bound beforehand, results are not copied or checked."""

    def __init__(self, device: str, threads: int, settings: TimingSettings) -> None:
        self.device = device
        self.threads = threads
        self.settings = settings
        self._flush: Optional[torch.Tensor] = None
        if device == "cuda":
            # Twice the L2 so that zeroing it evicts everything the previous call left there.
            l2 = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or (64 << 20))
            self._flush = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")

    @property
    def rounds(self) -> int:
        """Interleaved rounds per case: CPU only (GPU timings are steady, and the one-call GPU check has
        no time for more warm-ups)."""
        return self.settings.rounds if self.device == "cpu" else 1

    @property
    def method(self) -> str:
        if self.device == "cuda":
            return (
                "CUDA events around each call, median over reps; "
                f"{self.settings.gpu_warmup} warm-up calls excluded; L2 flushed (a {self._flush.numel() >> 20} MiB "
                "buffer zeroed) before every timed call, outside the timed region"
            )
        return (
            f"torch.utils.benchmark.Timer.blocked_autorange, {self.settings.min_run_time} s per impl in "
            f"{self.settings.rounds} interleaved rounds (a case's impls take turns, so a slow spell of a shared "
            f"machine weighs on all of them alike), median per call over the blocks, num_threads={self.threads}; "
            "caches warm"
        )

    def __call__(self, fn: Callable[[], object]) -> Timing:
        return Timing.of(self.samples(fn, self.settings.min_run_time))

    def samples(self, fn: Callable[[], object], run_time: float) -> list[tuple[float, int]]:
        """About run_time seconds of timed calls, as (seconds per call, calls) samples: CPU blocks of
        blocked_autorange, or single CUDA calls."""
        if self.device == "cuda":
            return [(t, 1) for t in self._time_cuda(fn, run_time)]
        timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=self.threads)
        m = timer.blocked_autorange(min_run_time=run_time)
        return [(t, m.number_per_run) for t in m.times]

    def _time_cuda(self, fn: Callable[[], object], run_time: float) -> list[float]:
        s = self.settings
        torch.cuda.synchronize()
        for _ in range(s.gpu_warmup):
            fn()
        torch.cuda.synchronize()
        # One timed call to size the number of reps to the time budget.
        one = self._cuda_reps(fn, 1)[0]
        reps = int(min(s.gpu_max_reps, max(s.gpu_min_reps, run_time / max(one, 1e-7))))
        return self._cuda_reps(fn, reps)

    def _cuda_reps(self, fn: Callable[[], object], reps: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            self._flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends)]


def read_bandwidth(timer: Timer) -> tuple[float, str]:
    """GB/s of reading a tensor far larger than the caches on the timer's device (all threads), and how:
    the fastest of three read-only reductions (``torch.sum``, ``torch.amax``, ``torch.dot(t, t)``; on
    one CPU ``torch.sum`` alone was ~20-35% below the other two). A read-only stream is the limit for
    kernels that stream a weight or a cache and write little (a copy's read + write rate is lower on
    most CPUs, which would flatter them)."""
    nbytes = timer.settings.stream_bytes
    if timer.device == "cuda":
        nbytes = max(nbytes, 1 << 30)  # far beyond any L2; a few ms on a GPU
    src = torch.randn(nbytes // 4, device=timer.device)
    readers = {"torch.sum": lambda: torch.sum(src), "torch.amax": lambda: torch.amax(src),
               "torch.dot": lambda: torch.dot(src, src)}
    rates = {name: src.nbytes / timer(fn).median_s / 1e9 for name, fn in readers.items()}
    best = max(rates, key=rates.get)
    return rates[best], f"measured: read of a {src.nbytes >> 20} MiB fp32 tensor ({best}, fastest of {len(rates)}) on {timer.device}"


def matmul_peak(timer: Timer) -> tuple[float, str]:
    """GFLOP/s of a dense n x n x n matmul (fp32 on CPU, bf16 on CUDA) on the timer's device, and how."""
    n = 8192 if timer.device == "cuda" else timer.settings.matmul_n  # small GPU matmuls miss the peak
    dtype = torch.bfloat16 if timer.device == "cuda" else torch.float32
    a = torch.randn(n, n, device=timer.device, dtype=dtype)
    b = torch.randn(n, n, device=timer.device, dtype=dtype)
    out = torch.empty(n, n, device=timer.device, dtype=dtype)
    t = timer(lambda: torch.mm(a, b, out=out))
    gflops = 2 * n**3 / t.median_s / 1e9
    name = str(dtype).replace("torch.", "")
    return gflops, f"measured: torch.mm {n}x{n}x{n} {name} on {timer.device}"
