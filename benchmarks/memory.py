"""The memory estimate the API refuses jobs by, against what explain() really allocates.

    python -m benchmarks.memory [--sizes 256 512 1024] [--samples 1 4]

For each mask method, size and noise-sample count: the submit check's estimate
(engine.plan.working_set_bytes: the method's own tensors plus its noise samples through the
model, at the model's pass memory measured on the meta device) against the peak of the bytes
the operators allocate during explain() (engine.models.inspection's dispatch-mode counter;
caches warmed first, so a shearlet system built once per size is not counted). Prints
estimate / measured: above 1 the check is cautious, below 1 a job could pass the check and
then need more than its budget.
"""

from __future__ import annotations

import argparse
import time

from engine import explain
from engine.catalogue import get_method
from engine.models import MODELS, load_model
from engine.models.inspection import _NewBytes
from engine.plan import working_set_bytes
from engine.runtime import keep_freed_memory


def measure(model, method: str, options: dict, size: int) -> tuple[float, float, float]:
    """(estimate GB, measured peak GB, seconds) of one mask explanation at size²."""
    spec = MODELS[model.spec.name]
    estimate = working_set_bytes(spec, get_method(method).parse_options(options), size, size)
    explain(model, "chelsea", method, {**options, "iterations": 1})  # warm the caches
    started = time.perf_counter()
    with _NewBytes() as counter:
        explain(model, "chelsea", method, options)
    return estimate / 2**30, counter.peak / 2**30, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--methods", nargs="+", default=["pixelmask", "waveletx", "shearletx"])
    args = parser.parse_args()
    keep_freed_memory()
    model = load_model("efficientnet_lite0")
    print("| method | size | noise samples | estimate (GB) | measured peak (GB) | ratio | s |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        for size in args.sizes:
            for samples in args.samples:
                options = {"image_size": size, "noise_samples": samples, "iterations": 2}
                estimate, peak, seconds = measure(model, method, options, size)
                print(f"| {method} | {size}² | {samples} | {estimate:.2f} | {peak:.2f} | "
                      f"{estimate / peak:.2f} | {seconds:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
