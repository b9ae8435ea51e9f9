"""StartGrad's time-series table: ExtremalMask from uniform (½), all-ones and StartGrad masks on
the state and switch-feature datasets, preservation and deletion games, GRU (and LSTM).

    python -m benchmarks.time_series [--length 200] [--seeds 1 2 3] [--cells gru lstm]

Per dataset and seed: N series (one seeded generator), fold 0 of KFold(5) (800 train / 200
test), a classifier trained with the paper's settings (hidden 200, Adam lr 1e-4, weight decay
1e-3, batch 128, 50 epochs), then ExtremalMask on the whole test fold (λ₁ = λ₂ = 1, lr 0.01,
a fresh identically seeded perturbation net per init). Printed: AUP, AUR, Information and
Entropy (spec time_series.md §5; Information and Entropy are sums over the fold, so they scale
with its size and length) at iterations 0, 50, 100, 300, 500, mean ± std over seeds, beside the
paper's state/GRU/preservation numbers (T = 200); then the iterations StartGrad needs to reach
each other init's final Information (first multiple of 10 steps) and how many it saves.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from engine import explain
from engine.data.timeseries import DATASETS
from engine.metrics.timeseries import white_box
from engine.models.series import SeriesClassifier, TrainingSettings, step_accuracy, train_classifier
from engine.models.spec import LoadedModel, ModelSpec
from engine.runtime import keep_freed_memory

INITS = ("uniform", "ones", "startgrad")
METRICS = ("aup", "aur", "information", "entropy")
SCALE = {"aup": 1, "aur": 1, "information": 1e4, "entropy": 1e3}  # the paper's units
# Spec §6 (state, GRU, preservation, T = 200, 9 seeds), iterations 50 / 100 / 300 / 500.
PAPER = {
    ("uniform", "aup"): ".709 .786 .851 .857", ("ones", "aup"): ".885 .852 .862 .862",
    ("startgrad", "aup"): ".822 .858 .864 .863", ("uniform", "aur"): ".704 .721 .737 .739",
    ("ones", "aur"): ".662 .743 .745 .745", ("startgrad", "aur"): ".805 .760 .747 .747",
    ("uniform", "information"): "10.87 25.02 33.47 34.03",
    ("ones", "information"): "23.10 31.48 34.33 34.40",
    ("startgrad", "information"): "32.96 34.34 34.49 34.50",
    ("uniform", "entropy"): "17.64 11.18 7.66 7.48", ("ones", "entropy"): "16.11 11.54 7.60 7.47",
    ("startgrad", "entropy"): "13.23 8.89 7.45 7.44",
}  # fmt: skip


def classifier(dataset: str, cell: str, seed: int, args):
    data = DATASETS[dataset](args.series, args.length, seed)
    train_index, test_index = data.folds()[0]
    train, test = data.subset(train_index), data.subset(test_index[: args.test_series])
    torch.manual_seed(seed)
    model = SeriesClassifier(cell, hidden=args.hidden)
    started = time.perf_counter()
    train_classifier(model, train.x, train.y, TrainingSettings(args.epochs, seed=seed))
    accuracy = step_accuracy(model, test.x, test.y)
    print(f"  {dataset} {cell} seed {seed}: accuracy {accuracy:.3f} "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    spec = ModelSpec(f"{cell}-{dataset}", "", None, input_kind="timeseries")
    loaded = LoadedModel(spec, model.requires_grad_(False), "trained here", None, args.device)
    return loaded, test, accuracy


def curves(model, test, game: str, init: str, args) -> dict[str, np.ndarray]:
    options = {"game": game, "init": init, "iterations": args.iterations, "checkpoint_every": 10}
    result = explain(model, test.x.to(args.device), "extremal_mask", options, seed=0)
    checkpoints = result.outputs.checkpoints
    scores = [white_box(checkpoints[s], test.truth) for s in sorted(checkpoints)]
    return {m: np.array([s[m] for s in scores]) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["state", "switch_feature"])
    parser.add_argument("--games", nargs="+", default=["preservation", "deletion"])
    parser.add_argument("--cells", nargs="+", default=["gru"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--length", type=int, default=200, help="the paper's: 200")
    parser.add_argument("--test-series", type=int, default=200, help="explain the first N")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    keep_freed_memory()
    args.device = torch.device(args.device)
    steps = [s for s in (0, 50, 100, 300, 500) if s <= args.iterations]
    print(f"{args.series} series of {args.length} steps, fold 0 ({args.test_series} test series "
          f"explained), seeds "
          f"{args.seeds}, {args.iterations} iterations, device {args.device}")  # fmt: skip
    for dataset in args.datasets:
        for cell in args.cells:
            trained = [classifier(dataset, cell, seed, args) for seed in args.seeds]
            accuracy = np.array([a for _, _, a in trained])
            for game in args.games:
                runs = {i: [curves(m, t, game, i, args) for m, t, _ in trained] for i in INITS}
                print(f"\n{dataset}, {cell.upper()} (test accuracy {accuracy.mean():.3f} ± "
                      f"{accuracy.std():.3f}), {game}: mean ± std over {len(args.seeds)} seeds "
                      f"at iterations {steps}")  # fmt: skip
                for metric in METRICS:
                    for init in INITS:
                        values = np.stack([r[metric] for r in runs[init]]) / SCALE[metric]
                        at = [values[:, s // 10] for s in steps]
                        cells = " ".join(f"{v.mean():7.3f}±{v.std():.3f}" for v in at)
                        paper = PAPER.get((init, metric), "") if (dataset, cell, game) == (
                            "state", "gru", "preservation") else ""  # fmt: skip
                        unit = f"[1e{int(np.log10(SCALE[metric]))}]" if SCALE[metric] > 1 else ""
                        print(f"  {metric + unit:<17} {init:<10} {cells}   {paper}")
                for reference in ("uniform", "ones"):
                    needed = []
                    for sg, other in zip(runs["startgrad"], runs[reference], strict=True):
                        hits = np.flatnonzero(sg["information"] >= other["information"][-1])
                        needed.append(10 * hits[0] if hits.size else args.iterations)
                    needed = np.array(needed, dtype=float)
                    print(f"  StartGrad reaches {reference}'s final Information after "
                          f"{needed.mean():.0f} ± {needed.std():.0f} iterations: saves "
                          f"{args.iterations - needed.mean():.0f} of {args.iterations} "
                          f"({args.iterations / max(needed.mean(), 1):.1f}×)",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
