"""Vector-quantisation cases: the nearest-code lookup (``codebook_lookup``) against

* ``torch_chunked`` (the primary peer): ``|c|^2 - 2 z c^T`` with a matmul per 16384-code chunk and a
  running ``min`` -- what VQ code does once the full N x K matrix no longer fits;
* ``torch_dense``: the same over the whole codebook at once, where N x K fp32 stays <= 1 GiB;
* ``faiss_flat``: faiss-cpu ``IndexFlatL2.search(z, 1)`` (BLAS tiles + its own argmin; fp32 only: the
  bf16 cases give it fp32 copies, made outside the timing); skipped when faiss does not import;
* ``pykeops``: ``argmin`` of ``((z_i - c_j) ** 2).sum(-1)`` on LazyTensors (its own fused tiles), when pykeops
  imports (``SPARSEOPS_BENCH_HEAVY_PEERS=1 tools/setup_env.sh``; it compiles a module per shape with the
  system compiler); on CPU only points under 1e10 flops (its CPU backend runs at ~2 GFLOP/s); not in --quick.

All report GFLOP/s with flops = 2 N K D (the distance matmul; the argmin is not counted).

``vq_module_step``: one training step of ``sparseops.nn.VectorQuantizer`` (EMA) against
vector-quantize-pytorch's ``VectorQuantize`` (EMA, straight-through, same decay and commitment weight):
forward + a stand-in decoder loss + backward, the EMA update inside the forward; the codebook
initialised from inputs (K draws from a pool of 4N, so with duplicate codes). The label gives each
impl's peak extra memory of one step (``sparseops.bench.memory``: process peak RSS growth on CPU,
sparseops first), also in the JSON params.

Peak extra memory (analytic, besides inputs and outputs; the harness measures time only), at
N=2048, K=262144: sparseops 1 MiB of |c|^2, 80 B per row of candidate state, one packed superblock of
codes (min(K x D, 4 Mi) fp32: 8 MiB at D=8, 16 MiB at D=64 and 256) and per thread <= 256 x D fp32 of
packed rows: <= 18 MiB at every D; torch_chunked N x 16384 fp32
per temporary (128 MiB each, two alive: ~256 MiB); torch_dense N x K fp32 twice (4 GiB: not run there);
faiss a 4096 x 1024 fp32 tile per thread (16 MiB each).
"""
from __future__ import annotations

import torch
from torch import Tensor

import sparseops
from sparseops.bench import Case, register, unavailable

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_CHUNK = 16384
_DENSE_LIMIT = 1 << 28  # N x K fp32 elements: 1 GiB


def torch_chunked(z: Tensor, codebook: Tensor) -> Tensor:
    """Nearest code by matmul + min over 16384-code chunks (indices)."""
    best = torch.full((z.shape[0],), float("inf"), device=z.device)
    best_idx = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    for k0 in range(0, codebook.shape[0], _CHUNK):
        c = codebook[k0:k0 + _CHUNK]
        dist = torch.addmm(c.pow(2).sum(1)[None], z, c.T, alpha=-2)
        val, idx = dist.min(1)
        better = val.float() < best
        best = torch.where(better, val.float(), best)
        best_idx = torch.where(better, idx + k0, best_idx)
    return best_idx


def torch_dense(z: Tensor, codebook: Tensor) -> Tensor:
    return torch.addmm(codebook.pow(2).sum(1)[None], z, codebook.T, alpha=-2).argmin(1)


def _faiss_impl(z: Tensor, codebook: Tensor, device: str):
    if device != "cpu":
        return unavailable("faiss-cpu runs on the CPU only")
    try:
        import faiss
    except ImportError:
        return unavailable("faiss-cpu not installed (pip install faiss-cpu)")
    zf = z.float().contiguous().numpy()
    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook.float().contiguous().numpy())
    return lambda: index.search(zf, 1)


_KEOPS_CPU_FLOPS = 10**10  # pykeops' CPU backend runs at ~2 GFLOP/s here: larger points would take minutes


def _keops_impl(z: Tensor, codebook: Tensor, quick: bool):
    if quick:
        return unavailable("pykeops: not in --quick runs (it compiles a module per shape)")
    n, d = z.shape
    if z.device.type == "cpu" and 2 * n * codebook.shape[0] * d > _KEOPS_CPU_FLOPS:
        return unavailable(f"pykeops CPU (~2 GFLOP/s here): only points under {_KEOPS_CPU_FLOPS:.0e} flops are run")
    try:
        from pykeops.torch import LazyTensor
    except ImportError:
        return unavailable("pykeops not installed (SPARSEOPS_BENCH_HEAVY_PEERS=1 tools/setup_env.sh)")
    # fp32 copies for the bf16 cases (pykeops has no bf16), made outside the timing.
    zi, cj = LazyTensor(z.float()[:, None, :].contiguous()), LazyTensor(codebook.float()[None, :, :].contiguous())
    return lambda: ((zi - cj) ** 2).sum(-1).argmin(dim=1)


