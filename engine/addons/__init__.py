"""Add-ons that wrap the gradient methods rather than copy them.

- :mod:`engine.addons.pattern`: PatternNet, PatternAttribution, Pattern-Guided IG (the gradient
  under a pattern backward rule);
- :mod:`engine.addons.crigrad`: CriGrad, a gradient filter applied to any gradient method;
- :mod:`engine.addons.gad`: GAD, the intersection of a gradient method's maps on the original
  model and on support regression models.

An add-on either runs a base method's builder with an extra backward rule in its
:class:`~engine.method.MethodContext` (every gradient the base computes then passes through the
rule), or runs the base method on other models.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from engine.attribution.methods import GRADIENT_METHODS
from engine.method import Attribution, BackwardRule, MethodContext, MethodOptions, OptionsError
from engine.storage import cache_dir

# The methods built on the input gradient (the ones a backward rule reaches).
GradientBase = Literal[
    "saliency",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "smoothgrad_ig",
    "expected_gradients",
    "guided_backprop",
    "deconvolution",
]


BASE_OPTIONS_ERROR = "invalid_base_options"  # the error type of base_options that do not fit


class AddonOptions(MethodOptions):
    """An add-on's options: the base gradient method and that method's own options."""

    base: GradientBase = Field("saliency", description="The gradient method the add-on wraps.")
    base_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the base method (see GET /methods)."
    )

    @model_validator(mode="after")
    def _validate_base_options(self) -> AddonOptions:
        try:
            parsed = GRADIENT_METHODS[self.base].parse_options(self.base_options)
        except OptionsError as error:  # its own error type: a rule the JSON schema cannot state
            raise PydanticCustomError(BASE_OPTIONS_ERROR, str(error)) from None
        self.base_options = parsed.model_dump(mode="json")
        return self

    def nested_options(self) -> dict[str, BaseModel]:
        return {"base_options": GRADIENT_METHODS[self.base].parse_options(self.base_options)}

    def requirements(self) -> frozenset[str]:
        """What the base method needs (Guided Backprop as a base needs rectifiers)."""
        return GRADIENT_METHODS[self.base].needs(self.nested_options()["base_options"])

    def model_copies(self) -> int:
        """Models the base method runs on (GAD: the original and its support networks)."""
        return 1

    def model_passes(self, height: int, width: int) -> int:
        base = self.nested_options()["base_options"].model_passes(height, width)
        return base * self.model_copies()


# ``extras`` key: the cache folders whose trained sets (pattern sets, GAD support sets) a run may
# use, in order of preference (the first folder that has a fitting set wins); default: the
# engine cache itself. The service gives a tenant's own folder, then the shared one.
SET_FOLDERS = "trained_set_folders"


def set_folders(ctx: MethodContext) -> tuple[Path, ...]:
    """The cache folders a method looks in for its default trained set, in order."""
    return tuple(Path(folder) for folder in ctx.extras.get(SET_FOLDERS) or (cache_dir(),))


def with_rule(ctx: MethodContext, rule: BackwardRule) -> MethodContext:
    """The context with one more backward rule for every gradient built from it."""
    return replace(ctx, rules=(*ctx.rules, rule))


def build_base(ctx: MethodContext, base: str, base_options: dict[str, Any]) -> Attribution:
    spec = GRADIENT_METHODS[base]
    return spec.build(ctx, spec.parse_options(base_options))
