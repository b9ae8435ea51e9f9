"""Speed of the mask methods: time per iteration against the model's own forward+backward on the
same noise batch (the floor of the ratio is 1.0), per method and size, plus the time per
explanation at the default 300 iterations and the per-image cost of a batch.

    python -m benchmarks.mask_methods [--sizes 224 256] [--device cuda] [--iterations 6]

Timings are the fastest iteration and the fastest model pass (the least disturbed by other
load). Optionally (--check-defaults) runs ShearletX, WaveletX and PixelMask with their default
settings at 256×256 on chelsea and prints the retained probability and mask mean.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from engine import explain
from engine.data import load_image
from engine.models import load_model
from engine.runtime import keep_freed_memory

TARGETS = {"pixelmask": 1.3, "waveletx": 1.3, "shearletx": 2.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_forward_backward(model, size: int, samples: int, device, repeats: int) -> float:
    """Fastest forward+backward of the model on a (samples, 3, size, size) batch."""
    batch = torch.rand(samples, 3, size, size, device=device)
    times = []
    for _ in range(repeats + 1):
        leaf = batch.clone().requires_grad_(True)
        sync(device)
        start = time.perf_counter()
        model(leaf).softmax(1)[:, 285].sum().backward()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def per_iteration(model, images, method: str, size: int, iterations: int) -> tuple[float, float]:
    """(fastest iteration in seconds, setup seconds) from the progress callback's timestamps."""
    stamps: list[float] = []
    start = time.perf_counter()
    explain(model, images, method, {"iterations": iterations, "image_size": size},
            progress=lambda done, total, **_: stamps.append(time.perf_counter()))  # fmt: skip
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    return min(steps), stamps[0] - start - steps[0]


def check_defaults(model) -> None:
    print("\n# default settings at 256×256 on chelsea (300 iterations)")
    print(f"{'method':<12}{'retained p':>12}{'mask mean':>11}{'seconds':>9}")
    for method in ("shearletx", "waveletx", "pixelmask"):
        start = time.perf_counter()
        result = explain(model, "chelsea", method, {"image_size": 256})
        scores = result.scores[0]
        print(f"{method:<12}{scores['retained_probability']:>12.3f}{scores['mask_mean']:>11.3f}"
              f"{time.perf_counter() - start:>9.0f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    parser.add_argument("--methods", nargs="+", default=["pixelmask", "cartoonx", "waveletx",
                                                          "shearletx", "smoothmask"])  # fmt: skip
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="images for the batch-cost row")
    parser.add_argument("--check-defaults", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()
    device = torch.device(args.device)
    model = load_model("efficientnet_lite0", device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# efficientnet_lite0 on {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, 16 noise samples; fastest of {args.iterations} "
          "iterations and of 3 model passes (this VM's timings drift by ±20 %)")  # fmt: skip
    print(f"{'method':<12}{'size':>6}{'iter s':>9}{'model F+B s':>13}{'ratio':>7}{'target':>8}"
          f"{'300 its s':>11}{'per image, batch':>18}")  # fmt: skip
    for size in args.sizes:
        single = load_image("chelsea", (size, size))[0][None].to(device)
        names = ["chelsea", "astronaut", "coffee", "rocket"][: args.batch]
        batch = torch.stack([load_image(n, (size, size))[0] for n in names]).to(device)
        for method in args.methods:
            # The floor is measured next to each method: CPU timings here drift.
            floor = model_forward_backward(model.module, size, 16, device, 3)
            iteration, setup = per_iteration(model, single, method, size, args.iterations)
            batched, _ = per_iteration(model, batch, method, size, max(3, args.iterations // 2))
            target = TARGETS.get(method)
            print(f"{method:<12}{size:>6}{iteration:>9.3f}{floor:>13.3f}{iteration / floor:>7.2f}"
                  f"{(f'≤{target}' if target else '-'):>8}{setup + 300 * iteration:>11.0f}"
                  f"{batched / batch.shape[0]:>12.3f} ({batch.shape[0]})", flush=True)  # fmt: skip
    if args.check_defaults:
        check_defaults(model)


if __name__ == "__main__":
    main()
