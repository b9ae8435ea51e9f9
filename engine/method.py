"""What an explanation method is, for every family: the :class:`Attribution` interface, the options
model it validates requests with, the :class:`MethodContext` its builder receives, and the
:class:`MethodSpec` that describes it. A family module defines specs; ``engine.catalogue`` lists
them. This module sits just above ``engine.models``: everything that defines methods imports it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from torch import Tensor, nn

from engine.models.inspection import CAPABILITIES, WHY_NEEDED, LayerNotFound, find_layer
from engine.models.spec import InputKindName, ModelSpec

ProgressFn = Callable[..., None]  # (done, total, **values such as loss); may raise to cancel
Reduction = Literal["abs_sum", "signed_sum", "max_abs"]


class MethodError(ValueError):
    """A method cannot be applied to this model or input (e.g. Guided Backprop on F.relu)."""


class OptionsError(ValueError):
    """Options that do not validate against a method's options model, or an unknown method."""


def validation_message(error: ValidationError) -> str:
    """``field: problem; field: problem`` from a pydantic error."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in error.errors()
    )


class Attribution(ABC):
    """An attribution method: ``attribute(x, targets) → tensor shaped like x`` (Captum style).

    ``progress`` (optional) is called with (done, total) by methods that take several passes;
    raising from it cancels the computation. ``outputs`` holds a method's typed result parts
    beyond the attribution (a mask method's masks and history), or ``None``.
    """

    progress: ProgressFn | None = None
    outputs: Any = None

    @abstractmethod
    def attribute(self, x: Tensor, targets: Tensor) -> Tensor: ...

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


class BackwardRule(Protocol):
    """Changes how gradients flow through a model while active (Guided Backprop, patterns, ...)."""

    def applied(self, model: nn.Module) -> contextlib.AbstractContextManager: ...


SERVER_PATH = "x-server-path"  # JSON-schema mark of an option that names a server file


def ServerPathField(default: str | None, description: str) -> Any:
    """An option that names a file or folder on the machine that runs the method. Python and
    the CLI may set it; over HTTP only its default is accepted, at any depth of a request."""
    return Field(default, description=description, json_schema_extra={SERVER_PATH: True})


def names_server_path(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(SERVER_PATH))


# JSON-schema mark of an options model: the names of the few options that matter most, which a
# form shows first (the web page puts the rest under "advanced"). GET /methods carries it in
# each method's options_schema.
BASIC_OPTIONS = "x-basic-options"


def basic_options(*names: str) -> ConfigDict:
    """``model_config`` of an options model whose ``names`` are its basic options (pydantic merges
    it with the base class' config)."""
    return ConfigDict(json_schema_extra={BASIC_OPTIONS: list(names)})


# JSON-schema mark of an option that names layers of the model: "map" (a CAM layer, whose
# output must be a map or tokens) or "any".
LAYER_NAME = "x-layer-name"


def names_layers(field: FieldInfo) -> str | None:
    """What kind of the model's layers the option names ('map' or 'any'; a name or a list of
    names), which the API checks against the model's layers at submit; None: no layers."""
    extra = field.json_schema_extra
    return extra.get(LAYER_NAME) if isinstance(extra, dict) else None


class MethodOptions(BaseModel):
    """Options every method has. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN bound never holds

    heatmap_reduction: Reduction = Field(
        "abs_sum",
        description="How channels become a 2-D heat map: Σ_c|A_c| (abs_sum), Σ_c A_c "
        "(signed_sum) or max_c|A_c| (max_abs). The attribution tensor itself is not reduced.",
    )

    def requirements(self) -> frozenset[str]:
        """What the model must allow for these options, beyond the method's own
        :attr:`MethodSpec.requires` (:data:`~engine.models.inspection.CAPABILITIES`)."""
        return frozenset()

    def trained_set(self) -> Literal["patterns", "support_set"] | None:
        """The set these options need trained beforehand (an add-on's patterns or GAD support
        networks, from the cache), or None."""
        return None

    def trained_set_classes(self) -> tuple[int, int] | None:
        """The class pair of the trained set these options name (GAD's ``classes``), or None:
        any set of the model (the one that holds the target)."""
        return None

    def input_size(self, model_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) an image is brought to before it is explained: the model's input size
        ``model_size``, unless these options choose another (a mask method's image_size)."""
        return model_size

    def check_input_kind(self, kind: InputKindName) -> None:
        """Refuse options that have no meaning for this kind of input (raise OptionsError)."""
        return None

    def size_refusal(self, height: int, width: int) -> str | None:
        """Why these options cannot explain an input of height × width, or None."""
        return None

    def model_passes(self, height: int, width: int) -> int:
        """The cost model: forward+backward passes of the model per explained input row (at
        ``height`` × ``width``), counting every option that multiplies work, nested ones
        included. The service refuses a job above its budget before it runs."""
        return 1

    def working_set_bytes(self, height: int, width: int) -> int:
        """Memory the method itself holds per image at ``height`` × ``width``, beyond the
        model's passes (a mask method's obfuscations and their gradients)."""
        return 0

    def rows_per_pass(self) -> int:
        """Rows the method passes through the model at once that cannot be split (a mask
        method's noise samples of a step); methods that chunk their rows take one."""
        return 1

    def nested_options(self) -> dict[str, BaseModel]:
        """Options models this one holds as plain data (an add-on's ``base_options``), parsed,
        so that a check can walk the whole request (:func:`walk_options`)."""
        return {}


def walk_options(options: BaseModel, prefix: str = "") -> Iterator[tuple[str, FieldInfo, Any]]:
    """(dotted name, field, value) of every option at any depth: nested models (``smoothing``)
    and the parsed ``nested_options`` (an add-on's ``base_options``) included."""
    for name, info in type(options).model_fields.items():
        value = getattr(options, name)
        yield prefix + name, info, value
        if isinstance(value, BaseModel):
            yield from walk_options(value, f"{prefix}{name}.")
    if isinstance(options, MethodOptions):
        for name, nested in options.nested_options().items():
            yield from walk_options(nested, f"{prefix}{name}.")


@dataclass
class MethodContext:
    """What a method builder may use besides its options."""

    model: nn.Module
    model_spec: ModelSpec
    input_size: tuple[int, ...]  # the batch's trailing shape: (H, W) of images, (T, D) of series
    cam_layer: str | None
    device: torch.device
    seed: int = 0  # every random draw comes from engine.runtime.input_generators(seed, ...)
    progress: ProgressFn | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. a reference set tensor
    # Backward rules an add-on asks every gradient of the method to run under (CriGrad's filter).
    rules: tuple[BackwardRule, ...] = ()
    # The user's own model inside ``model`` (without the engine's normalisation wrapper): layer
    # options name its modules. None: ``model`` itself.
    named_model: nn.Module | None = None

    def layer(self, name: str) -> nn.Module:
        """The model's layer by its own name (``layer4``, ``blocks.11.norm1``)."""
        try:
            root = self.model if self.named_model is None else self.named_model
            return find_layer(root, name)
        except LayerNotFound as error:
            raise MethodError(str(error)) from None


# Extra per-image scores of a method (e.g. IG's completeness gap): (ctx, method, x, attribution,
# targets, options) → {name: (B,) tensor}.
ScoresFn = Callable[[MethodContext, Attribution, Tensor, Tensor, Tensor, Any], dict[str, Tensor]]


@dataclass(frozen=True)
class MethodSpec:
    """A method's name, family, summary and citation, its options model, and its builder."""

    name: str
    family: str
    summary: str
    citation: str
    options: type[MethodOptions]
    build: Callable[[MethodContext, Any], Attribution]
    input_kinds: tuple[InputKindName, ...] = ("image",)
    stochastic: bool = False
    scores: ScoresFn | None = None
    # What it explains of a series model: its two classes, through S = ±Σ_t z_t (gradient
    # methods), or each step's logit z_t (ExtremalMask). Images always have classes.
    explains: Literal["classes", "steps"] = "classes"
    # What a model must allow for it to run (engine.models.inspection.CAPABILITIES); options
    # may add more (MethodOptions.requirements).
    requires: frozenset[str] = frozenset()
    # It records a per-iteration history (a mask method's optimisation), which the metrics
    # that read one (``MetricSpec.needs_history``: convergence, the CP curves) need.
    has_history: bool = False

    def needs(self, options: MethodOptions) -> frozenset[str]:
        return self.requires | options.requirements()

    def refusal(
        self, options: MethodOptions, kind: InputKindName, capabilities: frozenset[str]
    ) -> str | None:
        """Why this method with ``options`` cannot run on a model of input ``kind`` that has
        ``capabilities``; None when it can. The engine and the API both ask this."""
        if kind not in self.input_kinds:
            return f"{self.name} does not explain {kind} models"
        missing = [need for need in CAPABILITIES if need in self.needs(options)
                   and need not in capabilities]  # fmt: skip
        if missing:
            return f"{self.name} cannot run on this model: {WHY_NEEDED[missing[0]]}"
        return None

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
            "has_history": self.has_history,
            "options_schema": self.options.model_json_schema(),
        }


def index(specs: list) -> dict:
    """``{spec.name: spec}``, refusing a name given twice."""
    indexed = {}
    for spec in specs:
        if spec.name in indexed:
            raise ValueError(f"{spec.name!r} is defined twice")
        indexed[spec.name] = spec
    return indexed
