"""A study's table: one row per input × variant × score key, and its summary per variant × score.

For the n defined values v_1 … v_n of one variant and score: mean, median, sample standard
deviation s = √(Σ(v_i − v̄)² / (n − 1)), and the 95 % percentile bootstrap confidence interval
of the mean: B = 2000 resamples of n values drawn with replacement (numpy's ``default_rng(0)``,
fresh for each variant × score, so a cell's interval does not depend on the other cells), the
2.5th and 97.5th percentiles of their means. For the mask-curve keys of the ShearletX and
StartGrad papers (the CP scores and the retained probabilities, :data:`IQM_SCORES`) also the
interquartile mean, as rliable reports it: the mean of the values left after cutting
⌊0.25 n⌋ from each end of the sorted values (``scipy.stats.trim_mean(v, 0.25)``). Ranks order
the variants by mean in the score's better direction (``engine.metrics.glossary``), 1 = best,
ties sharing the lower rank. Every number is finite or None (JSON has no NaN).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.metrics.glossary import SCORES
from engine.study.variants import Variant

if TYPE_CHECKING:
    from engine.result import Explanation

STUDY_COLUMNS = ("input_index", "input", "variant", "method", "target", "predicted", "score",
                 "value")  # fmt: skip
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
IQM_SCORES = frozenset({
    "cp_l1_sx", "cp_l1_pixel_sx", "cp_entropy_sx",  # ShearletX paper
    "retained_probability_sg", "cp_l1_sg", "cp_pixel_sg",  # StartGrad paper
    "retained_probability",  # a mask method's own, from its optimisation
})  # fmt: skip


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def score_rows(
    explanation: Explanation, variant: Variant, inputs: Sequence[tuple[int, str]]
) -> list[dict[str, Any]]:
    """One row per input × score key of ``explanation.scores[i]`` (in the result's key order);
    ``inputs[i]`` = (input_index, input_name) of batch position i. An undefined score (NaN,
    ±∞) has value None."""
    if len(inputs) != len(explanation.scores):
        raise ValueError(f"{len(inputs)} input names for a batch of {len(explanation.scores)}")
    rows = []
    for (index, name), prediction, scores in zip(
        inputs, explanation.predictions, explanation.scores, strict=True
    ):
        for key, value in scores.items():
            rows.append({
                "input_index": int(index), "input": name, "variant": variant.label,
                "method": variant.method, "target": prediction.target,
                "predicted": prediction.class_index, "score": key, "value": _finite(value),
            })  # fmt: skip
    return rows


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the sorted values without ⌊0.25 n⌋ at each end (scipy's trim_mean(v, 0.25))."""
    cut = int(0.25 * len(values))
    return float(np.sort(values)[cut : len(values) - cut].mean())


def bootstrap_interval(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean (2000 resamples, default_rng(0))."""
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))].mean(1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def describe(values: Sequence[float | None], score: str) -> dict[str, Any]:
    """n, mean, median, std, ci_low, ci_high, iqm and undefined of one variant × score."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    n = len(defined)
    entry: dict[str, Any] = {"n": n, "mean": None, "median": None, "std": None, "ci_low": None,
                             "ci_high": None, "iqm": None,
                             "undefined": len(values) - n}  # fmt: skip
    if n == 0:
        return entry
    entry["mean"], entry["median"] = float(defined.mean()), float(np.median(defined))
    if n >= 2:
        entry["std"] = float(defined.std(ddof=1))
        entry["ci_low"], entry["ci_high"] = bootstrap_interval(defined)
    if score in IQM_SCORES:
        entry["iqm"] = interquartile_mean(defined)
    return {key: _finite(v) if isinstance(v, float) else v for key, v in entry.items()}


def better_direction(score: str) -> str | None:
    entry = SCORES.get(score)
    return entry[1] if entry else None


def summarize(rows: Sequence[dict[str, Any]], variants: Sequence[str] | None = None) -> dict:
    """Per variant × score statistics of ``rows`` (see the module's docstring).

    ``variants``: the labels in the order to report (default: first appearance in ``rows``);
    scores in order of first appearance. A variant × score without rows is left out.
    """
    order = list(variants) if variants is not None else []
    scores: list[str] = []
    values: dict[tuple[str, str], list[float | None]] = {}
    for row in rows:
        if row["variant"] not in order:
            order.append(row["variant"])
        if row["score"] not in scores:
            scores.append(row["score"])
        values.setdefault((row["variant"], row["score"]), []).append(_finite(row["value"]))
    better = {score: better_direction(score) for score in scores}
    cells = []
    for score in scores:
        entries = [{"variant": v, "score": score, **describe(values[(v, score)], score)}
                   for v in order if (v, score) in values]  # fmt: skip
        means = [e["mean"] for e in entries if e["mean"] is not None]
        for entry in entries:
            entry["rank"] = None
            if better[score] is not None and entry["mean"] is not None:
                sign = 1 if better[score] == "higher" else -1
                entry["rank"] = 1 + sum(sign * m > sign * entry["mean"] for m in means)
        cells.extend(entries)
    cells.sort(key=lambda e: (order.index(e["variant"]), scores.index(e["score"])))
    return {"variants": order, "scores": scores, "better": better, "rows": cells}


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as CSV with a header of :data:`STUDY_COLUMNS`; an undefined value is empty;
    floats written exactly (``repr``), so :func:`rows_from_csv` gives the same rows back."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STUDY_COLUMNS)
    for row in rows:
        value = row["value"]
        writer.writerow([*(row[c] for c in STUDY_COLUMNS[:-1]),
                         "" if value is None else repr(float(value))])  # fmt: skip
    return out.getvalue()


def rows_from_csv(text: str) -> list[dict[str, Any]]:
    """The rows of a ``scores.csv`` (:func:`rows_to_csv`), with their types."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != STUDY_COLUMNS:
        raise ValueError(f"a study CSV has the columns {', '.join(STUDY_COLUMNS)}")
    return [{**row, "input_index": int(row["input_index"]), "target": int(row["target"]),
             "predicted": int(row["predicted"]),
             "value": float(row["value"]) if row["value"] else None}
            for row in reader]  # fmt: skip
