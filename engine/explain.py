"""``explain(model, input, method, options) → Explanation``: the one entry point of the engine.

What differs between images and time series (preparing inputs, class probabilities, the heat
map, the scores every result gets) is the input kind's (``engine.kinds``); this module only
runs the steps in order and keeps the record.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from engine.catalogue import get_method
from engine.data import ImageSource, ResizePolicy
from engine.kinds import input_kind
from engine.method import MethodContext, MethodError, MethodOptions, ProgressFn
from engine.models import LoadedModel, ModelError, ModelSpec, cached_model, prepared
from engine.plan import plan, rows_within
from engine.provenance import device_name, memory_format, versions
from engine.result import Explanation, Prediction
from engine.runtime import apply_process_settings, current_memory_budget, rows_per_pass_at_most

Target = int | str | None  # class index, label, or None / "predicted"


def resolve_model(
    model: str | LoadedModel | nn.Module, weights: str | None, device: str | torch.device | None
) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str) and model.endswith(".pt"):
        from engine.models.series import load_classifier

        return load_classifier(model, device or "cpu")
    if isinstance(model, str):
        return cached_model(model, weights, str(torch.device(device or "cpu")))
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        kind = getattr(model, "input_kind", "image")  # a series module says "timeseries"
        spec = ModelSpec(type(model).__name__, "user module", None, input_kind=kind)
        dev = parameter.device if parameter is not None else torch.device(device or "cpu")
        return LoadedModel(spec, model, "user module", None, dev)
    raise ModelError(f"unsupported model of type {type(model).__name__}")


def resolve_targets(
    target: Target | Sequence[Target], predicted: Tensor, spec: ModelSpec
) -> Tensor:
    """Per-input target classes: given indices/labels, or the predicted class where None."""
    targets = list(target) if isinstance(target, list | tuple) else [target] * len(predicted)
    if len(targets) != len(predicted):
        raise MethodError(f"{len(targets)} targets for {len(predicted)} inputs")
    resolved = []
    for t, p in zip(targets, predicted.tolist(), strict=True):
        if t is None or t == "predicted":
            resolved.append(p)
        elif isinstance(t, str):
            resolved.append(spec.class_index(t))
        else:
            resolved.append(int(t))
    return torch.tensor(resolved, dtype=torch.long)


def explain(
    model: str | LoadedModel | nn.Module,
    inputs: ImageSource | Sequence[ImageSource] | Tensor,
    method: str,
    options: dict[str, Any] | MethodOptions | None = None,
    *,
    target: Target | Sequence[Target] = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    weights: str | None = None,
    resize: ResizePolicy = "center_crop",
    progress: ProgressFn | None = None,
    extras: dict[str, Any] | None = None,
    metrics: Sequence[str | dict[str, Any]] | None = None,
) -> Explanation:
    """Explain ``model``'s decision on ``inputs`` with ``method``.

    ``model``: a registered name, a config file path, a saved series classifier (``.pt``), a
    :class:`LoadedModel` or a plain module (which must take [0, 1] pixels: put the
    normalisation inside; a module with ``input_kind = "timeseries"`` takes (B, T, D) series).
    ``inputs``: a sample name, file path, bytes, PIL image, array, (3, H, W) or (B, 3, H, W)
    tensor, or a list of these; for series models a T × D array, tensor or .npy/.csv file, a
    list of them, or a (B, T, D) tensor.
    ``target``: class index or label per input; default: the predicted class. ``options`` are
    validated by the method's options model. ``metrics``: quality metrics to score the result
    with, by name or as ``{"name": ..., **parameters}`` (see :mod:`engine.metrics`). The model
    is left as it was. The first call applies the process's allocator setting
    (:func:`~engine.runtime.apply_process_settings`; ``EXPLAINER_KEEP_FREED_MEMORY=0`` opts out).
    """
    started = time.perf_counter()
    apply_process_settings()
    spec = get_method(method)
    options = spec.parse_options(options)
    loaded = resolve_model(model, weights, device)
    kind = input_kind(loaded.spec.input_kind)
    # The checks the API makes at submit, before any input is read (a method that does not
    # explain this kind of model is refused as such, not by the input reader) ...
    planned = plan(loaded, method, options, metrics=metrics or ())
    x, records = kind.prepare(inputs, loaded.spec, options, resize)
    if kind.name == "image" and tuple(x.shape[-2:]) != planned.size:  # ... and at its own size
        planned = plan(loaded, method, options, metrics=metrics or (),
                       image_size=(x.shape[-1], x.shape[-2]), resize="none")  # fmt: skip
    metric_requests = list(planned.metrics)
    parameter = next(loaded.module.parameters(), None)
    x = x.to(loaded.device, parameter.dtype if parameter is not None else torch.float32)
    timings: dict[str, float] = {}
    with prepared(loaded.module) as net, within_memory_budget(loaded.spec, options, x):
        tick = time.perf_counter()
        with torch.no_grad():
            probabilities = kind.probabilities(net(x))
        predicted = probabilities.argmax(1)
        targets = resolve_targets(target, predicted.cpu(), loaded.spec).to(x.device)
        if (targets < 0).any() or (targets >= probabilities.shape[1]).any():
            raise MethodError(f"target outside 0..{probabilities.shape[1] - 1}")
        timings["predict_s"] = time.perf_counter() - tick
        explained = kind.classifier(net) if spec.explains == "classes" else net
        ctx = method_context(explained, loaded, x, seed, progress, extras)
        attribution_method = spec.build(ctx, options)
        attribution_method.progress = progress
        tick = time.perf_counter()
        attribution = finite(attribution_method.attribute(x, targets), method)
        timings["attribute_s"] = time.perf_counter() - tick
        scores = {}
        if spec.scores is not None:
            scores = spec.scores(ctx, attribution_method, x, attribution, targets, options)
        heatmap = kind.heatmap(attribution.detach().float(), options.heatmap_reduction)
        tick = time.perf_counter()
        scores.update(kind.scores(net, x, targets, attribution, heatmap, attribution_method,
                                  metric_requests, seed))  # fmt: skip
        timings["metrics_s"] = time.perf_counter() - tick
    predictions = [
        Prediction(
            class_index=int(p),
            label=loaded.spec.label(int(p)),
            probability=float(probabilities[i, p]),
            target=int(t),
            target_label=loaded.spec.label(int(t)),
            target_probability=float(probabilities[i, t]),
        )
        for i, (p, t) in enumerate(zip(predicted.tolist(), targets.tolist(), strict=True))
    ]
    timings["total_s"] = time.perf_counter() - started
    metadata = {
        "seed": seed,
        "device": str(loaded.device),
        "device_name": device_name(loaded.device),
        "model": loaded.record(),
        "memory_format": memory_format(loaded.module),
        "cpu_threads": torch.get_num_threads(),
        "inputs": records,
        "heatmap_reduction": options.heatmap_reduction,
        "metrics": [request.record() for request in metric_requests],
        "timings": timings,
        "versions": versions(),
    }
    return Explanation(
        method=method,
        model=loaded.spec.name,
        input_kind=kind.name,
        attribution=attribution.detach().float().cpu(),
        heatmap=heatmap.cpu(),
        inputs=x.detach().cpu(),
        predictions=predictions,
        options=options.model_dump(mode="json"),
        scores=[{name: float(v[i]) for name, v in scores.items()} for i in range(x.shape[0])],
        metadata=metadata,
        outputs=attribution_method.outputs,
    )


def within_memory_budget(
    spec: ModelSpec, options: MethodOptions, x: Tensor
) -> contextlib.AbstractContextManager:
    """Fewer rows per model pass where the job's memory budget (a job runner's
    :func:`~engine.runtime.memory_budget`) and the model's pass memory at x's size ask for it."""
    budget = current_memory_budget()
    if budget is None or x.ndim != 4:
        return contextlib.nullcontext()
    rows = rows_within(spec, options, *x.shape[-2:], budget)
    return rows_per_pass_at_most(rows) if rows else contextlib.nullcontext()


def attribute(
    model: nn.Module | LoadedModel,
    x: Tensor,
    method: str,
    options: dict[str, Any] | MethodOptions | None = None,
    *,
    targets: Tensor | None = None,
    seed: int = 0,
    extras: dict[str, Any] | None = None,
) -> Tensor:
    """The attribution (shaped like x) of a ready batch x for ``targets`` (default: predicted).

    The bare computation behind :func:`explain`, for dataset-scale work (metrics, ROAR,
    benchmarks): no input loading or resizing, no metrics, no record; x is used as given.
    """
    spec = get_method(method)
    options = spec.parse_options(options)
    loaded = resolve_model(model, None, x.device)
    with prepared(loaded.module) as net:
        if targets is None:
            with torch.no_grad():
                targets = net(x).argmax(1)
        ctx = method_context(net, loaded, x, seed, None, extras)
        return finite(spec.build(ctx, options).attribute(x, targets.to(x.device)).detach(), method)


def method_context(
    net: nn.Module,
    loaded: LoadedModel,
    x: Tensor,
    seed: int,
    progress: ProgressFn | None,
    extras: dict[str, Any] | None,
) -> MethodContext:
    """What a method builder sees for batch x: the prepared model, its spec, the seed."""
    size = (x.shape[-2], x.shape[-1])
    return MethodContext(
        net, loaded.spec, size, loaded.spec.cam_layer, loaded.device, seed, progress,
        dict(extras or {}), named_model=loaded.classifier,
    )  # fmt: skip


def finite(attribution: Tensor, method: str) -> Tensor:
    """The attribution, or a clear error where it overflowed (never a NaN map called a result)."""
    if not torch.isfinite(attribution).all():
        raise MethodError(
            f"{method} produced non-finite values for this model and input (a float32 overflow "
            "or NaN in its backward pass)"
        )
    return attribution
