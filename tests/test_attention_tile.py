"""The helpers the CPU and CUDA attention kernels share (csrc/attention/attention_tile.h and the token rule
in attention_rule.h, host/device code with no torch headers), checked on the host: a small C++ program
(tests/cpp/attention_tile_check.cpp) built with the system's C++ compiler and run. The CUDA kernels
rely on them for mask reading (clamped counts, skipped indices), the block-level rule and the online
softmax."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shared_attention_helpers(tmp_path):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path / "attention_tile_check"
    src = os.path.join(ROOT, "tests", "cpp", "attention_tile_check.cpp")
    build = subprocess.run([cxx, "-std=c++20", "-O1", "-I", os.path.join(ROOT, "csrc"), src, "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all attention tile checks passed" in run.stdout
