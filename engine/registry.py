"""The one registry of explanation methods.

Each entry declares its name, family, input kinds and a pydantic options model (defaults and
bounds). The CLI, the workers, ``GET /methods`` and the OpenAPI schema all read this registry;
adding a method is one module plus one :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from engine.attribution.base import Attribution, BackwardRule, ProgressFn
from engine.models import ModelSpec

Reduction = Literal["abs_sum", "signed_sum", "max_abs"]


class MethodOptions(BaseModel):
    """Options every method has. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    heatmap_reduction: Reduction = Field(
        "abs_sum",
        description="How channels become a 2-D heat map: Σ_c|A_c| (abs_sum), Σ_c A_c "
        "(signed_sum) or max_c|A_c| (max_abs). The attribution tensor itself is not reduced.",
    )


class OptionsError(ValueError):
    """Options that do not validate against a method's options model."""


def validation_message(error: ValidationError) -> str:
    """``field: problem; field: problem`` from a pydantic error."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in error.errors()
    )


@dataclass
class MethodContext:
    """What a method builder may use besides its options."""

    model: nn.Module
    model_spec: ModelSpec
    input_size: tuple[int, int]  # (H, W) of the batch being explained
    cam_layer: str | None
    device: torch.device
    generator: torch.Generator
    seed: int = 0
    progress: ProgressFn | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. a reference set tensor
    # Backward rules an add-on asks every gradient of the method to run under (CriGrad's filter).
    rules: tuple[BackwardRule, ...] = ()


ScoresFn = Callable[[MethodContext, Attribution, Tensor, Tensor, Tensor, Any], dict[str, Tensor]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    summary: str
    citation: str
    options: type[MethodOptions]
    build: Callable[[MethodContext, Any], Attribution]
    input_kinds: tuple[str, ...] = ("image",)
    stochastic: bool = False
    scores: ScoresFn | None = None  # extra per-image scores, e.g. IG's completeness gap

    def parse_options(self, options: dict[str, Any] | MethodOptions | None) -> MethodOptions:
        if isinstance(options, self.options):
            return options
        if isinstance(options, MethodOptions):
            options = options.model_dump()
        try:
            return self.options.model_validate(options or {})
        except ValidationError as error:
            problems = validation_message(error)
            raise OptionsError(f"invalid options for {self.name}: {problems}") from error

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "summary": self.summary,
            "citation": self.citation,
            "input_kinds": list(self.input_kinds),
            "stochastic": self.stochastic,
            "options_schema": self.options.model_json_schema(),
        }


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_all()
    if name not in METHODS:
        raise OptionsError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def all_methods() -> list[MethodSpec]:
    _load_all()
    return list(METHODS.values())


def _load_all() -> None:
    """Import the modules that register methods (once)."""
    import engine.addons.crigrad
    import engine.addons.gad
    import engine.addons.pattern
    import engine.attribution.methods
    import engine.masks.extremal
    import engine.masks.methods  # noqa: F401
