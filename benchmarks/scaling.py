"""Growth of a library call's cost in IG steps and in pixels, with and without the allocator.

``engine.explain`` called from Python applies ``keep_freed_memory`` once per process
(``engine.runtime.apply_process_settings``); ``EXPLAINER_KEEP_FREED_MEMORY=0`` opts out. Each
setting runs in a fresh process of its own (a process cannot undo the setting), the two
alternating, ``--rounds`` times. Each process times ``engine.explain`` of EfficientNet-Lite0 on
one photograph: Integrated Gradients at 8 … 64 steps at 224², and IG with 8 steps at 224² …
448². Prints the times (fastest of the rounds) and the exponents of the least-squares fit of
log time against log steps and log pixels: 1.0 is linear growth, the target.

    python -m benchmarks.scaling [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

STEPS = [8, 16, 32, 64]
SIZES = [224, 320, 448]
SIZE_STEPS = 8

CHILD = """
import json, sys, time, torch
torch.set_num_threads({threads})
from engine import explain
from engine.data import load_image
from engine.models import cached_model
from engine.runtime import apply_process_settings
model = cached_model("efficientnet_lite0", None, "cpu")

def seconds(size, steps):
    x = load_image("chelsea", (size, size))[0][None]
    options = {{"steps": steps, "internal_batch_size": 32}}
    explain(model, x, "integrated_gradients", options, target=285, resize="none")  # warm-up
    start = time.perf_counter()
    explain(model, x, "integrated_gradients", options, target=285, resize="none")
    return time.perf_counter() - start

steps = {{s: seconds(224, s) for s in {steps}}}
sizes = {{p: seconds(p, {size_steps}) for p in {sizes}}}
print(json.dumps({{"applied": apply_process_settings(), "steps": steps, "sizes": sizes}}))
"""


def run_child(keep: str, threads: int) -> dict:
    env = {**os.environ, "EXPLAINER_KEEP_FREED_MEMORY": keep}
    code = CHILD.format(threads=threads, steps=STEPS, sizes=SIZES, size_steps=SIZE_STEPS)
    output = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def exponent(xs: list[float], seconds: list[float]) -> float:
    """Slope of the least-squares line through (log x, log seconds)."""
    return float(np.polyfit(np.log(xs), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# engine.explain, efficientnet_lite0, chelsea, IG (32 rows per pass), CPU, "
          f"{args.threads} thread(s), fastest of {args.rounds} rounds of fresh processes, "
          f"the settings alternating; load average {load} at start")  # fmt: skip
    best: dict[str, dict] = {}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for keep in ("1", "0"):
            result = run_child(keep, args.threads)
            if keep in best:
                for key in ("steps", "sizes"):
                    for point, value in result[key].items():
                        best[keep][key][point] = min(best[keep][key][point], value)
            else:
                best[keep] = result
    names = {"1": "allocator setting (default)", "0": "EXPLAINER_KEEP_FREED_MEMORY=0"}
    for keep in ("1", "0"):
        result = best[keep]
        steps = [result["steps"][str(s)] for s in STEPS]
        sizes = [result["sizes"][str(p)] for p in SIZES]
        print(f"\n{names[keep]} (applied: {result['applied']})")
        print("  IG steps   " + "".join(f"{s:>9}" for s in STEPS) + "   exponent")
        print("  seconds    " + "".join(f"{t:>9.3f}" for t in steps)
              + f"   {exponent(STEPS, steps):.2f}")  # fmt: skip
        print(f"  size (IG {SIZE_STEPS})" + "".join(f"{p:>8}²" for p in SIZES) + "   exponent")
        print("  seconds    " + "".join(f"{t:>9.3f}" for t in sizes)
              + f"   {exponent([p * p for p in SIZES], sizes):.2f} in pixels; "
              f"448²/224²: ×{sizes[-1] / sizes[0]:.2f} (pixels ×4)")  # fmt: skip
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n# {time.perf_counter() - started:.0f} s; load average {load} at the end")


if __name__ == "__main__":
    main()
