"""Time to a good explanation: StartGrad with early stopping against the all-ones init.

For every mask method (published defaults) and photograph: the all-ones init runs its full
``--iterations`` (the paper's 300); its final CP-pixel (StartGrad definition, the loop's own
history) is the target. Then the StartGrad init runs with ``stop_metric=cp_pixel_sg`` and
``stop_value`` = that target, up to the same number of iterations. Both wall times include
everything ``explain`` does (StartGrad's gradient init, the transforms); the two runs of an
image alternate, so they share any drift of the machine.

    python -m benchmarks.time_to_explanation [--model efficientnet_lite0] [--size 256]
        [--iterations 300] [--noise-samples 16] [--device cuda]

Printed per method: images on which StartGrad reached the target, the median iterations it
needed, the per-image speed-up (ones wall time / StartGrad wall time) as median and interquartile
mean, and the total wall time of each side.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.shearletx_paper import PHOTOS
from engine import explain
from engine.metrics.convergence import interquartile_mean
from engine.models import load_model
from engine.runtime import keep_freed_memory

METHODS = ("pixelmask", "smoothmask", "cartoonx", "waveletx", "shearletx")


def timed_explain(model, photo: str, method: str, options: dict, args):
    started = time.perf_counter()
    result = explain(model, photo, method, options, resize="resize", seed=args.seed)
    return result, time.perf_counter() - started


def measure(model, method: str, args) -> dict[str, np.ndarray]:
    base = {"iterations": args.iterations, "image_size": args.size,
            "noise_samples": args.noise_samples}  # fmt: skip
    rows = []
    for photo in PHOTOS[: args.images]:
        ones, ones_seconds = timed_explain(model, photo, method, base, args)
        target = ones.outputs.history[0]["cp_pixel_sg"][-1]
        fast = {**base, "init": "startgrad", "stop_metric": "cp_pixel_sg", "stop_value": target}
        startgrad, startgrad_seconds = timed_explain(model, photo, method, fast, args)
        reached = startgrad.outputs.stopped_early
        iterations = startgrad.outputs.iterations_run
        rows.append((ones_seconds, startgrad_seconds, reached, iterations, target))
        print(f"  {method:<11}{photo:<17} ones {ones_seconds:7.1f} s (CP-pixel {target:7.2f}); "
              f"StartGrad {startgrad_seconds:7.1f} s, {iterations:3d} iterations"
              f"{'' if reached else ' (not reached)'}", flush=True)  # fmt: skip
    ones_s, sg_s, reached, iterations, _ = (np.array(column) for column in zip(*rows, strict=True))
    return {"ones": ones_s, "startgrad": sg_s, "reached": reached, "iterations": iterations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300, help="the paper's: 300")
    parser.add_argument("--noise-samples", type=int, default=16, help="the paper's: 16")
    parser.add_argument("--images", type=int, default=len(PHOTOS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keep_freed_memory()
    model = load_model(args.model, device=args.device)
    print(f"{args.model}, {args.images} photographs stretched to {args.size}², ones for "
          f"{args.iterations} iterations vs StartGrad stopped at the ones-init's final CP-pixel, "
          f"{args.noise_samples} noise samples, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip
    results = {method: measure(model, method, args) for method in args.methods}
    print(f"\n{'method':<12}{'reached':>9}{'iterations':>12}{'speed-up median':>17}"
          f"{'IQM':>7}{'ones s':>9}{'StartGrad s':>13}")  # fmt: skip
    for method, r in results.items():
        speedup = r["ones"] / r["startgrad"]
        reached = f"{int(r['reached'].sum())}/{len(speedup)}"
        print(f"{method:<12}{reached:>9}"
              f"{np.median(r['iterations']):>12.0f}{np.median(speedup):>16.2f}×"
              f"{interquartile_mean(speedup):>6.2f}×{r['ones'].sum():>9.0f}"
              f"{r['startgrad'].sum():>13.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
