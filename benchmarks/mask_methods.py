"""Speed of the mask methods: one iteration against the model's own forward+backward on a noise
batch of the same shape (the floor of the ratio is 1.0), per method and size, as interleaved
pairs in one process: after each iteration of the method (timed between its progress
callbacks) the model's forward+backward runs once, so both see the same load.

    python -m benchmarks.mask_methods [--sizes 224 256] [--pairs 6] [--threads 1]

The model is the one the engine runs (engine.models.cached_model: its layout and settings).
The table gives the medians of the pairs' wall times and of their ratios (the first pair is a
warm-up and dropped; range: the lowest and highest pair), the median ratio of the process's CPU
time (one thread: the work itself, whatever else runs on the machine), the target the issue set
and the wall time of 300 iterations.
Optionally (--check-defaults) runs ShearletX, WaveletX and PixelMask with their default
settings at 256×256 on chelsea and prints the retained probability and mask mean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from engine import explain
from engine.data import load_image
from engine.models import cached_model
from engine.runtime import keep_freed_memory

TARGETS = {"pixelmask": 1.03, "waveletx": 1.10, "shearletx": 1.7}
NOISE_SAMPLES = 16


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_forward_backward(module, batch: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds of one forward+backward of the model w.r.t. its input."""
    leaf = batch.clone().requires_grad_(True)
    sync(batch.device)
    start, cpu = time.perf_counter(), time.process_time()
    module(leaf).softmax(1)[:, 285].sum().backward()
    sync(batch.device)
    return time.perf_counter() - start, time.process_time() - cpu


def interleaved(model, image, method: str, size: int, pairs: int) -> tuple[list, list, float]:
    """((wall, CPU) seconds of each iteration, (wall, CPU) of each model pass) of ``pairs``
    pairs after a warm-up pair, and the seconds before the first iteration."""
    batch = torch.rand(NOISE_SAMPLES, 3, size, size, device=image.device)
    iterations: list[tuple[float, float]] = []
    passes: list[tuple[float, float]] = []
    clock = {"last": (0.0, 0.0), "start": time.perf_counter(), "setup": 0.0}

    def progress(done: int, total: int, **_) -> None:
        now = (time.perf_counter(), time.process_time())
        if done == 1:
            clock["setup"] = now[0] - clock["start"]
        else:
            iterations.append((now[0] - clock["last"][0], now[1] - clock["last"][1]))
        passes.append(model_forward_backward(model.module, batch))
        clock["last"] = (time.perf_counter(), time.process_time())

    options = {"iterations": pairs + 1, "image_size": size, "noise_samples": NOISE_SAMPLES}
    explain(model, image, method, options, progress=progress)
    return iterations, passes[1 : len(iterations) + 1], clock["setup"]


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
    parser.add_argument("--methods", nargs="+", default=["pixelmask", "waveletx", "shearletx"])
    parser.add_argument("--pairs", type=int, default=6, help="timed pairs after a warm-up pair")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--check-defaults", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = cached_model("efficientnet_lite0", None, str(device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"# efficientnet_lite0 (engine.models.cached_model) on {device} ({name}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s), {NOISE_SAMPLES} noise "
          f"samples; medians of {args.pairs} interleaved pairs (one iteration, then the model's "
          f"forward+backward on a {NOISE_SAMPLES}-image batch); load average {load} at the "
          "start (a shared machine: ratios, not speeds)")  # fmt: skip
    print(f"{'method':<12}{'size':>6}{'iter s':>9}{'model F+B s':>13}{'ratio':>7}{'range':>13}"
          f"{'CPU ratio':>11}{'target':>8}{'300 its s':>11}")  # fmt: skip
    for size in args.sizes:
        image = load_image("chelsea", (size, size))[0][None].to(device)
        for method in args.methods:
            iterations, passes, setup = interleaved(model, image, method, size, args.pairs)
            ratios = [i[0] / p[0] for i, p in zip(iterations, passes, strict=True)]
            cpu = statistics.median(i[1] / p[1] for i, p in zip(iterations, passes, strict=True))
            iteration = statistics.median(i[0] for i in iterations)
            target = TARGETS.get(method)
            spread = f"{min(ratios):.2f}–{max(ratios):.2f}"
            print(f"{method:<12}{size:>6}{iteration:>9.3f}"
                  f"{statistics.median(p[0] for p in passes):>13.3f}"
                  f"{statistics.median(ratios):>7.2f}{spread:>13}{cpu:>11.2f}"
                  f"{(f'≤{target}' if target else '-'):>8}{setup + 300 * iteration:>11.0f}",
                  flush=True)  # fmt: skip
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"# load average {load} at the end")
    if args.check_defaults:
        check_defaults(model)


if __name__ == "__main__":
    main()
