"""A study's files: ``scores.csv``, ``summary.json``, ``table.md`` and one figure per metric.

The figures are drawn with matplotlib's Agg backend (no display): per metric ``<metric>.png``
with one panel per score key, each variant's values as a box (quartiles, whiskers at 1.5 IQR)
with the values as points over it, the mean as a diamond and its 95 % bootstrap interval as an
error bar. Variants keep one colour across figures, taken from the project's ``viridis``
anchors (``engine.render``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.result import json_text
from engine.study.aggregate import rows_to_csv, summarize

ARROWS = {"higher": "↑", "lower": "↓", None: ""}


def metric_of_keys() -> dict[str, str]:
    """Score key → the metric that writes it (``engine.catalogue``)."""
    from engine.catalogue import all_metrics

    return {key: spec.name for spec in all_metrics() for key in spec.keys}


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def main_scores(summary: dict[str, Any]) -> list[str]:
    """The table's columns: the graded keys of the requested metrics (a method's own scores,
    such as a mask method's loss, do not compare across methods); without metrics, every
    graded key; without any graded key, every key."""
    owners = metric_of_keys()
    graded = [s for s in summary["scores"] if summary["better"][s] is not None]
    return [s for s in graded if s in owners] or graded or list(summary["scores"])


def markdown_table(summary: dict[str, Any]) -> str:
    """Variants × :func:`main_scores`: ``mean [ci_low, ci_high]``, the best variant of each
    column (rank 1) in bold, undefined values counted (every score is in summary.json)."""
    columns = main_scores(summary)
    cells = {(c["variant"], c["score"]): c for c in summary["rows"]}
    header = ["variant", *(f"{s} {ARROWS[summary['better'][s]]}".rstrip() for s in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in summary["variants"]:
        row = [variant.replace("|", "\\|")]
        for score in columns:
            cell = cells.get((variant, score))
            if cell is None or cell["mean"] is None:
                row.append("–")
                continue
            text = number(cell["mean"])
            if cell["ci_low"] is not None:
                text += f" [{number(cell['ci_low'])}, {number(cell['ci_high'])}]"
            if cell["rank"] == 1:
                text = f"**{text}**"
            if cell["undefined"]:
                text += f" ({cell['undefined']} undefined)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    notes = ("Mean over inputs [95 % bootstrap CI of the mean]; ↑ higher is better, ↓ lower; "
             "the best variant per column in bold.")  # fmt: skip
    return "\n".join([*lines, "", notes, ""])


def variant_colours(count: int) -> list[tuple[float, float, float]]:
    from engine.render import apply_colormap

    rgb = apply_colormap(np.linspace(0.1, 0.85, count)[None], "viridis")[0] / 255
    return [tuple(float(c) for c in colour) for colour in rgb]


def metric_figure(
    rows: Sequence[dict[str, Any]], summary: dict[str, Any], keys: list[str], title: str,
    path: Path,
) -> None:  # fmt: skip
    """One panel per score key of ``keys``: per-variant box, points, mean and CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    colours = variant_colours(len(variants))
    cells = {(c["variant"], c["score"]): c for c in summary["rows"]}
    width = max(3.2, 0.9 * len(variants) + 1.2)
    figure, axes = plt.subplots(1, len(keys), figsize=(width * len(keys), 3.6), squeeze=False)
    jitter = np.random.default_rng(0)
    for axis, key in zip(axes[0], keys, strict=True):
        for position, variant in enumerate(variants):
            values = [
                r["value"]
                for r in rows
                if r["variant"] == variant and r["score"] == key and r["value"] is not None
            ]
            cell = cells.get((variant, key))  # fmt: skip
            if not values or cell is None:
                continue
            axis.boxplot([values], positions=[position], widths=0.5, showfliers=False,
                         medianprops={"color": "black"}, boxprops={"color": "grey"},
                         whiskerprops={"color": "grey"}, capprops={"color": "grey"})  # fmt: skip
            spread = jitter.uniform(-0.12, 0.12, len(values))
            axis.scatter(position + spread, values, s=14, color=colours[position], alpha=0.8,
                         zorder=3)  # fmt: skip
            if cell["ci_low"] is not None:
                error = [[cell["mean"] - cell["ci_low"]], [cell["ci_high"] - cell["mean"]]]
                axis.errorbar([position + 0.32], [cell["mean"]], yerr=error, fmt="D",
                              color="black", markersize=5, capsize=4, zorder=4)  # fmt: skip
            else:
                axis.plot([position + 0.32], [cell["mean"]], "D", color="black", markersize=5)
        better = summary["better"].get(key)
        axis.set_title(
            f"{key} {ARROWS[better]}".rstrip() + (f" ({better} is better)" if better else ""),
            fontsize=9,
        )
        axis.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
        axis.set_xlim(-0.6, len(variants) - 0.4)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{title}: values per input, mean ◆ with 95 % bootstrap CI", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, variants: Sequence[str] | None = None
) -> dict[str, Path]:
    """Write ``scores.csv`` (every row), ``summary.json`` (:func:`summarize`), ``table.md`` and
    ``<metric>.png`` for each quality metric whose keys appear in ``rows`` (a method's own
    scores, such as IG's completeness gap, are in the tables only). Returns name → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, variants)
    written = {"scores.csv": out / "scores.csv", "summary.json": out / "summary.json",
               "table.md": out / "table.md"}  # fmt: skip
    written["scores.csv"].write_text(rows_to_csv(rows))
    written["summary.json"].write_text(json_text(summary, indent=2) + "\n")
    written["table.md"].write_text(markdown_table(summary))
    families: dict[str, list[str]] = {}
    owners = metric_of_keys()
    for key in summary["scores"]:
        if key in owners:
            families.setdefault(owners[key], []).append(key)
    for metric, keys in families.items():
        path = out / f"{metric}.png"
        metric_figure(rows, summary, keys, metric, path)
        written[path.name] = path
    return written
