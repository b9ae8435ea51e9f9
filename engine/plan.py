"""The pre-flight plan: everything a request needs checked before it runs, written once for the
API (``POST /explain`` and ``POST /studies``, at submit) and :func:`engine.explain` (before it
computes anything).

:func:`plan` resolves the model and the method, parses the options and metrics, and answers
where the input is explained (its size), what it costs (model passes of one input row; in
seconds, given a measured time per pass: :meth:`Plan.seconds`) and how much memory one row
needs at once; a request that cannot run raises :class:`PlanError` with the API's error code.
What only a server knows (which methods it allows per model, options that name its files, the
trained sets a tenant has) stays in the service.

The cost model, for an input explained at h × w on a model that takes H × W images:

    passes = ⌈(P_method(h, w) + Σ_metrics P_metric(h, w)) · max(1, h·w / (H·W))⌉

with P the options' :meth:`~engine.method.MethodOptions.model_passes` (nested options included);
a series row is not scaled. The working set of one row is the method's own tensors plus the
model's pass of the rows it cannot split (:func:`working_set_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.catalogue import METHODS, METRICS, close_names, parse_metrics, unknown_name
from engine.data.images import ImageTooSmall, InputError, check_fits
from engine.kinds import input_kind as kind_of
from engine.method import (
    MethodError,
    MethodOptions,
    MethodSpec,
    OptionsError,
    names_layers,
    walk_options,
)
from engine.metrics.base import MetricError, MetricRequest
from engine.models import MODELS, ModelError, ModelSpec, known_layers, row_bytes
from engine.models.inspection import unknown_layer_message
from engine.models.spec import LoadedModel


class PlanError(ValueError):
    """A request the engine refuses before it runs; ``code`` is the API's error code
    ('unknown_model', 'unknown_method', 'method_not_applicable', 'invalid_option',
    'invalid_target', 'invalid_metric', 'limit_exceeded', 'model_unavailable',
    'wrong_input_kind', 'invalid_image'), ``status`` its HTTP status (422; 413 where the input
    is over a size limit), ``details`` what the API lists in the error's details (the closest
    names of an unknown one), if anything.

    Each refusal is also an instance of the engine's own error for its kind of problem
    (:class:`MethodError`, :class:`OptionsError`, :class:`MetricError`, :class:`ModelError`,
    :class:`InputError`), so that callers of :func:`engine.explain` catch what they always did.
    """

    def __init__(self, code: str, message: str, status: int = 422, details: list | None = None):
        super().__init__(message)
        self.code, self.message, self.status, self.details = code, message, status, details


class MethodRefused(PlanError, MethodError):
    """The method, a layer option or the input's size cannot run on this model."""


class OptionsRefused(PlanError, OptionsError):
    """An unknown method, or options it does not take."""


class MetricRefused(PlanError, MetricError):
    """An unknown metric, invalid parameters, or one the method or input kind has no use for."""


class ModelRefused(PlanError, ModelError):
    """An unknown or unavailable model, or a target it has no class for."""


class InputRefused(PlanError, InputError):
    """An input of the wrong kind, or an image that cannot be brought to the explained size."""


@dataclass(frozen=True)
class Plan:
    """What one input row of a request will be: model, method, parsed options and metrics, the
    kind of input and the (height, width) it is explained at, its cost in model passes and its
    least working set in bytes, and the trained set it needs (with its class pair)."""

    model: ModelSpec
    method: MethodSpec
    options: MethodOptions
    metrics: tuple[MetricRequest, ...]
    input_kind: str
    size: tuple[int, int]
    passes: int
    working_set_bytes: int
    trained_set: Literal["patterns", "support_set"] | None
    trained_set_classes: tuple[int, int] | None

    def seconds(self, per_pass_s: float) -> float:
        """The cost model in seconds: ``passes × per_pass_s``, with ``per_pass_s`` the seconds
        one pass takes on the device that runs the job, measured there (the service keeps it
        per device, model and explained size: ``jobs.pass_times``)."""
        return self.passes * per_pass_s


