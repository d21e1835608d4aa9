"""Training through the block-sparse backward: a small causal byte-level transformer LM trained on
CPython's own standard-library source (it ships with every Python), sequence length 2048, with dense
causal SDPA against block-sparse attention (a token-level sliding window, and MoBA/NSA-style top-k
blocks + sink + local), same initialisation, data order and optimiser. Prints loss and time per step and
writes the loss curves to a PNG.

    python examples/stdlib_lm_block_sparse.py [--steps 60] [--threads 2] [--out stdlib_lm_losses.png]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparseops


def stdlib_bytes(limit: int) -> torch.Tensor:
    """The first `limit` bytes of the stdlib's .py files, in sorted path order (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, attention) -> None:
        super().__init__()
        self.heads, self.attention = heads, attention
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(self.attention(q, k, v).transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    def __init__(self, attention, dim=128, heads=4, layers=2, seq=2048) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(256, dim), nn.Parameter(torch.randn(seq, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, attention) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 256)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def dense_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default="stdlib_lm_losses.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = stdlib_bytes(4_000_000)
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) - args.seq - 1, (args.steps, args.batch), generator=gen)

    window = sparseops.nn.BlockSparseAttention(64, causal=True, window=256)
    topk = sparseops.nn.BlockSparseAttention(64, causal=True, topk=3, sink_blocks=1, local_blocks=2)
    modes = {"dense SDPA (causal)": dense_causal, "block-sparse: sliding window 256": window,
             "block-sparse: top-3 + sink + 2 local (block 64)": topk}
    curves = {}
    print(f"byte-level LM, 2 layers x 128 dims x 4 heads, seq {args.seq}, batch {args.batch}, {args.threads} "
          f"threads, {len(data) / 1e6:.1f} MB of stdlib source")
    for name, attn in modes.items():
        torch.manual_seed(0)
        model = ByteLM(attn, seq=args.seq)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        losses, times = [], []
        for step in range(args.steps):
            batch = torch.stack([data[s:s + args.seq + 1] for s in starts[step].tolist()])
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
        curves[name] = losses
        tail = statistics.mean(losses[-10:])
        print(f"{name:50s} loss first {losses[0]:.3f} last-10 mean {tail:.3f} ({tail / math.log(2):.2f} bits/byte) "
              f"step {statistics.median(times[1:]):.3f} s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, losses in curves.items():
            ax.plot(losses, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats/byte)")
        ax.set_title(f"byte LM on CPython stdlib source, seq {args.seq}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"wrote {os.path.abspath(args.out)}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
