"""Effect of engine.runtime.keep_freed_memory (glibc malloc keeps freed memory for reuse) on the
time of typical explanations, each measured in a fresh process with the setting off and on.

    python -m benchmarks.allocator [--repeats 2]

Printed per workload: wall and kernel (sys) seconds of the best of ``--repeats`` runs after a
warm-up, with the setting off and on, and the ratio off/on of the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

WORKLOADS = {
    "integrated_gradients, 64 steps": ("integrated_gradients", {"steps": 64}),
    "smoothgrad, 32 samples": ("smoothgrad", {"samples": 32}),
    "pixelmask 256², 20 iterations": ("pixelmask", {"iterations": 20, "image_size": 256}),
    "waveletx 256², 20 iterations": ("waveletx", {"iterations": 20, "image_size": 256}),
    "shearletx 256², 5 iterations": ("shearletx", {"iterations": 5, "image_size": 256}),
}

CHILD = """
import json, resource, sys, time
from engine.runtime import keep_freed_memory
keep_freed_memory()
from engine import explain
from engine.models import load_model
method, options, repeats = json.loads(sys.argv[1])
model = load_model("efficientnet_lite0")
warm = {**options, "iterations": 1} if "iterations" in options else options
explain(model, "chelsea", method, warm, resize="resize")
best = None
for _ in range(repeats):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    explain(model, "chelsea", method, options, resize="resize")
    after = resource.getrusage(resource.RUSAGE_SELF)
    run = (time.perf_counter() - start, after.ru_stime - before.ru_stime)
    best = run if best is None or run[0] < best[0] else best
print(json.dumps(best))
"""


def measure(method: str, options: dict, repeats: int, keep: bool) -> tuple[float, float]:
    env = {**os.environ, "EXPLAINER_KEEP_FREED_MEMORY": "1" if keep else "0"}
    argument = json.dumps([method, options, repeats])
    output = subprocess.run([sys.executable, "-c", CHILD, argument], env=env, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    return tuple(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("EfficientNet-Lite0, chelsea, CPU; seconds (wall / kernel), best of "
          f"{args.repeats} after a warm-up, each setting in a fresh process")  # fmt: skip
    print(f"{'workload':<34}{'off wall':>10}{'off sys':>9}{'on wall':>9}{'on sys':>8}{'off/on':>8}")
    for name, (method, options) in WORKLOADS.items():
        off = measure(method, options, args.repeats, keep=False)
        on = measure(method, options, args.repeats, keep=True)
        print(f"{name:<34}{off[0]:>10.2f}{off[1]:>9.2f}{on[0]:>9.2f}{on[1]:>8.2f}"
              f"{off[0] / on[0]:>8.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
