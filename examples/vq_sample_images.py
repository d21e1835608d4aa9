"""Vector quantisation of real image patches: sparseops.nn.VectorQuantizer vs vector-quantize-pytorch.

Data: every 4x4x3 patch (stride 2) of the two photographs that ship with scikit-learn
(``sklearn.datasets.load_sample_images``): 135,680 vectors of D=48, scaled to [0, 1] and centred.
Each configuration trains for ``--steps`` Adam/EMA steps on random batches of ``--batch`` patches (same
seed and batches everywhere), then quantises the *whole* patch set once and reports the reconstruction
MSE and the exact utilisation (codes used at least once over all patches, from ``codebook_usage``),
the mean time per training step, and the peak RSS growth of the process during training (each
configuration runs in its own process). Dead codes: usage EMA (assignments per batch; decay 0.9, also
the EMA codebook decay, so that 100 steps see codes die) below 0.05 in both libraries
(vector-quantize-pytorch's ``threshold_ema_dead_code``).

    pip install scikit-learn vector-quantize-pytorch
    python examples/vq_sample_images.py [--codes 4096 65536] [--steps 100] [--batch 1024]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np
import torch


def patches() -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
        p = t.unfold(1, 4, 2).unfold(2, 4, 2)                                          # [3, h, w, 4, 4]
        out.append(p.permute(1, 2, 0, 3, 4).reshape(-1, 48))
    x = torch.cat(out)
    return x - x.mean(0)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(config: dict, queue) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(config["threads"])
    data = patches()
    k, steps, batch = config["codes"], config["steps"], config["batch"]
    if config["impl"] == "sparseops":
        import sparseops
        from sparseops.nn import VectorQuantizer

        vq = VectorQuantizer(48, k, ema=config["ema"], decay=0.9, dead_code_threshold=config["revive"],
                             projector=torch.nn.Linear(48, 48) if config["projector"] else None)
        with torch.no_grad():  # the same init for every configuration: random patches
            vq.embed.copy_(data[torch.randint(0, data.shape[0], (k,))])
            if config["projector"]:
                vq.projector.weight.copy_(torch.eye(48))
                vq.projector.bias.zero_()
            if config["ema"]:
                vq.embed_sum.copy_(vq.embed)

        def step(x):
            out = vq(x)
            return out.loss

        def quantise(x):
            return vq.eval()(x)[:2]
    else:
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(dim=48, codebook_size=k, decay=0.9, commitment_weight=0.25,
                            threshold_ema_dead_code=config["revive"])
        with torch.no_grad():
            init = data[torch.randint(0, data.shape[0], (k,))]
            vq._codebook.embed.copy_(init[None])
            vq._codebook.embed_avg.copy_(init[None])

        def step(x):
            _, _, loss = vq(x[None])
            return loss

        def quantise(x):
            q, idx, _ = vq.eval()(x[None])
            return q[0], idx[0]
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3) if params else None
    gen = torch.Generator().manual_seed(1)
    rss0 = _rss_mib()
    vq.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        loss = step(x)
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
    per_step = (time.perf_counter() - t0) / steps
    peak = _rss_mib() - rss0
    with torch.no_grad():
        import sparseops

        q, idx = [], []
        for chunk in data.split(2048):  # vector-quantize-pytorch forms chunk x K distances
            qc, ic = quantise(chunk)
            q.append(qc)
            idx.append(ic)
        q, idx = torch.cat(q), torch.cat(idx)
        mse = ((q - data) ** 2).mean().item()
        counts = sparseops.codebook_usage(idx.long(), k)
        util = sparseops.codebook_utilisation(counts).item()
    queue.put(dict(config, mse=mse, util=util, ms_per_step=1000 * per_step, peak_rss_mib=peak))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codes", type=int, nargs="+", default=[4096, 65536])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    modes = [
        ("sparseops EMA", dict(impl="sparseops", ema=True, revive=0.0, projector=False)),
        ("sparseops EMA + dead-code revival", dict(impl="sparseops", ema=True, revive=0.05, projector=False)),
        ("sparseops grad + projector", dict(impl="sparseops", ema=False, revive=0.0, projector=True)),
        ("sparseops grad + projector + revival", dict(impl="sparseops", ema=False, revive=0.05, projector=True)),
        ("vector-quantize-pytorch EMA", dict(impl="vqp", ema=True, revive=0.0, projector=False)),
        ("vector-quantize-pytorch EMA + dead codes", dict(impl="vqp", ema=True, revive=0.05, projector=False)),
    ]
    ctx = mp.get_context("spawn")
    print(f"{'K':>6}  {'configuration':42} {'MSE':>9} {'util':>7} {'ms/step':>8} {'peak RSS +MiB':>13}")
    for k in args.codes:
        for name, mode in modes:
            queue = ctx.Queue()
            proc = ctx.Process(target=run, args=(dict(mode, codes=k, steps=args.steps, batch=args.batch,
                                                      threads=args.threads), queue))
            proc.start()
            r = queue.get()
            proc.join()
            print(f"{k:>6}  {name:42} {r['mse']:9.5f} {100 * r['util']:6.1f}% {r['ms_per_step']:8.1f} "
                  f"{r['peak_rss_mib']:13.0f}", flush=True)


if __name__ == "__main__":
    main()
