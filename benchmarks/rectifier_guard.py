"""Cost of the functional-rectifier check of Guided Backprop and Deconvolution.

After every forward pass the rule walks the output's autograd graph for rectifier nodes that no
hooked module replaced (``functional_rectifier``). This prints, per model and batch size, the
number of graph nodes walked and the median time of one Guided Backprop gradient with the check
and with it switched off (same hooks otherwise), alternating the two to share any drift.

    python -m benchmarks.rectifier_guard [--repeats 25] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from engine.attribution import rectifier_rules
from engine.attribution.base import InputGradient
from engine.data import load_image
from engine.models import load_model
from engine.runtime import keep_freed_memory

MODELS = {"efficientnet_lite0": None, "resnet18": "random:0", "vgg16": "random:0"}


def graph_size(output: torch.Tensor) -> int:
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(parent for parent, _ in node.next_functions)
    return len(seen)


def median_ms(fn, repeats: int, device: torch.device) -> dict[str, float]:
    checks = {"check": rectifier_rules.functional_rectifier, "off": lambda output: None}
    times: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(repeats):
        for name, check in checks.items():
            with mock.patch.object(rectifier_rules, "functional_rectifier", check):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    keep_freed_memory()
    device = torch.device(args.device)
    print(f"Guided Backprop gradient, 224² photographs, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'model':<20}{'batch':>6}{'nodes':>7}{'check ms':>10}{'off ms':>10}{'ratio':>8}")
    for name, weights in MODELS.items():
        model = load_model(name, weights=weights, device=device)
        for batch in args.batches:
            x = torch.stack([load_image("chelsea", (224, 224))[0]] * batch).to(device)
            targets = torch.full((batch,), 285, device=device)
            gradient = InputGradient(model.module, rule=rectifier_rules.GuidedBackpropRule())
            with torch.enable_grad():
                nodes = graph_size(model.module(x.requires_grad_(True)))
            ms = median_ms(lambda: gradient(x, targets), args.repeats, device)  # noqa: B023
            print(f"{name:<20}{batch:>6}{nodes:>7}{ms['check']:>10.1f}"
                  f"{ms['off']:>10.1f}{ms['check'] / ms['off']:>8.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