def plan(
    model: ModelSpec | LoadedModel | str,
    method: str,
    options: dict[str, Any] | MethodOptions | None = None,
    *,
    metrics: Sequence[str | dict[str, Any] | MetricRequest] = (),
    image_size: tuple[int, int] | None = None,
    resize: str = "center_crop",
    target: int | str | None = None,
    max_passes: int | None = None,
    max_memory_bytes: int | None = None,
    input_kind: str | None = None,
    max_pixels: int | None = None,
) -> Plan:
    """Check a request and say what it will need; raise :class:`PlanError` where it cannot run.

    ``model``: a registered name, a spec, or a loaded model (whose inspected capabilities are
    used). ``image_size``: (width, height) of the given image; None for a series, or an image
    whose size is not known. ``resize``: how the image reaches the explained size ('none' keeps
    its own). ``target``: a class index or label (None or 'predicted': the predicted class).
    ``max_passes`` / ``max_memory_bytes``: the server's limits per input row (None: none).
    ``input_kind``: the kind of input given ('image' or 'timeseries'; None: the model's).
    ``max_pixels``: refuse an image whose scaled copy would exceed it (None: not checked, for
    a caller that holds the image at its explained size already).

    The checks run in the order the API has always answered them: model, input kind, the
    image's fit, method, target, options, layers, size, memory, metrics, cost.
    """
    loaded = model if isinstance(model, LoadedModel) else None
    spec = loaded.spec if loaded is not None else model_spec(model)
    check_input_kind(spec, input_kind)
    method_spec = method_of(method)
    options = parse_options(method_spec, options)
    size = explained_size(spec, options, image_size, resize)
    if image_size is not None and max_pixels is not None and spec.input_kind == "image":
        check_image_fits(image_size, options.input_size(spec.input_size), resize, max_pixels)
    capabilities = loaded.capabilities if loaded is not None else spec.allows
    if refusal := method_spec.refusal(options, spec.input_kind, capabilities):
        raise MethodRefused("method_not_applicable", refusal)
    check_target(target, spec)
    try:
        options.check_input_kind(spec.input_kind)
    except OptionsError as error:
        raise OptionsRefused("invalid_option", str(error)) from None
    check_layer_options(options, spec)
    if refusal := spec.size_refusal(*size) or options.size_refusal(*size):
        raise MethodRefused("invalid_option", refusal)
    working_set = working_set_bytes(spec, options, *size)
    if max_memory_bytes is not None and working_set > max_memory_bytes:
        lower = ("noise_samples or image_size" if options.rows_per_pass() > 1
                 else "the image size (resize)")  # fmt: skip
        raise MethodRefused("limit_exceeded",
                            f"{method} on {spec.name} at {size[1]}×{size[0]} needs about "
                            f"{working_set / 2**30:.1f} GB at once; this server's limit is "
                            f"{max_memory_bytes / 2**30:.1f} GB: lower {lower}")  # fmt: skip
    requests = metric_requests(metrics, method_spec, spec)
    passes = cost(spec, options, requests, size)
    if max_passes is not None and passes > max_passes:
        raise MethodRefused("limit_exceeded",
                            f"this job needs about {passes} model passes "
                            f"({cost_breakdown(spec, method, options, requests, size)}); this "
                            f"server's limit is {max_passes} per job: lower steps, samples, "
                            "iterations or image_size, or leave out a metric")  # fmt: skip
    return Plan(
        model=spec,
        method=method_spec,
        options=options,
        metrics=tuple(requests),
        input_kind=spec.input_kind,
        size=size,
        passes=passes,
        working_set_bytes=working_set,
        trained_set=options.trained_set(),
        trained_set_classes=options.trained_set_classes(),
    )


