"""Cost of every image quality metric against the explanation it scores, in one run.

For each metric at its default parameters, on one photograph and the bundled EfficientNet-Lite0:

- ``metric s``: the metric's own time inside ``engine.explain`` (``timings.metrics_s``), scoring
  a Grad-CAM (``iterations_to_target`` reads a mask method's history: a 3-iteration PixelMask);
- ``explanation s``: the same ``engine.explain`` call without metrics, end to end;
- ``rows``: the input rows the metric puts through the model (its ``model_passes`` at this size,
  the number ``python -m engine metrics`` and ``GET /quality-metrics`` list);
- ``floor s``: those rows as bare forward passes in batches of the rows-per-pass budget, timed in
  the same process: what any implementation of the metric's definition pays for the model.

Explanation, metric and floor alternate within each repeat (the first repeat is a warm-up and is
dropped), medians are printed, and the load average heads the table: the machine is shared, so
the ratios are the result.

    python -m benchmarks.metrics_cost [--repeats 4] [--sample chelsea] [--metrics NAME ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from engine import explain
from engine.catalogue import all_metrics, get_metric
from engine.data import load_image
from engine.explain import resolve_model
from engine.models.loading import prepared
from engine.runtime import keep_freed_memory, max_rows_per_pass

MODEL = "efficientnet_lite0"
EXPLANATION = ("gradcam", {})
HISTORY_EXPLANATION = ("pixelmask", {"iterations": 3})  # for the metrics that read a history
TARGET_LIMIT = 5.0  # issue 27: faithfulness and degradation each at most 5× a Grad-CAM


def request(name: str) -> dict[str, Any]:
    """The metric at its defaults (iterations-to-target needs a value to reach)."""
    return {"name": name, "target": 0.5} if name == "iterations_to_target" else {"name": name}


def explanation_of(name: str) -> tuple[str, dict[str, Any]]:
    return HISTORY_EXPLANATION if get_metric(name).needs_history else EXPLANATION


def forward_row_seconds(loaded, x: torch.Tensor) -> float:
    """Seconds per row of a bare forward pass of a full rows-per-pass batch of x."""
    rows = max_rows_per_pass(x[0].numel())
    batch = x.expand(rows, -1, -1, -1).contiguous()
    with prepared(loaded.module) as net, torch.inference_mode():
        start = time.perf_counter()
        net(batch)
        return (time.perf_counter() - start) / rows


def measure(names: list[str], sample: str, repeats: int) -> list[dict[str, Any]]:
    loaded = resolve_model(MODEL, None, None)
    x = load_image(sample, tuple(loaded.spec.input_size))[0][None]
    height, width = x.shape[-2:]
    times: dict[str, dict[str, list[float]]] = {
        n: {"metric": [], "explanation": [], "row": []} for n in names
    }
    for repeat in range(repeats + 1):  # repeat 0 warms up
        for name in names:
            method, options = explanation_of(name)
            start = time.perf_counter()
            explain(loaded, sample, method, options)
            explanation = time.perf_counter() - start
            scored = explain(loaded, sample, method, options, metrics=[request(name)])
            row = forward_row_seconds(loaded, x)
            if repeat:
                times[name]["explanation"].append(explanation)
                times[name]["metric"].append(scored.metadata["timings"]["metrics_s"])
                times[name]["row"].append(row)
    results = []
    for name in names:
        median = {key: statistics.median(values) for key, values in times[name].items()}
        rows = get_metric(name).passes_at_defaults(height, width)
        results.append({
            "metric": name,
            "explanation": explanation_of(name)[0],
            "rows": rows,
            "metric_s": median["metric"],
            "explanation_s": median["explanation"],
            "floor_s": rows * median["row"],
        })  # fmt: skip
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| metric | explanation | rows | metric s | explanation s | metric / explanation "
        "| floor s | metric / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        floor = f"{r['metric_s'] / r['floor_s']:.2f}" if r["floor_s"] else "–"
        lines.append(
            f"| {r['metric']} | {r['explanation']} | {r['rows']} | {r['metric_s']:.3f} "
            f"| {r['explanation_s']:.3f} | {r['metric_s'] / r['explanation_s']:.2f} "
            f"| {r['floor_s']:.3f} | {floor} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--sample", default="chelsea")
    parser.add_argument("--metrics", nargs="+", default=[m.name for m in all_metrics()])
    args = parser.parse_args()
    keep_freed_memory()
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = measure(args.metrics, args.sample, args.repeats)
    print(f"# Metric cost against the explanation it scores: {MODEL}, {args.sample} at 224², CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{max_rows_per_pass()} rows per pass, medians of {args.repeats} interleaved repeats "
          f"after a warm-up, {time.perf_counter() - started:.0f} s in all")  # fmt: skip
    print(f"load average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in load_before)}; "
          f"after {', '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    print()
    print(table(results))
    print()
    for r in results:
        if r["metric"] in ("faithfulness", "degradation"):
            ratio = r["metric_s"] / r["explanation_s"]
            verdict = "meets" if ratio <= TARGET_LIMIT else "misses"
            print(f"{r['metric']}: {ratio:.1f}× the Grad-CAM, {verdict} the ≤ {TARGET_LIMIT:g}× "
                  f"target; its {r['rows']} rows alone cost "
                  f"{r['floor_s'] / r['explanation_s']:.1f}× the Grad-CAM")  # fmt: skip


if __name__ == "__main__":
    main()
