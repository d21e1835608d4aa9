"""2:4 sparse training from scratch on scikit-learn's digits: dense vs plain STE vs SR-STE.

A 64-256-256-10 MLP (every Linear 2:4 sparse in the sparse runs) is trained with the same seed, data
order, optimiser and epochs in each mode:

  dense            nn.Linear
  ste              NMSparseLinear(decay=0): straight-through gradient, no refinement
  srste            NMSparseLinear(decay=λ): SR-STE (Zhou et al. 2021)
  srste+pgf        SR-STE with pruned_grad_scale decaying 1 -> 0 over training (cosine
                   GradientFlowSchedule, Bambhaniya et al. 2024)
  one-shot         the trained dense model pruned to 2:4 by magnitude, no retraining (a baseline)

and the trained sparse models are converted with NMSparseLinear.to_inference() to SparseLinear24
(compressed weights) to check the accuracy is unchanged. Prints test accuracy per seed and the mean.

    .venv/bin/pip install scikit-learn          # the environment tools/test.sh set up
    .venv/bin/python examples/digits_nm_training.py [--seeds 3] [--epochs 60] [--decay 2e-4 2e-3] [--nm 1 8]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
except ImportError as e:  # pragma: no cover - the example's one dependency
    raise SystemExit(f"this example needs scikit-learn: pip install scikit-learn ({e})")

import sparseops  # noqa: F401
from sparseops.nn import NMSparseLinear, SparseLinear24, set_gradient_flow_step, sparsify_
from sparseops import GradientFlowSchedule

SIZES = (64, 256, 256, 10)


def load_data():
    x, y = load_digits(return_X_y=True)  # 1797 x 64 (8x8 images), 10 classes; 64 % 4 == 0: no padding
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    as_t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return (as_t(scaler.transform(x_train), torch.float32), as_t(y_train, torch.long),
            as_t(scaler.transform(x_test), torch.float32), as_t(y_test, torch.long))


def make_model(mode: str, decay: float, total_steps: int, n: int = 2, m: int = 4) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        if mode == "dense":
            layers.append(nn.Linear(fan_in, fan_out))
        else:
            schedule = GradientFlowSchedule(start_step=0, end_step=total_steps) if mode == "srste+pgf" else None
            layers.append(NMSparseLinear(fan_in, fan_out, n=n, m=m, decay=0.0 if mode == "ste" else decay, schedule=schedule))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def masks(model: nn.Module) -> torch.Tensor:
    return torch.cat([mod.mask().flatten() for mod in model.modules() if isinstance(mod, NMSparseLinear)])


def train(mode: str, seed: int, data, epochs: int, decay: float, n: int = 2, m: int = 4, batch: int = 64,
          lr: float = 0.05) -> tuple[nn.Module, float]:
    """Returns the model and, for sparse modes, the fraction of mask entries that flipped over the
    last 10 epochs (SR-STE's point: the mask settles)."""
    x_train, y_train, _, _ = data
    steps_per_epoch = (len(x_train) + batch - 1) // batch
    torch.manual_seed(seed)
    model = make_model(mode, decay, epochs * steps_per_epoch, n, m)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    step, flips, previous = 0, 0.0, None
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(batch):
            set_gradient_flow_step(model, step)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if mode != "dense" and epoch >= epochs - 11:
            current = masks(model)
            if previous is not None:
                flips += (current != previous).float().mean().item()
            previous = current
    return model, flips


def to_inference(model: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(*[m.to_inference() if isinstance(m, NMSparseLinear) else m for m in model])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--decay", type=float, nargs="+", default=[2e-4, 2e-3], help="SR-STE decay values to run")
    ap.add_argument("--nm", type=int, nargs=2, default=[2, 4], metavar=("N", "M"),
                    help="sparsity pattern of the sparse runs (default 2 4; e.g. 1 8 to stress it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the matrices are tiny: 1 is fastest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data()
    _, _, x_test, y_test = data
    n, m = args.nm
    print(f"digits: {len(data[0])} train / {len(x_test)} test, MLP {'-'.join(map(str, SIZES))}, {n}:{m} sparse runs, "
          f"SGD(0.05, momentum 0.9, cosine), batch 64, {args.epochs} epochs, seeds 0..{args.seeds - 1}")
    runs = [("dense", 0.0), ("ste", 0.0)] + [(m, d) for d in args.decay for m in ("srste", "srste+pgf")]
    results: dict[str, list[float]] = {}
    for mode, decay in runs:
        name = mode if mode in ("dense", "ste") else f"{mode} (decay={decay:g})"
        accs, accs_inf, flips, t0 = [], [], [], time.perf_counter()
        for seed in range(args.seeds):
            model, flip = train(mode, seed, data, args.epochs, decay, n, m)
            accs.append(accuracy(model, x_test, y_test))
            flips.append(flip)
            if mode == "dense" and (n, m) == (2, 4):
                report = sparsify_(model)  # one-shot 2:4 magnitude pruning of the trained dense model
                assert not report.skipped and all(isinstance(m, SparseLinear24) for m in model if not isinstance(m, nn.ReLU))
                results.setdefault("one-shot magnitude 2:4 of dense", []).append(accuracy(model, x_test, y_test))
            elif (n, m) == (2, 4):
                accs_inf.append(accuracy(to_inference(model), x_test, y_test))
        results[name] = accs
        extra = "" if mode == "dense" else f"  mask flips, last 10 epochs: {100 * sum(flips) / len(flips):.2f}%"
        if accs_inf:
            same = all(abs(a - b) < 1e-9 for a, b in zip(accs, accs_inf))
            extra += f"  SparseLinear24: {'same accuracy' if same else accs_inf}"
        print(f"{name:28s} " + " ".join(f"{a:.4f}" for a in accs) + f"  mean {sum(accs) / len(accs):.4f}"
              f"  ({time.perf_counter() - t0:.1f} s){extra}")
    if "one-shot magnitude 2:4 of dense" in results:
        accs = results["one-shot magnitude 2:4 of dense"]
        print(f"{'one-shot magnitude 2:4 of dense':28s} " + " ".join(f"{a:.4f}" for a in accs) + f"  mean {sum(accs) / len(accs):.4f}")


if __name__ == "__main__":
    main()
