"""``explain(model, input, method, options) → Explanation``: the one entry point of the engine."""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.attribution.base import MethodError, ProgressFn, prepared
from engine.data import ImageSource, InputRecord, ResizePolicy, load_image
from engine.data.timeseries import SeriesRecord, load_series
from engine.metrics.registry import MetricError, compute_metrics, heatmap_view, parse_metrics
from engine.models import LoadedModel, ModelError, ModelSpec, load_model
from engine.registry import MethodContext, MethodOptions, Reduction, get_method

Target = int | str | None  # class index, label, or None / "predicted"


def reduce_channels(attribution: Tensor, reduction: Reduction) -> Tensor:
    """(B, C, H, W) → (B, H, W): Σ_c|A_c|, Σ_c A_c or max_c|A_c|."""
    if reduction == "abs_sum":
        return attribution.abs().sum(1)
    if reduction == "signed_sum":
        return attribution.sum(1)
    if reduction == "max_abs":
        return attribution.abs().amax(1)
    raise ValueError(f"unknown heat-map reduction {reduction!r}")


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
    """The result of :func:`explain` for a batch of B inputs (tensors on the CPU).

    ``attribution`` has the input's shape (B, C, H, W) (Grad-CAM: C = 1); ``heatmap`` (B, H, W)
    is its channel reduction named in ``options['heatmap_reduction']``; ``inputs`` are the
    explained images in [0, 1]; ``scores`` holds per-image scalars (e.g. IG's completeness gap).
    Mask methods put their masks (per coefficient group), explanation images, initial masks and
    iteration history in ``extras``; their ``attribution`` is a pixel-space map (B, 1, H, W).
    """

    method: str
    model: str
    attribution: Tensor
    heatmap: Tensor
    inputs: Tensor
    predictions: list[Prediction]
    options: dict[str, Any]
    scores: list[dict[str, float]]
    metadata: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def targets(self) -> list[int]:
        return [p.target for p in self.predictions]

    def summary(self, index: int = 0) -> dict[str, Any]:
        """A JSON-able record of image ``index``: prediction, scores, options, reproducibility."""
        meta = dict(self.metadata)
        meta["inputs"] = [meta["inputs"][index]] if meta.get("inputs") else []
        return {
            "method": self.method,
            "model": self.model,
            "prediction": vars(self.predictions[index]),
            "scores": self.scores[index],
            "options": self.options,
            "attribution_shape": list(self.attribution.shape[1:]),
            "metadata": meta,
        }


@functools.lru_cache(maxsize=4)
def cached_model(name: str, weights: str | None, device: str) -> LoadedModel:
    return load_model(name, weights, device)


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


def prepare_inputs(
    inputs: ImageSource | Sequence[ImageSource] | Tensor,
    size: tuple[int, int],
    resize: ResizePolicy,
) -> tuple[Tensor, list[InputRecord]]:
    """One source, a list of sources, or a (B, 3, H, W) tensor → batch in [0, 1] with records."""
    if isinstance(inputs, Tensor) and inputs.ndim == 4:
        sources: list[ImageSource] = list(inputs)
    elif isinstance(inputs, list | tuple):
        sources = list(inputs)
    else:
        sources = [inputs]
    loaded = [load_image(source, size if resize != "none" else None, resize) for source in sources]
    shapes = {tuple(t.shape) for t, _ in loaded}
    if len(shapes) != 1:
        raise MethodError(f"images of a batch must share one size, got {sorted(shapes)}")
    return torch.stack([t for t, _ in loaded]), [r for _, r in loaded]