def _lookup_case(z: Tensor, codebook: Tensor, dtype_name: str, device: str, quick: bool) -> Case:
    n, d = z.shape
    k = codebook.shape[0]
    impls = {
        "sparseops": lambda: sparseops.codebook_lookup(z, codebook),
        "torch_chunked": lambda: torch_chunked(z, codebook),
        "torch_dense": (lambda: torch_dense(z, codebook)) if n * k <= _DENSE_LIMIT
        else unavailable(f"N x K fp32 = {n * k * 4 / 2**30:.0f} GiB does not fit the 1 GiB limit"),
        "faiss_flat": _faiss_impl(z, codebook, device),
        "pykeops": _keops_impl(z, codebook, quick),
    }
    return Case(
        label=f"{dtype_name} N={n} K={k} D={d}",
        params={"dtype": dtype_name, "N": n, "K": k, "D": d, "metric": "l2"},
        impls=impls,
        baseline="torch_chunked",
        flops=2 * n * k * d,
    )


def _cases(device: str, quick: bool, k: int, dtype_name: str):
    dtype = _DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(0)
    dims = [8, 64] if quick else [8, 64, 256]
    rows = [2048] if quick else [2048, 16384]
    if device == "cuda" and not quick:  # the one-call GPU check's time cap: the large points only
        dims, rows = [64, 256], [16384]
    for d in dims:
        codebook = torch.randn(k, d, generator=gen).to(device=device, dtype=dtype)
        for n in rows:
            z = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
            yield _lookup_case(z, codebook, dtype_name, device, quick)


@register("codebook", "lookup_fp32_k16k")
def lookup_fp32_small(device: str, quick: bool):
    if device == "cuda" and not quick:
        return
    yield from _cases(device, quick, 16384, "fp32")


@register("codebook", "lookup_bf16_k16k")
def lookup_bf16_small(device: str, quick: bool):
    if quick:  # one bf16 point in the quick run
        gen = torch.Generator().manual_seed(1)
        codebook = torch.randn(16384, 64, generator=gen).to(device=device, dtype=torch.bfloat16)
        z = torch.randn(2048, 64, generator=gen).to(device=device, dtype=torch.bfloat16)
        yield _lookup_case(z, codebook, "bf16", device, quick)
        return
    if device == "cuda":
        return
    yield from _cases(device, quick, 16384, "bf16")


@register("codebook", "lookup_fp32_k256k")
def lookup_fp32_large(device: str, quick: bool):
    if quick:
        return
    yield from _cases(device, quick, 262144, "fp32")


@register("codebook", "lookup_bf16_k256k")
def lookup_bf16_large(device: str, quick: bool):
    if quick:
        return
    yield from _cases(device, quick, 262144, "bf16")


# ---- the VectorQuantizer module: one training step vs vector-quantize-pytorch ----------------------


def _vq_step(vq, z: Tensor, call) -> None:
    """forward + a stand-in decoder loss + backward (the EMA update runs inside the forward)."""
    q, loss = call(vq, z)
    (loss + q.square().mean()).backward()


def _sparseops_vq(d: int, k: int, decay: float):
    from sparseops.nn import VectorQuantizer

    vq = VectorQuantizer(d, k, ema=True, decay=decay, commitment_weight=1.0).train()

    def call(m, z):
        out = m(z)
        return out.quantized, out.loss

    return vq, call


def _vqp_vq(d: int, k: int, decay: float):
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None, unavailable("vector-quantize-pytorch not installed (pip install vector-quantize-pytorch)")
    # Straight-through like ours (its default rotation trick is a different, costlier estimator).
    vq = VectorQuantize(dim=d, codebook_size=k, decay=decay, commitment_weight=1.0, rotation_trick=False).train()

    def call(m, z):
        q, _, loss = m(z[None])
        return q[0], loss

    return vq, call


def _module_case(device: str, n: int, k: int, d: int) -> Case:
    from sparseops.bench.memory import peak_extra_mib

    gen = torch.Generator().manual_seed(2)
    z = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    # VQ codebooks are commonly initialised from inputs: K draws from a pool of 4N (duplicate codes).
    pool = torch.randn(4 * n, d, generator=gen)
    impls, peaks = {}, {}
    for name, make in (("sparseops", _sparseops_vq), ("vector_quantize_pytorch", _vqp_vq)):
        vq, call = make(d, k, 0.99)
        if vq is None:
            impls[name] = call
            continue
        vq = vq.to(device)
        with torch.no_grad():  # the same codebook in both, initialised from data (with repeats)
            init = pool[torch.randint(0, pool.shape[0], (k,), generator=gen)].to(device)
            if name == "sparseops":
                vq.embed.copy_(init)
                vq.embed_sum.copy_(init)
            else:
                vq._codebook.embed.copy_(init[None])
                vq._codebook.embed_avg.copy_(init[None])
        impls[name] = (lambda vq=vq, call=call: _vq_step(vq, z, call))
        peaks[name] = peak_extra_mib(impls[name], device)
    mem = " / ".join("?" if p is None else f"{p:.0f}" for p in peaks.values())
    return Case(
        label=f"VectorQuantizer EMA step N={n} K={k} D={d}, peak +MiB {mem}",
        params={"N": n, "K": k, "D": d, "ema": True, "peak_extra_mib": peaks},
        impls=impls,
        baseline="vector_quantize_pytorch",
        flops=2 * n * k * d,
    )


@register("codebook", "vq_module_step", devices=("cpu",))
def vq_module_step(device: str, quick: bool):
    """Forward + backward + EMA update. N=8192 would need ~12 GiB in vector-quantize-pytorch (several N x K
    fp32 matrices: 3 GiB at N=2048); N=2048 keeps the peer within a shared 2-core machine's memory. CPU
    only, so that the one-call GPU check stays within its time caps."""
    if quick:
        yield _module_case(device, 1024, 4096, 64)
    else:
        yield _module_case(device, 2048, 65536, 64)
