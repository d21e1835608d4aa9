"""``python -m sparseops.bench``: runs the registered cases and reports them."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import textwrap
import time
import traceback
from typing import Any, Optional, Sequence

import torch

from . import timing  # imports torch.utils.benchmark (see timing.py)
from .registry import ALL_DEVICES, DEVICES, PRIMARY, Case, discover
from .report import TABLE_WIDTH, ensure_dir, format_table, write_json, write_plots


def _parser() -> argparse.ArgumentParser:
    families = ", ".join(sorted({f for f, _ in discover()}))
    p = argparse.ArgumentParser(
        prog="python -m sparseops.bench",
        description="Times sparseops against dense PyTorch and the installed peers; prints a table and "
        "writes results.json and one speedup_<family>.png per family into --out.",
        epilog=f"families: {families}. --list shows the cases a selection would run.",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device, help=f"default: {default_device}")
    p.add_argument("--quick", action="store_true", help="small shapes and short timings (< 2 min on 2 cores)")
    p.add_argument("--family", action="append", help=f"run only this family (repeatable): {families}")
    p.add_argument("--filter", help="run only cases whose 'family/name label' contains this (case-insensitive)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads before timing (default: torch's default)")
    p.add_argument("--out", help="output folder (default: bench_results/<timestamp>/)")
    p.add_argument("--list", action="store_true", help="list the cases that would run, then exit")
    p.add_argument("--peak-gbps", type=float, help="memory-bandwidth limit to report against, instead of measuring a read stream")
    p.add_argument("--peak-gflops", type=float, help="compute limit (GFLOP/s) to report against, instead of measuring a matmul")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: quick shapes, tiny timings
    return p


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(device: str, threads: int) -> dict[str, Any]:
    import sparseops

    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "threads": threads,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "sparseops": sparseops.__version__,
        "build_info": sparseops.build_info(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _select(args: argparse.Namespace, parser: argparse.ArgumentParser):
    registry = discover()
    families = sorted({f for f, _ in registry})
    for fam in args.family or []:
        if fam not in families:
            parser.error(f"--family: expected one of {families} (got {fam!r})")
    return [(key, gen) for key, gen in registry.items() if not args.family or key[0] in args.family]


def _cases(family: str, name: str, gen, args) -> list[Case]:
    if args.device not in DEVICES.get((family, name), ALL_DEVICES):
        return []
    needle = (args.filter or "").lower()
    out = []
    for case in gen(args.device, args.quick or args.smoke):
        if not isinstance(case, Case):
            raise TypeError(f"sparseops.bench: {family}/{name} yielded {type(case).__name__}, expected a Case")
        if needle in f"{family}/{name} {case.label}".lower():
            out.append(case)
    return out


def _run_case(family: str, name: str, case: Case, timer: timing.Timer, peaks: "_Peaks") -> list[dict[str, Any]]:
    base = {"family": family, "name": name, "label": case.label, "params": case.params, "baseline": case.baseline,
            "bound": case.bound, "bytes": case.bytes, "flops": case.flops}
    rows: dict[str, dict[str, Any]] = {}
    first_call_s: dict[str, float] = {}
    for impl, fn in case.impls.items():
        row = dict(base, impl=impl, status="ok", reason="", time_s=None, iqr_s=None, runs=None,
                   ratios={}, ratio_vs_baseline=None, gbps=None, gflops=None, pct_of_limit=None)
        rows[impl] = row
        try:
            first_call_s[impl] = _first_call(fn, timer.device)
        except NotImplementedError as exc:
            row.update(status="skipped", reason=str(exc) or type(exc).__name__)
        except Exception as exc:  # reported and counted in the exit status, the run goes on
            row.update(status="error", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    # The impls take turns, round by round, so that a slow spell of a shared machine lands on all of them
    # (their ratios are what the tables claim); an impl whose one call outlasts its whole time budget (a
    # slow reference) is timed in the first round only.
    budget, rounds = timer.settings.min_run_time, timer.rounds
    samples: dict[str, list[tuple[float, int]]] = {impl: [] for impl in first_call_s}
    for r in range(rounds):
        for impl in list(samples):
            if r > 0 and first_call_s[impl] >= budget:
                continue
            try:
                samples[impl] += timer.samples(case.impls[impl], budget / rounds)
            except Exception as exc:
                rows[impl].update(status="error", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                del samples[impl]
    times: dict[str, float] = {}
    for impl, impl_samples in samples.items():
        t = timing.Timing.of(impl_samples)
        row = rows[impl]
        times[impl] = t.median_s
        row.update(time_s=t.median_s, iqr_s=t.iqr_s, runs=t.runs)
        if case.bytes is not None:
            row["gbps"] = case.bytes / t.median_s / 1e9
            row["pct_of_limit"] = 100 * row["gbps"] / peaks.gbps()
        else:
            row["gflops"] = case.flops / t.median_s / 1e9
            row["pct_of_limit"] = 100 * row["gflops"] / peaks.gflops()
    for row in rows.values():
        if row["status"] != "ok":
            continue
        row["ratios"] = {other: t / row["time_s"] for other, t in times.items() if other != row["impl"]}
        if row["impl"] == case.baseline:
            row["ratio_vs_baseline"] = 1.0
        else:
            row["ratio_vs_baseline"] = row["ratios"].get(case.baseline)
    return list(rows.values())


def _first_call(fn, device: str) -> float:
    """Seconds of the untimed first call (reports an unavailable impl, triggers lazy initialisation)."""
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class _Peaks:
    """The machine limits, from --peak-* or measured once on first use."""

    def __init__(self, timer: timing.Timer, gbps: Optional[float], gflops: Optional[float]) -> None:
        self.timer = timer
        self._gbps = (gbps, "given with --peak-gbps") if gbps else None
        self._gflops = (gflops, "given with --peak-gflops") if gflops else None

    def gbps(self) -> float:
        if self._gbps is None:
            print("measuring the read-bandwidth reference ...", file=sys.stderr, flush=True)
            self._gbps = timing.read_bandwidth(self.timer)
        return self._gbps[0]

    def gflops(self) -> float:
        if self._gflops is None:
            print("measuring the dense-matmul peak reference ...", file=sys.stderr, flush=True)
            self._gflops = timing.matmul_peak(self.timer)
        return self._gflops[0]

    def as_dict(self) -> dict[str, Any]:
        never = (None, "not measured: no case of this kind ran")
        gbps, gbps_src = self._gbps or never
        gflops, gflops_src = self._gflops or never
        return {"gbps": gbps, "gbps_source": gbps_src, "gflops": gflops, "gflops_source": gflops_src}

    def describe(self, device: str) -> str:
        d = self.as_dict()
        bw = f"{d['gbps']:.3g} GB/s" if d["gbps"] else "-"
        if d["gflops"] and device == "cuda":
            fl = f"{d['gflops'] / 1e3:.3g} TFLOP/s"
        else:
            fl = f"{d['gflops']:.3g} GFLOP/s" if d["gflops"] else "-"
        return f"limits: memory {bw} [{d['gbps_source']}]; compute {fl} [{d['gflops_source']}]"


def _nothing_selected(args: argparse.Namespace, selected) -> str:
    """Why a selection ran no case, in the user's terms (e.g. a family whose cases are CUDA-only)."""
    what = " ".join(filter(None, [" ".join(f"--family {f}" for f in args.family or []),
                                  f"--filter {args.filter!r}" if args.filter else ""])) or "the registry"
    msg = f"sparseops.bench: nothing to run: {what} has no case on --device {args.device}"
    elsewhere = sorted({f"{f}/{n}" for (f, n), _ in selected if args.device not in DEVICES.get((f, n), ALL_DEVICES)})
    if elsewhere:
        msg += f" (only on another device: {', '.join(elsewhere)})"
    return msg + "; nothing was measured or written. --list shows what a selection runs."


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: expected a visible CUDA device (torch.cuda.is_available() is False)")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: expected a positive count (got {args.threads})")
        torch.set_num_threads(args.threads)
    for flag in ("peak_gbps", "peak_gflops"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')}: expected a positive number (got {value})")
    threads = torch.get_num_threads()
    selected = _select(args, parser)

    if args.list:
        for (family, name), gen in selected:
            for case in _cases(family, name, gen, args):
                print(f"{family}/{name}  {case.label}  [{', '.join(case.impls)}; baseline {case.baseline}]")
        return 0

    settings = timing.SMOKE if args.smoke else timing.QUICK if args.quick else timing.FULL
    torch.manual_seed(0)
    timer = timing.Timer(args.device, threads, settings)
    peaks = _Peaks(timer, args.peak_gbps, args.peak_gflops)
    machine = _machine(args.device, threads)
    out_dir = args.out or os.path.join("bench_results", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))

    results: list[dict[str, Any]] = []
    json_path = os.path.join(out_dir, "results.json")

    def payload(complete: bool) -> dict[str, Any]:
        return {
            "schema": 1,
            "complete": complete,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "argv": list(sys.argv[1:] if argv is None else argv),
            "machine": machine,
            "settings": {"quick": args.quick, "smoke": args.smoke, "family": args.family, "filter": args.filter,
                         "timing": timer.method, "timing_settings": settings.__dict__},
            "peaks": peaks.as_dict(),
            "results": results,
        }

    for gi, ((family, name), gen) in enumerate(selected, 1):
        cases = _cases(family, name, gen, args)
        for ci, case in enumerate(cases, 1):
            print(f"[{ci}/{len(cases)}] {family}/{name} {case.label}  (op {gi} of {len(selected)})",
                  file=sys.stderr, flush=True)
            results += _run_case(family, name, case, timer, peaks)
        del cases
        if args.device == "cuda":
            torch.cuda.empty_cache()
        # Rewritten after every registration, so a run stopped by a time limit keeps what it measured.
        if results:
            ensure_dir(out_dir)
            write_json(json_path, payload(complete=False))
    if not results:
        print(_nothing_selected(args, selected), file=sys.stderr)
        return 2

    header = [
        f"sparseops {machine['sparseops']} benchmark: device {args.device} ({machine['device_name']}), "
        f"{threads} CPU threads (torch.set_num_threads), torch {machine['torch']}",
        f"timing: {timer.method}",
        peaks.describe(args.device),
    ]
    load = machine["load_average_at_start"]
    if load is not None and load > 0.5 and args.device == "cpu":
        header.append(f"note: the 1-minute load average was {load:.2f} at start ({os.cpu_count()} CPUs): "
                      "other processes competed for the CPUs, so these timings are noisy")
    header.append("")
    print("\n".join(textwrap.fill(h, TABLE_WIDTH, subsequent_indent="  ") if h else h for h in header))
    print(format_table(results, args.device))
    for r in results:
        if r["status"] == "error":
            print(f"\nERROR {r['family']}/{r['name']} {r['label']} {r['impl']}:\n{r['traceback']}")

    write_json(json_path, payload(complete=True))
    title = f"sparseops on {args.device} ({machine['device_name']}, {threads} threads)"
    plots, note = write_plots(out_dir, results, title)
    print(f"\nwrote {json_path}")
    for path in plots:
        print(f"wrote {path}")
    if note:
        print(f"note: {note}")
    errors = sum(r["status"] == "error" for r in results)
    if errors:
        print(f"{errors} impl(s) failed; see ERROR above", file=sys.stderr)
    return 1 if errors else 0