def model_spec(model: ModelSpec | str) -> ModelSpec:
    """A registered model by name (or the spec given), refused where it is unknown or cannot be
    built here (its default weights are not on this machine)."""
    if isinstance(model, str):
        if model not in MODELS:
            message = unknown_name("model", model, MODELS)
            raise ModelRefused("unknown_model", message, details=[
                {"loc": ["model"], "msg": message, "type": "unknown_model",
                 "suggestions": close_names(model, MODELS)}])  # fmt: skip
        model = MODELS[model]
    if (reason := model.unavailable()) is not None:
        raise ModelRefused("model_unavailable", reason)
    return model


def check_input_kind(spec: ModelSpec, given: str | None) -> None:
    """The input given is of the kind the model takes (None: not said, taken as the model's)."""
    if given is not None and given != spec.input_kind:
        takes = "time series" if spec.input_kind == "timeseries" else "images"
        raise InputRefused("wrong_input_kind", f"model {spec.name} takes {takes}")


def method_of(name: str) -> MethodSpec:
    if name not in METHODS:
        message = unknown_name("method", name, METHODS)
        raise OptionsRefused("unknown_method", message, details=[
            {"loc": ["method"], "msg": message, "type": "unknown_method",
             "suggestions": close_names(name, METHODS)}])  # fmt: skip
    return METHODS[name]


def parse_options(
    spec: MethodSpec, options: dict[str, Any] | MethodOptions | None
) -> MethodOptions:
    try:
        return spec.parse_options(options)
    except OptionsError as error:
        raise OptionsRefused("invalid_option", str(error)) from None


def explained_size(
    spec: ModelSpec, options: MethodOptions, image_size: tuple[int, int] | None, resize: str
) -> tuple[int, int]:
    """(h, w) an input is explained at: the size the options bring images to
    (:meth:`~engine.method.MethodOptions.input_size`: the model's unless they choose another),
    or the image's own with resize='none'. A series: the model's input size."""
    if spec.input_kind != "image":
        return tuple(spec.input_size)
    if resize == "none" and image_size is not None:
        width, height = image_size
        return height, width
    return options.input_size(tuple(spec.input_size))


def check_image_fits(
    image_size: tuple[int, int], size: tuple[int, int], resize: str, max_pixels: int
) -> None:
    """A (width, height) image can be brought to ``size`` (h, w) with ``resize`` within
    ``max_pixels`` (413 above it), and is not below the smallest side kept as it is (422)."""
    width, height = image_size
    try:
        check_fits(height, width, size, resize, max_pixels)
    except InputError as error:
        status = 422 if isinstance(error, ImageTooSmall) else 413
        raise InputRefused("invalid_image", str(error), status) from None


def check_target(target: int | str | None, spec: ModelSpec) -> None:
    """A class the model has, by index or label (None and 'predicted': the predicted class)."""
    if target is None or target == "predicted":
        return
    try:
        index = spec.class_index(target) if isinstance(target, str) else target
    except ModelError as error:
        raise ModelRefused("invalid_target", str(error)) from None
    classes = len(spec.labels)
    if index < 0 or (classes and index >= classes):
        shown = str(index) if len(str(index)) <= 20 else f"{str(index)[:20]}…"
        raise ModelRefused("invalid_target",
                           f"target {shown} is not a class of model {spec.name} "
                           f"(classes 0–{classes - 1})")  # fmt: skip


def check_layer_options(options: MethodOptions, spec: ModelSpec) -> None:
    """Every option at any depth that names layers names modules the model has (its own
    names: ``layer4``, not a wrapper's); a CAM layer (kind 'map') one whose output is a map or
    tokens. Not checked where the model's layers cannot be known without loading it."""
    for path, field, value in walk_options(options):
        if (kind := names_layers(field)) is None or value is None:
            continue
        known = known_layers(spec)
        if known is None:
            return
        every, maps = known
        for name in [value] if isinstance(value, str) else value:
            if name not in every:
                message = unknown_layer_message(name, every)
                raise MethodRefused("invalid_option", f"options.{path}: {message}")
            if kind == "map" and name not in maps:
                shown = name if len(name) <= 100 else f"{name[:100]}… ({len(name)} characters)"
                raise MethodRefused("invalid_option",
                                    f"options.{path}: {shown} outputs no spatial map or "
                                    f"tokens; layers that do: {', '.join(maps[-5:])}")  # fmt: skip


