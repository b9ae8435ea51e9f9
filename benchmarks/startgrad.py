"""StartGrad reproduction: ShearletX, WaveletX and PixelMask started from all-ones, uniform and
StartGrad masks on real photographs, with the StartGrad paper's CP curves and speed-ups.

    python -m benchmarks.startgrad [--models efficientnet_lite0 efficientnet_lite2] [--size 256]
        [--iterations 300] [--noise-samples 16] [--device cuda] [--save F]

Settings are the StartGrad paper's (Bükkaya et al., ICLR 2025; spec mask_methods.md §2, §5):
distortion towards the original probability, Gaussian noise, 16 samples, Adam lr 0.1, λ₁ = 1,
WaveletX λ₂ = 1 and ShearletX λ₂ = 2 with normalised gradients (the centres of the paper's grids),
StartGrad from the gradient of the logit, and ShearletX's published coefficient clamp (so its
all-ones mask starts below CP 1, as in the paper). Every init gets a mask of the same shape (the
paper's ShearletX baselines had one value per pixel, StartGrad one per coefficient). Per step the
interquartile mean (IQM) over images of CP-pixel and CP-ℓ1 (StartGrad definition) is printed;
the speed-up is (T)/(first step at which StartGrad's IQM reaches the other init's final IQM),
mean ± std over 250 bootstrap resamples of the images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.shearletx_paper import PHOTOS
from engine import explain
from engine.metrics.convergence import interquartile_mean, iterations_to_target
from engine.models import load_model
from engine.runtime import keep_freed_memory

METHODS = {
    "pixelmask": {},
    "waveletx": {"l1": 1.0, "energy": 1.0},
    "shearletx": {"l1": 1.0, "energy": 2.0, "normalize_gradient": True},
}
INITS = {"ones": "ones", "uniform": "uniform", "startgrad": "startgrad"}
# Paper (spec §5): final IQM CP-pixel ones / uniform / StartGrad, and StartGrad's speed-up to
# the ones / uniform final (Swin-T, 250 ImageNet images; WaveletX and PixelRDE likewise).
PAPER = {
    "shearletx": ("275 / 270 / 578", "4.0× / 4.2×"),
    "waveletx": ("227 / 218 / 230", "1.06× / 1.40×"),
    "pixelmask": ("207 / 199 / 212", "1.25× / 1.40×"),
}
CHECKPOINTS = (0, 9, 49, 99)


def run(model, method: str, init: str, args) -> dict[str, np.ndarray]:
    options = {
        "iterations": args.iterations,
        "init": init,
        "image_size": args.size,
        "distortion": "original",
        "noise": "gaussian",
        "noise_samples": args.noise_samples,
        **METHODS[method],
    }
    started = time.perf_counter()
    history = []  # one photograph at a time: a batch of 256² ShearletX obfuscations is large
    for photo in PHOTOS[: args.images]:
        result = explain(model, photo, method, options, resize="resize", seed=args.seed)
        history += result.outputs.history
    elapsed = time.perf_counter() - started
    curves = {key: np.array([h[key] for h in history]) for key in ("cp_pixel_sg", "cp_l1_sg")}
    print(f"  {method:<10} {init:<10} {elapsed:7.1f} s", file=sys.stderr, flush=True)
    return curves


def report(method: str, curves: dict[str, dict[str, np.ndarray]], steps: list[int]) -> None:
    for key in ("cp_pixel_sg", "cp_l1_sg"):
        print(f"\n{method} {key}: IQM over images at step " + ", ".join(map(str, steps)))
        for init, c in curves.items():
            iqm = interquartile_mean(c[key], axis=0)
            values = " ".join(f"{iqm[s]:9.2f}" for s in steps)
            print(f"  {init:<10} {values}")
        for reference in ("ones", "uniform"):
            found = iterations_to_target(curves["startgrad"][key], curves[reference][key])
            last = len(curves["startgrad"][key][0]) - 1
            if found["iterations"] == last and found["candidate_final"] < found["reference_final"]:
                print(f"  StartGrad does not reach {reference}'s final "
                      f"{found['reference_final']:.2f} in {last} steps (its final: "
                      f"{found['candidate_final']:.2f})")  # fmt: skip
                continue
            print(f"  StartGrad reaches {reference}'s final {found['reference_final']:.2f} "
                  f"at step {found['iterations']:.0f} "
                  f"({found['iterations_mean']:.1f} ± {found['iterations_std']:.1f}): "
                  f"speed-up {found['speedup']:.2f}× "
                  f"({found['speedup_mean']:.2f} ± {found['speedup_std']:.2f})")  # fmt: skip
    final, speedup = PAPER[method]
    print(f"  paper (Swin-T, CP-pixel): final ones / uniform / StartGrad {final}; "
          f"speed-up vs ones / uniform {speedup}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300, help="the paper's: 300")
    parser.add_argument("--images", type=int, default=len(PHOTOS))
    parser.add_argument("--noise-samples", type=int, default=16, help="the paper's: 16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    parser.add_argument("--save", help="write every curve to this JSON file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="print the reports of --save files of split runs")  # fmt: skip
    args = parser.parse_args()
    steps = [s for s in CHECKPOINTS if s < args.iterations] + [args.iterations]
    if args.merge:
        merged: dict = {}
        for path in args.merge:
            for name, methods in json.loads(Path(path).read_text()).items():
                for method, inits in methods.items():
                    merged.setdefault(name, {}).setdefault(method, {}).update(inits)
        for name, methods in merged.items():
            print(f"\n## {name}")
            for method, inits in methods.items():
                curves = {i: {k: np.array(v) for k, v in inits[i].items()} for i in INITS}
                report(method, curves, steps)
        return
    keep_freed_memory()
    saved: dict = {}
    for name in args.models:
        model = load_model(name, device=args.device)
        print(f"\n## {name}, {args.images} photographs stretched to {args.size}², "
              f"{args.iterations} iterations, {args.noise_samples} noise samples, device "
              f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
              flush=True)  # fmt: skip
        saved[name] = {}
        for method in args.methods:
            curves = {init: run(model, method, init, args) for init in args.inits}
            saved[name][method] = {
                i: {k: v.tolist() for k, v in c.items()} for i, c in curves.items()
            }
            if len(curves) == len(INITS):
                report(method, curves, steps)
            if args.save:  # after every method, so an interrupted run keeps what it finished
                Path(args.save).write_text(json.dumps(saved))


if __name__ == "__main__":
    main()
