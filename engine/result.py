"""What ``explain`` returns: the attribution, heat map, predictions, scores, the method's typed
outputs and the record of how it was made."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from engine.masks.extremal import SeriesMaskOutputs
from engine.masks.methods import MaskOutputs
from engine.metrics.glossary import finite_scores, score_baselines

MethodOutputs = MaskOutputs | SeriesMaskOutputs | None


@dataclass
class Prediction:
    class_index: int
    label: str
    probability: float
    target: int
    target_label: str
    target_probability: float


@dataclass
class Explanation:
    """The result of :func:`engine.explain` for a batch of B inputs (tensors on the CPU).

    ``attribution`` has the input's shape (B, C, H, W) (CAMs: C = 1; series: (B, T, D));
    ``heatmap`` is its reduction to a map, as the input kind defines it (images: (B, H, W) by
    ``options['heatmap_reduction']``); ``inputs`` are the explained inputs (images in [0, 1]);
    ``scores`` holds per-input scalars (e.g. IG's completeness gap, quality metrics);
    ``outputs`` a method's typed parts beyond the attribution (:class:`MaskOutputs` of the image
    mask methods, :class:`SeriesMaskOutputs` of ExtremalMask), or ``None``.
    """

    method: str
    model: str
    input_kind: str
    attribution: Tensor
    heatmap: Tensor
    inputs: Tensor
    predictions: list[Prediction]
    options: dict[str, Any]
    scores: list[dict[str, float]]
    metadata: dict[str, Any]
    outputs: MethodOutputs = None
    truth: Tensor | None = None  # series: the ground truth (B, T, D) of 0/1, drawn in series.png

    @property
    def targets(self) -> list[int]:
        return [p.target for p in self.predictions]

    def summary(self, index: int = 0) -> dict[str, Any]:
        """A JSON-able record of input ``index``: prediction, scores, options, reproducibility.
        An undefined score (NaN in :attr:`scores`) is None, its reason in ``undefined_scores``."""
        meta = dict(self.metadata)
        meta["inputs"] = [meta["inputs"][index]] if meta.get("inputs") else []
        scores, undefined = finite_scores(self.scores[index])
        summary = {
            "method": self.method,
            "model": self.model,
            "input_kind": self.input_kind,
            "prediction": vars(self.predictions[index]),
            "scores": scores,
            "undefined_scores": undefined,
            "baselines": score_baselines(scores),
            "options": self.options,
            "attribution_shape": list(self.attribution.shape[1:]),
            "metadata": meta,
        }
        if isinstance(self.outputs, MaskOutputs):
            summary["representation"] = self.outputs.representation
            summary["iterations_run"] = self.outputs.iterations_run
        return summary


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text. NaN and ±∞ are refused (``json.dumps`` would write them as bare
    ``NaN``, which is not JSON): make undefined values None first (:func:`finite_scores`,
    :func:`finite_history`)."""
    return json.dumps(value, indent=indent, allow_nan=False)


def finite_history(history: dict[str, list[float]]) -> dict[str, list[float | None]]:
    """A per-iteration history with each undefined value (NaN, ±∞) as None: null in
    ``history.json``; the summary's ``undefined_scores`` says why for its key."""
    return {key: [v if math.isfinite(v) else None for v in values]
            for key, values in history.items()}  # fmt: skip
