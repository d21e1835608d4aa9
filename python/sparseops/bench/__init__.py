"""The sparseops benchmark harness: ``python -m sparseops.bench [--quick] [--device cpu|cuda] ...``.

It times every registered case on one device, sparseops side by side with dense PyTorch, the pure
PyTorch reference and the optional peers that are installed (``pip install sparseops[bench]``),
prints a table (time, speedup against the case's primary baseline, GB/s or GFLOP/s and the fraction
of the machine's limit; ratios against every other impl go to the JSON file), and writes ``results.json`` and ``speedup_<family>.png``
into ``--out`` (default ``bench_results/<timestamp>/``). ``--list`` shows what would run.

Adding cases
------------
Create ``python/sparseops/bench/cases/<family>.py``; the harness imports every module in that
folder, and importing registers its cases::

    import torch
    import sparseops
    from sparseops.bench import Case, register, unavailable

    def _lookup(device: str, rows: int) -> Case:
        codes = torch.randint(0, 256, (rows, 8), device=device)        # inputs: outside timing
        book = torch.randn(256, 64, device=device)
        return Case(
            label=f"{rows}x8 codes, 256x64 book",
            params={"rows": rows, "codes": 8, "book": [256, 64]},
            impls={
                "sparseops": lambda: sparseops.codebook_lookup(codes, book),  # first, named so
                "torch": lambda: book[codes],
                "faiss": unavailable("faiss not installed"),          # reported as skipped
            },
            baseline="torch",                    # the speedup column is measured against it
            bytes=codes.nbytes + rows * 8 * 64 * 4,   # or flops=... for compute-bound jobs
        )

    @register("codebook", "lookup")              # shown as codebook/lookup; --family codebook
    def cases(device: str, quick: bool):
        for rows in ([4096] if quick else [65536, 1 << 20]):
            yield _lookup(device, rows)

Rules: each impl is a zero-argument callable with its inputs already bound, doing the job once
(no copies, no checks). Build each case in a helper function, as above: the harness collects a
registration's cases before timing them, so a lambda written in the loop body would see only the
last iteration's tensors. ``bytes`` counts each input read and each output written
once; ``flops`` counts the useful arithmetic. An impl that cannot run here raises
``NotImplementedError`` (e.g. :func:`unavailable`, or an op whose kernel was not built) and is
shown as skipped with the reason; any other exception is shown as an error and makes the run exit 1.
``quick`` shapes must keep the whole ``--quick`` run under 2 minutes on 2 CPU cores.
"""
from __future__ import annotations

from .registry import Case, Unavailable, register, unavailable

__all__ = ["Case", "Unavailable", "main", "register", "unavailable"]


def main(argv=None) -> int:
    """Runs the harness with command-line ``argv``; returns the exit status."""
    from .cli import main as _main

    return _main(argv)
