"""What an explanation-quality metric is: its options model, its spec, a validated request.

Every metric reads one view of an explanation, :class:`~engine.masks.view.MaskView`: a mask
method's own mask on pixels, wavelets or shearlets, or a gradient/CAM heat map min-max normalised
to [0, 1] as a pixel mask. The metrics of the ShearletX and StartGrad papers are defined on
exactly that (CP scores, Hallucination, faithfulness), so one implementation serves every
method. A request names metrics (optionally with parameters); each lands in the result's scores
under its own keys, with its definition and parameters recorded. ``engine.catalogue`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from engine.masks.view import MaskView
from engine.method import validation_message


class MetricOptions(BaseModel):
    """Parameters of a metric. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def model_passes(self, height: int, width: int) -> int:
        """Model passes per image of this metric at ``height`` × ``width`` (the cost model of
        :meth:`engine.method.MethodOptions.model_passes`)."""
        return 2


class MetricError(ValueError):
    """An unknown metric, invalid parameters, or a metric that does not apply to a method."""


ComputeFn = Callable[[MaskView, Any], dict[str, Tensor]]


def pixel_heatmap(view: MaskView) -> Tensor:
    """The explanation's pixel heat map (B, H, W), for the metrics defined on pixels."""
    if view.heatmap is None:
        raise MetricError("this metric needs the explanation's pixel heat map")
    return view.heatmap.to(view.x.device, view.x.dtype)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    summary: str
    definition: str  # the paper and the definition's name, e.g. "ShearletX (CVPR 2023), Fig. 4"
    options: type[MetricOptions]
    compute: ComputeFn  # per-image scores (B,) by key
    keys: tuple[str, ...]  # the score keys it writes
    needs_history: bool = False  # only for mask methods (their per-iteration history)

    def parse_options(self, options: dict[str, Any] | None) -> MetricOptions:
        try:
            return self.options.model_validate(options or {})
        except ValidationError as error:
            problems = validation_message(error)
            raise MetricError(f"invalid parameters for metric {self.name}: {problems}") from error

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "definition": self.definition,
            "keys": list(self.keys),
            "mask_methods_only": self.needs_history,
            "options_schema": self.options.model_json_schema(),
        }


@dataclass
class MetricRequest:
    spec: MetricSpec
    options: MetricOptions = field(default_factory=MetricOptions)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "definition": self.spec.definition,
            "parameters": self.options.model_dump(mode="json"),
            "keys": list(self.spec.keys),
        }


def compute_metrics(view: MaskView, requests: Sequence[MetricRequest]) -> dict[str, Tensor]:
    """Every requested metric's per-image scores, merged by key."""
    scores: dict[str, Tensor] = {}
    for request in requests:
        if request.spec.needs_history and view.history is None:
            raise MetricError(f"metric {request.spec.name} needs a mask method's history")
        with torch.no_grad():
            scores.update(request.spec.compute(view, request.options))
    return scores
