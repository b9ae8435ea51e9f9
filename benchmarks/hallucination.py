"""Hallucination score and CP-entropy of ShearletX, WaveletX, PixelMask and SmoothMask on real
photographs (the ShearletX paper's claim: ShearletX and WaveletX hallucinate far less than pixel
masks; Kolek et al., CVPR 2023, Fig. 5).

    python benchmarks/hallucination.py [--size 96] [--iterations 300] [--noise-samples 16]
                                       [--device cuda]

Each method runs with its ShearletX-paper defaults (all-ones init, distortion towards 1, uniform
noise; see engine/masks/methods.py) on the photographs of benchmarks/startgrad.py. Printed per
method: mean, median and std over images of the Hallucination score, CP-entropy and CP-ℓ1-pixel
(ShearletX definitions), plus the share of images above the paper's 0.2 reference line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.startgrad import PHOTOS
from engine import explain

METHODS = ("shearletx", "waveletx", "pixelmask", "smoothmask")
KEYS = ("hallucination", "cp_entropy_sx", "cp_l1_pixel_sx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--images", type=int, default=len(PHOTOS))
    parser.add_argument("--noise-samples", type=int, default=16, help="the paper's: 16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    print(f"efficientnet_lite0, {args.images} photographs stretched to {args.size}², "
          f"{args.iterations} iterations, {args.noise_samples} noise samples, "
          f"device {args.device}")  # fmt: skip
    header = "".join(f"{k + ' mean/median/std':>34}" for k in KEYS)
    print(f"{'method':<11}{header}  share > 0.2", flush=True)
    for method in args.methods:
        result = explain(
            "efficientnet_lite0", PHOTOS[: args.images], method,
            {"iterations": args.iterations, "image_size": args.size,
             "noise_samples": args.noise_samples},
            device=args.device, resize="resize", metrics=["hallucination", "cp_shearletx"],
        )  # fmt: skip
        columns = []
        for key in KEYS:
            values = np.array([s[key] for s in result.scores])
            columns.append(f"{values.mean():12.3f} {np.median(values):10.3f} {values.std():10.3f}")
        above = np.mean([s["hallucination"] > 0.2 for s in result.scores])
        print(f"{method:<11}{''.join(columns)}  {above:10.2f}", flush=True)


if __name__ == "__main__":
    main()
