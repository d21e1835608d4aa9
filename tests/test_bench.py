"""The benchmark harness, run in-process on tiny selections with the hidden --smoke timings. These
check what it reports and writes, never how fast anything is."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from sparseops.bench import Case, register, unavailable
from sparseops.bench.cli import main
from sparseops.bench.registry import REGISTRY

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
RESULT_KEYS = {"family", "name", "label", "params", "impl", "baseline", "status", "reason", "time_s",
               "ratios", "ratio_vs_baseline", "gbps", "gflops", "pct_of_limit"}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # --threads sets it process-wide
    yield
    torch.set_num_threads(threads)


def _load(out) -> dict:
    path = out / "results.json"
    assert path.is_file()
    return json.loads(path.read_text())


def test_quick_sparse24_case_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["--device", "cpu", "--smoke", "--threads", "1", "--filter", "decompress_24 FP32", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "[1/1] sparse24/decompress_24 fp32 1024x1024" in captured.err
    assert "1 CPU threads" in captured.out
    assert "limits: memory" in captured.out and "measured: read of" in captured.out
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.startswith("impl "))
    for column in ("impl", "time", "speedup", "throughput", "% limit"):
        assert column in header
    assert "sparse24/decompress_24: fp32 1024x1024" in lines
    assert any(line.startswith("  reference*") for line in lines)
    assert max(len(line) for line in lines) <= 120

    data = _load(out)
    assert {"schema", "created", "machine", "settings", "peaks", "results"} <= set(data)
    machine = data["machine"]
    assert machine["device"] == "cpu" and machine["threads"] == 1
    assert machine["torch"] == torch.__version__
    assert "cpu_isa" in machine["build_info"] and machine["device_name"]
    assert data["peaks"]["gbps"] > 0 and data["peaks"]["gbps_source"].startswith("measured")

    results = data["results"]
    assert [r["impl"] for r in results] == ["sparseops", "reference"]
    for r in results:
        assert RESULT_KEYS <= set(r)
        assert r["status"] == "ok" and r["time_s"] > 0 and r["gbps"] > 0 and r["pct_of_limit"] > 0
        assert r["ratio_vs_baseline"] > 0
        assert set(r["ratios"]) == {"sparseops", "reference"} - {r["impl"]}
        assert r["params"] == {"layout": "packed", "dtype": "fp32", "shape": [1024, 1024]}
    assert results[1]["ratio_vs_baseline"] == 1.0
    assert results[0]["ratio_vs_baseline"] == pytest.approx(results[1]["time_s"] / results[0]["time_s"])
    assert (out / "speedup_sparse24.png").is_file() == HAS_MPL


def _tiny_mm_cases(device: str, quick: bool):
    def case(n: int) -> Case:
        a = torch.randn(n, n, device=device)
        return Case(
            label=f"mm {n}",
            params={"n": n},
            impls={
                "sparseops": lambda: a @ a,
                "torch": lambda: torch.mm(a, a),
                "missing_peer": unavailable("missing_peer is not installed"),
                "broken": lambda: torch.mm(a, a[:1]),
            },
            baseline="torch",
            flops=2 * n**3,
        )

    yield case(16)
    yield case(32)


def test_registered_compute_case_skips_and_errors_are_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(REGISTRY, ("testfam", "mm"), _tiny_mm_cases)
    out = tmp_path / "res"
    rc = main(["--device", "cpu", "--smoke", "--family", "testfam", "--filter", "mm 32",
               "--peak-gbps", "10", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1  # the broken impl
    assert "ERROR testfam/mm mm 32 broken" in captured.out
    assert "GFLOP/s" in captured.out and "given with --peak-gbps" in captured.out

    data = _load(out)
    assert data["peaks"]["gbps"] == 10 and data["peaks"]["gflops"] > 0
    by_impl = {r["impl"]: r for r in data["results"]}
    assert set(by_impl) == {"sparseops", "torch", "missing_peer", "broken"}
    assert by_impl["missing_peer"]["status"] == "skipped"
    assert by_impl["missing_peer"]["reason"] == "missing_peer is not installed"
    assert by_impl["broken"]["status"] == "error" and "RuntimeError" in by_impl["broken"]["reason"]
    assert by_impl["sparseops"]["gflops"] > 0 and by_impl["sparseops"]["gbps"] is None
    assert set(by_impl["sparseops"]["ratios"]) == {"torch"}
    assert by_impl["torch"]["ratio_vs_baseline"] == 1.0


def test_list_shows_cases_without_running(tmp_path, capsys):
    rc = main(["--device", "cpu", "--quick", "--family", "sparse24", "--list", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "sparse24/nm_mask  2:4 bf16 1024x1024  [sparseops, reference, torch_topk; baseline reference]" in out
    assert "sparse24/compress_24  prune fp32 1024x1024" in out
    assert not (tmp_path / "r").exists()


def test_empty_selection_says_why_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["--device", "cpu", "--smoke", "--family", "sparse24", "--filter", "cuda_sparse24_linear", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nothing to run: --family sparse24 --filter 'cuda_sparse24_linear' has no case on --device cpu" in err
    assert "only on another device: sparse24/cuda_sparse24_linear" in err
    assert not out.exists()


def test_help_lists_the_families(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    families = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("families: "))
    assert "sparse24" in families


def test_unknown_family_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cpu", "--family", "nosuch"])
    assert exc.value.code == 2
    assert "--family: expected one of" in capsys.readouterr().err


def test_case_validation_messages():
    impls = {"sparseops": lambda: None, "torch": lambda: None}
    with pytest.raises(ValueError, match="expected impls to start with 'sparseops'"):
        Case(label="x", impls={"torch": lambda: None, "sparseops": lambda: None}, baseline="torch", bytes=1)
    with pytest.raises(ValueError, match="expected baseline to name one of the other impls"):
        Case(label="x", impls=impls, baseline="sparseops", bytes=1)
    with pytest.raises(ValueError, match="expected exactly one of bytes= or flops="):
        Case(label="x", impls=impls, baseline="torch")
    assert Case(params={"n": 4}, impls=impls, baseline="torch", flops=8).label == "n=4"
    with pytest.raises(ValueError, match="register: expected a non-empty family"):
        register("a/b", "c")


def test_impls_take_turns_in_rounds(monkeypatch):
    """On CPU a case's impls are timed round by round (A, B, A, B), so a slow spell of the machine weighs
    on both; an impl whose one call outlasts the whole budget is timed in the first round only."""
    import time

    from sparseops.bench import timing
    from sparseops.bench.cli import _run_case

    calls: list[str] = []
    timer = timing.Timer("cpu", 1, timing.TimingSettings(rounds=2, min_run_time=0.02, gpu_warmup=0, gpu_min_reps=1,
                                                         gpu_max_reps=1, stream_bytes=1 << 10, matmul_n=8))

    def samples(fn, run_time):
        fn()
        return [(run_time, 1)]

    monkeypatch.setattr(timer, "samples", samples)
    case = Case(label="turns", params={}, baseline="b", bytes=1,
                impls={"sparseops": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                       "slow": lambda: (calls.append("slow"), time.sleep(0.03))})
    rows = _run_case("testfam", "turns", case, timer, peaks=type("P", (), {"gbps": lambda self: 1.0})())
    assert calls == ["a", "b", "slow"] + ["a", "b", "slow"] + ["a", "b"]  # first calls, round 1, round 2
    assert {r["impl"]: r["runs"] for r in rows} == {"sparseops": 2, "b": 2, "slow": 1}
