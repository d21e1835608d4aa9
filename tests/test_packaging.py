"""What a build records about the torch it was compiled against, and the error for running it under
another torch. (The wheel and sdist themselves are checked outside the tree by tools/check_dist.sh.)"""
from __future__ import annotations

import torch

import sparseops
from sparseops._loader import torch_mismatch


def test_build_info_records_the_torch_it_was_built_against():
    info = sparseops.build_info()
    assert info["torch_built_against"] == torch.__version__
    assert info["torch_cuda_built_against"] == torch.version.cuda


def test_the_same_torch_is_accepted():
    assert torch_mismatch("2.14.1+cu130", "13.0", "2.14.1+cu130", "13.0") is None


def test_another_torch_release_or_flavour_is_an_error_naming_both():
    msg = torch_mismatch("2.14.1+cu130", "13.0", "2.13.0+cpu", None)
    assert msg.startswith("sparseops: this build of sparseops was compiled against torch 2.14.1+cu130 (CUDA 13.0)")
    assert "but torch 2.13.0+cpu (CUDA none: a CPU-only torch) is imported" in msg
    assert "pip install --no-build-isolation --force-reinstall" in msg
    assert torch_mismatch("2.14.1+cu130", "13.0", "2.14.1+cpu", None) is not None  # same release, CPU-only
