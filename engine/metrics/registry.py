"""The registry of explanation-quality metrics and the one view of an explanation they all read.

Every explanation, whatever its method, is seen as a mask m ∈ [0, 1] on a representation T of
the image (:class:`MaskView`): a mask method's own mask on pixels, wavelets or shearlets, or a
gradient/CAM heat map min-max normalised to [0, 1] as a pixel mask. The metrics of the ShearletX
and StartGrad papers are defined on exactly that (CP scores, Hallucination, faithfulness), so one
implementation serves every method. A request names metrics (optionally with parameters); each
lands in the result's scores under its own keys, with its definition and parameters recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from engine.masks.representation import (
    Coefficients,
    NoiseModel,
    PixelRepresentation,
    Representation,
    image_generators,
)
from engine.registry import validation_message


class MetricOptions(BaseModel):
    """Parameters of a metric. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class MetricError(ValueError):
    """An unknown metric, invalid parameters, or a metric that does not apply to a method."""


@dataclass
class MaskView:
    """An explanation as a mask on a representation, with what is needed to obfuscate the image.

    ``masks`` (one per coefficient group, (B, 1, ...), values in [0, 1]) and ``coefficients``
    share the representation's computation layout; ``noise`` fills deleted coefficients.
    """

    model: nn.Module
    x: Tensor  # (B, 3, H, W) in [0, 1]
    targets: Tensor  # (B,)
    representation: Representation
    coefficients: Coefficients
    masks: list[Tensor]
    noise: NoiseModel
    seed: int = 0
    pixel_clamp: bool = True
    coefficient_clamp: bool = False
    history: list[dict[str, list[float]]] | None = None  # mask methods: per image, per iteration
    heatmap: Tensor | None = None  # (B, H, W) the explanation's pixel heat map (pixel metrics)

    def pixel_heatmap(self) -> Tensor:
        if self.heatmap is None:
            raise MetricError("this metric needs the explanation's pixel heat map")
        return self.heatmap.to(self.x.device, self.x.dtype)

    def explanation(self) -> Tensor:
        """E = clamp(T⁻¹(m ⊙ c), 0, 1): the image with deleted coefficients set to 0."""
        kept = [m * c for m, c in zip(self.masks, self.coefficients, strict=True)]
        return self.representation.reconstruct(kept).clamp(0, 1)

    def generators(self) -> list[torch.Generator]:
        return image_generators(self.seed, self.x.shape[0])


def heatmap_view(
    model: nn.Module, x: Tensor, targets: Tensor, heatmap: Tensor, seed: int = 0
) -> MaskView:
    """A gradient or CAM heat map (B, H, W) as a pixel mask: min-max normalised per image to
    [0, 1]; deleted pixels are filled with U[μ−σ, μ+σ] of the image (StartGrad's convention)."""
    flat = heatmap.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    mask = ((heatmap - low[:, None, None]) / scale[:, None, None]).unsqueeze(1).to(x)
    representation = PixelRepresentation()
    noise = representation.noise_model(x, [x], "uniform")
    return MaskView(model, x, targets, representation, [x], [mask], noise, seed)


ComputeFn = Callable[[MaskView, Any], dict[str, Tensor]]


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


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} registered twice")
    METRICS[spec.name] = spec
    return spec


def all_metrics() -> list[MetricSpec]:
    _load_all()
    return list(METRICS.values())


def get_metric(name: str) -> MetricSpec:
    _load_all()
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    return METRICS[name]


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


def parse_metrics(requested: Sequence[str | dict[str, Any]] | None) -> list[MetricRequest]:
    """Names, or ``{"name": ..., **parameters}`` objects → validated requests (each once)."""
    parsed: dict[str, MetricRequest] = {}
    for item in requested or []:
        if isinstance(item, str):
            name, parameters = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            parameters = {k: v for k, v in item.items() if k != "name"}
            name = item["name"]
        else:
            raise MetricError(f"a metric is a name or an object with a 'name', got {item!r}")
        spec = get_metric(name)
        if name in parsed:
            raise MetricError(f"metric {name!r} requested twice")
        parsed[name] = MetricRequest(spec, spec.parse_options(parameters))
    return list(parsed.values())


def compute_metrics(view: MaskView, requests: Sequence[MetricRequest]) -> dict[str, Tensor]:
    """Every requested metric's per-image scores, merged by key."""
    scores: dict[str, Tensor] = {}
    for request in requests:
        if request.spec.needs_history and view.history is None:
            raise MetricError(f"metric {request.spec.name} needs a mask method's history")
        with torch.no_grad():
            scores.update(request.spec.compute(view, request.options))
    return scores


def _load_all() -> None:
    """Import the modules that register metrics (once)."""
    import engine.metrics.convergence
    import engine.metrics.cp
    import engine.metrics.faithfulness
    import engine.metrics.hallucination
    import engine.metrics.perturbation  # noqa: F401
