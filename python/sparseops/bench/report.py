"""Reporting: the text table, the JSON result file and the PNG plot."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from .registry import PRIMARY


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_throughput(r: dict[str, Any], device: str) -> str:
    if r.get("gbps") is not None:
        return f"{r['gbps']:.3g} GB/s"
    if r.get("gflops") is not None:
        if device == "cuda":
            return f"{r['gflops'] / 1e3:.3g} TFLOP/s"
        return f"{r['gflops']:.3g} GFLOP/s"
    return ""


def _ratio(x: Optional[float]) -> str:
    if x is None:
        return ""
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def format_table(results: list[dict[str, Any]], device: str) -> str:
    """One row per (case, impl). ``speedup`` = baseline time / this impl's time (>1: faster than the
    primary baseline, marked *); ``vs others`` = the same ratio against every other impl of the case."""
    header = ["case", "params", "impl", "time", "speedup", "vs others", "throughput", "% limit"]
    rows: list[list[str]] = []
    last_case = None
    for r in results:
        case_key = (r["family"], r["name"], r["label"])
        first = case_key != last_case
        last_case = case_key
        impl = r["impl"] + ("*" if r["impl"] == r["baseline"] else "")
        lead = [f"{r['family']}/{r['name']}" if first else "", r["label"] if first else "", impl]
        if r["status"] != "ok":
            rows.append(lead + [r["status"], "", r["reason"][:60], "", ""])
            continue
        others = ", ".join(
            f"{name} {_ratio(x)}" for name, x in r["ratios"].items() if name not in (r["impl"], r["baseline"])
        )
        pct = "" if r["pct_of_limit"] is None else f"{r['pct_of_limit']:.1f}%"
        rows.append(
            lead
            + [fmt_time(r["time_s"]), _ratio(r["ratio_vs_baseline"]), others, fmt_throughput(r, device), pct]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {3, 4, 6, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    out.append(
        "* primary baseline. speedup / vs others = other impl's time / this impl's time (>1: this impl is faster). "
        "% limit = throughput / the machine limit above."
    )
    if any((r.get("pct_of_limit") or 0) > 100 for r in results):
        out.append("% limit above 100: that case's data stays in the caches between calls; the copy reference's does not.")
    return "\n".join(out)


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")


def write_plot(path: str, results: list[dict[str, Any]], title: str) -> Optional[str]:
    """Bar chart of sparseops' speedup over each peer, per case. Returns a note instead of writing
    when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.ticker
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (pip install 'sparseops[bench]'); the JSON file has all results"

    cases: list[tuple[str, dict[str, float]]] = []
    for r in results:
        if r["impl"] == PRIMARY and r["status"] == "ok":
            ratios = {k: v for k, v in r["ratios"].items() if k != PRIMARY and v is not None}
            if ratios:
                cases.append((f"{r['family']}/{r['name']}\n{r['label']}", ratios))
    if not cases:
        return "no sparseops result with a timed peer: no plot written"

    peers: list[str] = []
    for _, ratios in cases:
        peers += [p for p in ratios if p not in peers]
    baselines = {r["baseline"] for r in results if r["impl"] == PRIMARY}
    height = 0.8 / len(peers)
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.55 * len(cases) * max(1, len(peers) * 0.6)))
    every: list[float] = [1.0]
    for j, peer in enumerate(peers):
        ys, xs = [], []
        for i, (_, ratios) in enumerate(cases):
            if peer in ratios:
                ys.append(i + (j - (len(peers) - 1) / 2) * height)
                xs.append(ratios[peer])
        every += xs
        # Bars grow from 1x: right = sparseops faster, left = slower.
        label = f"vs {peer}" + (" (primary baseline)" if peer in baselines else "")
        bars = ax.barh(ys, [x - 1.0 for x in xs], left=1.0, height=height, label=label)
        ax.bar_label(bars, labels=[f"{x:.2f}x" for x in xs], fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    lo, hi = min(every) / 1.6, max(every) * 2.0  # room for the value labels
    ax.set_xlim(lo, hi)
    nice = [m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)]
    ax.set_xticks([t for t in nice if lo <= t <= hi], [f"{t:g}x" for t in nice if lo <= t <= hi])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(range(len(cases)), [name for name, _ in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("sparseops speedup (peer time / sparseops time; >1 = sparseops faster)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
