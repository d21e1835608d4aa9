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


TABLE_WIDTH = 120


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(results: list[dict[str, Any]], device: str) -> str:
    """A block per case: its name and label on one line, then one row per impl with its time, its speedup
    over the case's primary baseline (marked *), its throughput and the share of the machine's limit.
    Ratios against every other impl are in the JSON file. Fits in TABLE_WIDTH columns."""
    header = ["impl", "time", "speedup", "throughput", "% limit"]
    blocks: list[tuple[str, list[list[str]]]] = []
    last_case = None
    for r in results:
        case_key = (r["family"], r["name"], r["label"])
        if case_key != last_case:
            blocks.append((f"{r['family']}/{r['name']}: {r['label']}", []))
            last_case = case_key
        impl = "  " + r["impl"] + ("*" if r["impl"] == r["baseline"] else "")
        if r["status"] != "ok":
            blocks[-1][1].append([impl, f"{r['status']}: {r['reason']}"])
            continue
        pct = "" if r["pct_of_limit"] is None else f"{r['pct_of_limit']:.1f}%"
        blocks[-1][1].append([impl, fmt_time(r["time_s"]), _ratio(r["ratio_vs_baseline"]), fmt_throughput(r, device), pct])
    rows = [row for _, block in blocks for row in block if len(row) == len(header)]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        if len(cells) == 2:  # skipped / error: the reason spans the numeric columns
            return _clip(cells[0].ljust(widths[0]) + "  " + cells[1], TABLE_WIDTH)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "-" * min(TABLE_WIDTH, len(line(header)) + 2)]
    for title, block in blocks:
        out.append(_clip(title, TABLE_WIDTH))
        out += [line(row) for row in block]
    out.append("* primary baseline; speedup = its time / this impl's time (>1: faster); % limit = throughput / machine limit")
    if any((r.get("pct_of_limit") or 0) > 100 for r in results):
        out.append("% limit above 100: that case's data stays in the caches between calls; the read reference's does not")
    return "\n".join(out)


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")


def _without_dtype(label: str, dtype: Optional[str]) -> str:
    return " ".join(tok for tok in label.split() if tok != dtype) if dtype else label


def write_plots(out_dir: str, results: list[dict[str, Any]], title: str) -> tuple[list[str], Optional[str]]:
    """One PNG per family, ``speedup_<family>.png``: sparseops' speedup over each peer (log scale, bars
    from 1x), a row per case and a panel per dtype, so the same shape lines up across dtypes. Returns
    the paths written and a note when nothing could be written (matplotlib missing, no timed peer)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return [], "matplotlib is not installed: no plot written (pip install 'sparseops[bench]'); the JSON file has all results"

    by_family: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r["impl"] == PRIMARY and r["status"] == "ok" and any(k != PRIMARY and v for k, v in r["ratios"].items()):
            by_family.setdefault(r["family"], []).append(r)
    written = []
    for family, rows in by_family.items():
        path = os.path.join(out_dir, f"speedup_{family}.png")
        _plot_family(plt, matplotlib.ticker, path, rows, f"{title}: {family}")
        written.append(path)
    return written, None if written else "no sparseops result with a timed peer: no plot written"


def _bar_label(x: float) -> str:
    return f"{x:.2g}x" if x < 10 else f"{x:.0f}x"


def _plot_family(plt, ticker, path: str, rows: list[dict[str, Any]], title: str) -> None:
    import textwrap

    def case_of(r: dict[str, Any]) -> str:
        return f"{r['name']}: {_without_dtype(r['label'], r['params'].get('dtype'))}"

    def peers_of(r: dict[str, Any]) -> list[str]:
        return [p for p, v in r["ratios"].items() if p != PRIMARY and v]

    dtypes = list(dict.fromkeys(r["params"].get("dtype") for r in rows))
    cases = list(dict.fromkeys(case_of(r) for r in rows))
    peers = list(dict.fromkeys(p for r in rows for p in peers_of(r)))
    colors = {p: f"C{i % 10}" for i, p in enumerate(peers)}
    # A case's bars share its row: as many slots as that case has peers (in any dtype).
    slots = {c: [p for p in peers if any(case_of(r) == c and p in peers_of(r) for r in rows)] for c in cases}
    fig_h = min(1.6 + 0.42 * sum(max(1, len(v)) for v in slots.values()), 30.0)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(3.2 + 3.4 * len(dtypes), fig_h), sharey=True, squeeze=False)
    every = [1.0] + [v for r in rows for p, v in r["ratios"].items() if p != PRIMARY and v]
    lo, hi = min(every) / 1.5, max(every) * 2.5  # room for the value labels
    nice = [m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)]
    shown: set[str] = set()
    for ax, dtype in zip(axes[0], dtypes):
        for r in rows:
            if r["params"].get("dtype") != dtype:
                continue
            case = case_of(r)
            row_peers = slots[case]
            height = 0.8 / len(row_peers)
            for j, peer in enumerate(row_peers):
                x = r["ratios"].get(peer)
                if not x:
                    continue
                y = cases.index(case) + (j - (len(row_peers) - 1) / 2) * height
                bar = ax.barh([y], [x - 1.0], left=1.0, height=height * 0.9, color=colors[peer],
                              label=None if peer in shown else f"vs {peer}")
                shown.add(peer)
                ax.bar_label(bar, labels=[_bar_label(x)], fontsize=6.5, padding=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xticks([t for t in nice if lo <= t <= hi], [f"{t:g}x" for t in nice if lo <= t <= hi], fontsize=7)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(dtype or "", fontsize=9)
        ax.grid(axis="x", linewidth=0.3)
    axes[0][0].set_yticks(range(len(cases)), [textwrap.fill(c, 32) for c in cases], fontsize=7)
    axes[0][0].set_ylim(len(cases) - 0.5, -0.5)
    handles = [h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in axes[0] for lab in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(peers)), fontsize=7, frameon=False)
    fig.suptitle(f"{title}\nsparseops speedup = peer time / sparseops time (>1: sparseops faster)", fontsize=9)
    legend_rows = (len(peers) + 2) // 3
    fig.tight_layout(rect=(0, 0.03 + 0.18 * legend_rows / fig_h, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
