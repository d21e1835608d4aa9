"""codebook_lookup(..., process_group=pg) with the codebook sharded over 2 gloo processes (CPU): the same
indices, vectors and distances as an unsharded lookup of the whole codebook, ties across shards to the
lowest global index, the codebook gradient in the owning shard, and a clear error when ranks disagree on D."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseops

_WORKER = r"""
import sys, torch, torch.distributed as dist
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import sparseops
sys.path.insert(0, {tests!r})
from test_codebook_sharded import problem
dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
results = {{}}
for case in ("l2", "cosine", "bad_d"):
    full, sizes, z_all, w_all = problem()
    start = sum(sizes[:rank])
    shard = full[start:start + sizes[rank]].clone().requires_grad_()
    z = z_all[rank]
    if case == "bad_d" and rank == 1:
        shard, z = torch.randn(sizes[1], full.shape[1] + 1), torch.randn(z.shape[0], full.shape[1] + 1)
    metric = "cosine" if case == "cosine" else "l2"
    try:
        idx, q, d = sparseops.codebook_lookup(z, shard, metric=metric, return_dist=True, process_group=dist.group.WORLD)
        (q * w_all[rank]).sum().backward()
        results[case] = {{"idx": idx, "q": q.detach(), "dist": d, "grad": shard.grad}}
    except ValueError as e:
        results[case] = {{"error": str(e)}}
torch.save(results, out)
dist.destroy_process_group()
# The results are saved: skip interpreter teardown, where a gloo worker was seen to abort (SIGABRT, no
# message) about once in five full-suite runs on a 2-core machine.
sys.stdout.flush()
sys.stderr.flush()
import os
os._exit(0)
"""


def problem():
    """The global codebook (code 27, in shard 1, duplicates code 3, in shard 0), shard sizes, each rank's
    z (some rows next to code 3: a tie across shards) and the upstream gradient."""
    gen = torch.Generator().manual_seed(11)
    full = torch.randn(50, 6, generator=gen)
    full[27] = full[3]
    z_all = torch.randn(2, 13, 6, generator=gen)
    z_all[:, :3] = full[3] + 1e-3 * torch.randn(2, 3, 6, generator=gen)
    return full, [20, 30], z_all, torch.randn(2, 13, 6, generator=gen)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    """Both ranks' results of every case, from one pair of gloo processes."""
    tmp = tmp_path_factory.mktemp("sharded")
    code = _WORKER.format(tests=str(Path(__file__).parent))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), str(tmp / "init"), str(tmp / f"{r}.pt")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return [torch.load(tmp / f"{r}.pt") for r in range(2)]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_sharded_matches_unsharded(metric, results):
    full, sizes, z_all, w_all = problem()
    full.requires_grad_()
    for rank, res in enumerate(results):
        got = res[metric]
        idx, q, d = sparseops.codebook_lookup(z_all[rank], full, metric=metric, return_dist=True)
        assert torch.equal(got["idx"], idx) and torch.equal(got["q"], q.detach()) and torch.equal(got["dist"], d)
        assert (got["idx"][:3] == 3).all()  # code 27 in shard 1 ties with code 3 in shard 0: the lower wins
        (q * w_all[rank]).sum().backward()
    grad = torch.cat([results[0][metric]["grad"], results[1][metric]["grad"]])
    torch.testing.assert_close(grad, full.grad, rtol=1e-6, atol=1e-6)


def test_sharded_ranks_disagree_on_d(results):
    assert results[0]["bad_d"]["error"] == ("codebook_lookup: expected every rank's codebook.size(1) to equal this "
                                            "rank's D=6 (rank 1 has 7)")
    assert results[1]["bad_d"]["error"] == ("codebook_lookup: expected every rank's codebook.size(1) to equal this "
                                            "rank's D=7 (rank 0 has 6)")
