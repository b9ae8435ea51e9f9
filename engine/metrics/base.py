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
from torch import Tensor, nn

from engine.attribution.base import chunks
from engine.masks.view import MaskView
from engine.method import validation_message
from engine.runtime import max_rows_per_pass

PASSES_SHOWN_AT = (224, 224)  # the image size the listings state each metric's passes for


class MetricOptions(BaseModel):
    """Parameters of a metric. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def model_passes(self, height: int, width: int) -> int:
        """Model passes per image of this metric at ``height`` × ``width``: the rows its
        perturbed inputs put through the model (the cost model of
        :meth:`engine.method.MethodOptions.model_passes`; those rows run in batches)."""
        return 2


class MetricError(ValueError):
    """An unknown metric, invalid parameters, or a metric that does not apply to a method."""


ComputeFn = Callable[[MaskView, Any], dict[str, Tensor]]


def perturbed_outputs(
    model: nn.Module, count: int, build: Callable[[slice], Tensor], row: Tensor,
    rows_each: int = 1, most: int | None = None,
) -> Tensor:  # fmt: skip
    """model(build(s)) for consecutive slices s of ``count`` items, concatenated: the one way a
    metric puts its perturbed inputs through the model. Each item is ``rows_each`` input rows
    like ``row``; a pass holds as many whole items as the process's rows per pass allow
    (:func:`~engine.runtime.max_rows_per_pass`; at most ``most``, at least one), and its inputs
    are built only for that pass, so a metric's memory is that of one pass, whatever its count."""
    size = max(1, max_rows_per_pass(row.numel()) // rows_each)
    return torch.cat([model(build(s)) for s in chunks(count, min(size, most or size), row)])


def outputs_of(model: nn.Module, images: Tensor) -> Tensor:
    """model(images) for a batch already built, in passes of the process's rows per pass
    (:func:`perturbed_outputs`)."""
    return perturbed_outputs(model, len(images), images.__getitem__, images[0])


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

    def passes_at_defaults(self, height: int, width: int) -> int:
        """Model passes (input rows) per image at the default parameters (a required parameter,
        such as iterations-to-target's target, does not change the cost)."""
        return self.options.model_construct().model_passes(height, width)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "definition": self.definition,
            "keys": list(self.keys),
            "mask_methods_only": self.needs_history,
            "model_passes_224": self.passes_at_defaults(*PASSES_SHOWN_AT),
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
        with torch.inference_mode():
            scores.update(request.spec.compute(view, request.options))
    return scores