def resolve_targets(
    target: Target | Sequence[Target], predicted: Tensor, spec: ModelSpec
) -> Tensor:
    """Per-image target classes: given indices/labels, or the predicted class where None."""
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
    ``target``: class index or label per image; default: the predicted class. ``options`` are
    validated by the method's options model. ``metrics``: quality metrics to score the result
    with, by name or as ``{"name": ..., **parameters}`` (see :mod:`engine.metrics`). The model
    is left as it was.
    """
    started = time.perf_counter()
    spec = get_method(method)
    options = spec.parse_options(options)
    metric_requests = parse_metrics(metrics)
    loaded = resolve_model(model, weights, device)
    if loaded.spec.input_kind not in spec.input_kinds:
        raise MethodError(f"{method} does not accept {loaded.spec.input_kind} models")
    series = loaded.spec.input_kind == "timeseries"
    if series:
        if metric_requests:
            raise MetricError("the quality metrics are for images; for time series see "
                              "engine.metrics.timeseries (they need the ground truth)")  # fmt: skip
        x, records = prepare_series(inputs)
    else:
        image_size = getattr(options, "image_size", None)
        size = (image_size, image_size) if image_size else loaded.spec.input_size
        x, records = prepare_inputs(inputs, size, resize)
    parameter = next(loaded.module.parameters(), None)
    x = x.to(loaded.device, parameter.dtype if parameter is not None else torch.float32)
    timings: dict[str, float] = {}
    with prepared(loaded.module) as net:
        tick = time.perf_counter()
        with torch.no_grad():
            # A series model gives one logit per step and is explained on all of them: its
            # "class" is the majority of step predictions, with the mean step probability.
            probabilities = _series_probabilities(net(x)) if series else net(x).softmax(1)
        predicted = probabilities.argmax(1)
        targets = resolve_targets(target, predicted.cpu(), loaded.spec).to(x.device)
        if (targets < 0).any() or (targets >= probabilities.shape[1]).any():
            raise MethodError(f"target outside 0..{probabilities.shape[1] - 1}")
        timings["predict_s"] = time.perf_counter() - tick
        ctx = method_context(net, loaded, x, seed, progress, extras)
        attribution_method = spec.build(ctx, options)
        attribution_method.progress = progress
        tick = time.perf_counter()
        attribution = finite(attribution_method.attribute(x, targets), method)
        timings["attribute_s"] = time.perf_counter() - tick
        extra_scores = {}
        if spec.scores is not None:
            extra_scores = spec.scores(ctx, attribution_method, x, attribution, targets, options)
        heatmap = attribution.detach().float()  # a series attribution (B, T, D) is its own map
        if not series:
            heatmap = reduce_channels(heatmap, options.heatmap_reduction)
        if metric_requests:
            tick = time.perf_counter()
            view = (
                attribution_method.mask_view()
                if hasattr(attribution_method, "mask_view")
                else heatmap_view(net, x, targets, heatmap, seed)
            )
            view.heatmap = heatmap
            extra_scores.update(compute_metrics(view, metric_requests))
            timings["metrics_s"] = time.perf_counter() - tick
    attribution = attribution.detach().float().cpu()
    heatmap = heatmap.cpu()
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
    scores = [
        {name: float(values[i]) for name, values in extra_scores.items()} for i in range(x.shape[0])
    ]
    timings["total_s"] = time.perf_counter() - started
    metadata = {
        "seed": seed,
        "device": str(loaded.device),
        "device_name": _device_name(loaded.device),
        "model": loaded.record(),
        "inputs": [r.to_dict() for r in records],
        "heatmap_reduction": options.heatmap_reduction,
        "metrics": [request.record() for request in metric_requests],
        "timings": timings,
        "versions": versions(),
    }
    return Explanation(
        method=method,
        model=loaded.spec.name,
        attribution=attribution,
        heatmap=heatmap,
        inputs=x.detach().cpu(),
        predictions=predictions,
        options=options.model_dump(mode="json"),
        scores=scores,
        metadata=metadata,
        extras=getattr(attribution_method, "extras", {}),
    )


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
    """What a method builder sees for batch x: the prepared model, its spec, a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    size = (x.shape[-2], x.shape[-1])
    return MethodContext(net, loaded.spec, size, loaded.cam_layer, loaded.device, generator, seed,
                         progress, dict(extras or {}))  # fmt: skip


def finite(attribution: Tensor, method: str) -> Tensor:
    """The attribution, or a clear error where it overflowed (never a NaN map called a result)."""
    if not torch.isfinite(attribution).all():
        raise MethodError(
            f"{method} produced non-finite values for this model and input (a float32 overflow "
            "or NaN in its backward pass)"
        )
    return attribution


def _series_probabilities(logits: Tensor) -> Tensor:
    """(B, T) step logits → (B, 2): mean probability of a negative and of a positive step."""
    positive = torch.sigmoid(logits).mean(1)
    return torch.stack([1 - positive, positive], dim=1)


def prepare_series(inputs) -> tuple[Tensor, list[SeriesRecord]]:
    """A series (T × D array, tensor, .npy/.csv path), a list of them, or a (B, T, D) tensor."""
    batch = isinstance(inputs, Tensor | np.ndarray) and inputs.ndim == 3
    listed = (
        isinstance(inputs, list | tuple)
        and len(inputs) > 0
        and not isinstance(inputs[0], float | int | list)
    )
    sources = list(inputs) if batch or listed else [inputs]
    loaded = [load_series(source) for source in sources]
    if len({tuple(s.shape) for s in loaded}) != 1:
        raise MethodError("series of a batch must share one length and feature count")
    records = [SeriesRecord.of(source, s) for source, s in zip(sources, loaded, strict=True)]
    return torch.stack(loaded), records


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


@functools.cache
def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for package in ("explainer-service", "torch", "torchvision"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    found["numpy"] = np.__version__
    return found
