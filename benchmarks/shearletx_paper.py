"""The ShearletX paper's claims, measured on two real models (Kolek et al., CVPR 2023):

1. Hallucination (Fig. 5): ShearletX and WaveletX explanations show few edges that the image
   does not have (a score below the paper's 0.2 line on most images); pixel masks show many.
2. Conciseness-preciseness (Fig. 4): ShearletX has the highest CP-Entropy and CP-ℓ1.

    python -m benchmarks.shearletx_paper [--models efficientnet_lite0 efficientnet_lite2]
        [--size 256] [--iterations 300] [--noise-samples 16] [--device cuda] [--save F]

Every method runs at its published defaults (engine/masks/methods.py: ShearletX with the
published coefficient clamp), plus ShearletX with the clamp off (``shearletx_unclamped``) to
measure that option. The images are 8 scikit-image photographs stretched to size² (the paper
resizes to 256² without cropping), one at a time, each explained for the model's predicted
class. SmoothMask is PixelMask + total variation (StartGrad's smooth mask), not the Extremal
Perturbations the paper compared with. The defaults of this script are the paper's settings; a
CPU run takes fewer iterations and noise samples (see benchmarks/results/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engine import explain
from engine.models import load_model
from engine.runtime import keep_freed_memory

PHOTOS = ["chelsea", "astronaut", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
          "clock", "camera"]  # fmt: skip
VARIANTS = {
    "shearletx": ("shearletx", {}),
    "shearletx_unclamped": ("shearletx", {"coefficient_clamp": False}),
    "waveletx": ("waveletx", {}),
    "smoothmask": ("smoothmask", {}),
    "pixelmask": ("pixelmask", {}),
}
PUBLISHED = ("shearletx", "waveletx", "smoothmask", "pixelmask")  # the paper's comparison
KEYS = ("hallucination", "cp_entropy_sx", "cp_l1_sx", "cp_l1_pixel_sx")
LINE = 0.2  # the paper's reference line for the Hallucination score


def run(model, variant: str, args) -> dict[str, list[float]]:
    method, extra = VARIANTS[variant]
    options = {"iterations": args.iterations, "image_size": args.size,
               "noise_samples": args.noise_samples, **extra}  # fmt: skip
    scores: dict[str, list[float]] = {key: [] for key in (*KEYS, "seconds")}
    for photo in PHOTOS[: args.images]:
        started = time.perf_counter()
        result = explain(model, photo, method, options, resize="resize", seed=args.seed,
                         metrics=["hallucination", "cp_shearletx"])  # fmt: skip
        scores["seconds"].append(time.perf_counter() - started)
        for key in KEYS:
            scores[key].append(float(result.scores[0][key]))
    return scores


def print_table(results: dict[str, dict[str, list[float]]]) -> None:
    print(f"{'method':<21}{'hallucination':>14}{'median':>8}{f'< {LINE}':>7}"
          f"{'CP-entropy':>12}{'median':>8}{'CP-ℓ1':>10}{'median':>8}"
          f"{'CP-ℓ1-pixel':>13}{'median':>8}{'s/image':>9}")  # fmt: skip
    for variant, scores in results.items():
        h = np.array(scores["hallucination"])
        row = f"{variant:<21}{h.mean():>14.3f}{np.median(h):>8.3f}{(h < LINE).mean():>7.2f}"
        for key in KEYS[1:]:
            values = np.array(scores[key])
            row += f"{values.mean():>{12 if key == 'cp_entropy_sx' else 10}.2f}"
            row += f"{np.median(values):>8.2f}"
        print(f"{row}{np.mean(scores['seconds']):>9.1f}", flush=True)


def print_winners(results: dict[str, dict[str, list[float]]]) -> None:
    """Per image, which published method has the highest CP (the paper: ShearletX)."""
    for key in KEYS[1:]:
        table = np.array([results[m][key] for m in PUBLISHED])  # (methods, images)
        wins = np.bincount(table.argmax(0), minlength=len(PUBLISHED))
        counts = ", ".join(f"{m} {w}" for m, w in zip(PUBLISHED, wins, strict=True))
        print(f"  highest {key} per image: {counts} (of {table.shape[1]})")
    h = np.array([results[m]["hallucination"] for m in PUBLISHED])
    counts = ", ".join(f"{m} {n}" for m, n in zip(PUBLISHED, (h < LINE).sum(1), strict=True))
    print(f"  images below the {LINE} line: {counts} (of {h.shape[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300, help="the paper's: 300")
    parser.add_argument("--noise-samples", type=int, default=16, help="the paper's: 16")
    parser.add_argument("--images", type=int, default=len(PHOTOS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write every per-image score to this JSON file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="print the tables of --save files of split runs")  # fmt: skip
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, dict] = {}
        for path in args.merge:
            for name, results in json.loads(Path(path).read_text()).items():
                if name != "photos":
                    merged.setdefault(name, {}).update(results)
        for name, results in merged.items():
            print(f"\n{name}")
            print_table({v: results[v] for v in VARIANTS if v in results})
            if all(m in results for m in PUBLISHED):
                print_winners(results)
        return
    keep_freed_memory()
    saved = {}
    for name in args.models:
        model = load_model(name, device=args.device)
        print(f"\n{name}: {args.images} photographs stretched to {args.size}², "
              f"{args.iterations} iterations, {args.noise_samples} noise samples, device "
              f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
              flush=True)  # fmt: skip
        results = saved[name] = {}
        for variant in args.variants:
            results[variant] = run(model, variant, args)
            print(f"  {variant} done in {sum(results[variant]['seconds']):.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            if args.save:  # after every variant, so an interrupted run keeps what it finished
                Path(args.save).write_text(json.dumps({"photos": PHOTOS[: args.images], **saved}))
        print_table(results)
        if all(m in results for m in PUBLISHED):
            print_winners(results)


if __name__ == "__main__":
    main()