def metric_requests(
    metrics: Sequence[str | dict[str, Any] | MetricRequest], method: MethodSpec, spec: ModelSpec
) -> list[MetricRequest]:
    """The requested metrics, parsed and checked: known, valid parameters, each once, defined
    for the model's kind of input, and those that read a per-iteration history
    (``needs_history``) only for methods that record one (:attr:`MethodSpec.has_history`)."""
    given = [m for m in metrics if isinstance(m, MetricRequest)]
    for item in metrics:
        name = item.get("name") if isinstance(item, dict) else item
        if isinstance(name, str) and name not in METRICS:
            message = unknown_name("metric", name, METRICS)
            raise MetricRefused("invalid_metric", message, details=[
                {"loc": ["metric"], "msg": message, "type": "unknown_metric",
                 "suggestions": close_names(name, METRICS)}])  # fmt: skip
    try:
        requests = given + parse_metrics([m for m in metrics if not isinstance(m, MetricRequest)])
        kind_of(spec.input_kind).check_metrics(requests)
    except MetricError as error:
        raise MetricRefused("invalid_metric", str(error)) from None
    for request in requests:
        if request.spec.needs_history and not method.has_history:
            raise MetricRefused("invalid_metric",
                                f"metric {request.spec.name} needs a mask method, not "
                                f"{method.name} (it reads the per-iteration history)")  # fmt: skip
    return requests


def cost(
    spec: ModelSpec, options: MethodOptions, metrics: Sequence[MetricRequest], size: tuple[int, int]
) -> int:
    """Model passes of one input row explained at ``size``: the method's own (nested options
    included) plus its metrics', scaled by the explained pixels over the model's (images)."""
    height, width = size
    passes = options.model_passes(height, width) + sum(p for _, p in _metric_passes(metrics, size))
    return math.ceil(passes * _pixel_scale(spec, size))


def cost_breakdown(
    spec: ModelSpec,
    method: str,
    options: MethodOptions,
    metrics: Sequence[MetricRequest],
    size: tuple[int, int],
) -> str:
    """:func:`cost`'s parts in words: "saliency 1, sensitivity_n 385, degradation 301", and the
    scale of an image above the model's size."""
    parts = [(method, options.model_passes(*size)), *_metric_passes(metrics, size)]
    words = ", ".join(f"{name} {passes}" for name, passes in parts)
    if (scale := _pixel_scale(spec, size)) > 1:
        words += f", × {scale:.2f} for {size[1]}×{size[0]} pixels"
    return words


def _metric_passes(
    metrics: Sequence[MetricRequest], size: tuple[int, int]
) -> list[tuple[str, int]]:
    return [(request.spec.name, request.options.model_passes(*size)) for request in metrics]


def _pixel_scale(spec: ModelSpec, size: tuple[int, int]) -> float:
    """An image's pixels over the model's, at least 1; 1 for a series (a row is small, its
    length bounded by the server's limit)."""
    if spec.input_kind != "image":
        return 1.0
    model_h, model_w = spec.input_size
    return max(1.0, size[0] * size[1] / (model_h * model_w))


def working_set_bytes(spec: ModelSpec, options: MethodOptions, height: int, width: int) -> int:
    """Memory one image explained at height × width needs at once, at the least: the method's
    own tensors plus the passes of the rows it cannot split (one row for methods that chunk
    them). 0 where the model's pass memory is unknown and the method holds nothing itself."""
    per_row = row_bytes(spec, height, width) or 0
    return options.working_set_bytes(height, width) + options.rows_per_pass() * per_row


def rows_within(
    spec: ModelSpec, options: MethodOptions, height: int, width: int, budget: int
) -> int | None:
    """Rows per model pass that keep a job within ``budget`` bytes (at least one), or None
    where the model's pass memory is unknown."""
    per_row = row_bytes(spec, height, width)
    if not per_row:
        return None
    return max(1, (budget - options.working_set_bytes(height, width)) // per_row)
