"""Model registry: built-in specs, user config files, and a loader that returns ready models."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from engine.models.builtin import builtin_specs
from engine.models.config import is_config_path, spec_from_config
from engine.models.inspection import layer_names, map_layers, pass_bytes
from engine.models.layout import in_preferred_layout
from engine.models.loading import model_lock, prepared
from engine.models.spec import LoadedModel, ModelError, ModelSpec, Normalized, file_sha256

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in builtin_specs()}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    """A registered model by name, or a config file path (YAML/JSON) that describes one."""
    if name in MODELS:
        return MODELS[name]
    if is_config_path(name):
        return spec_from_config(name)
    raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")


def known_layers(spec: ModelSpec) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(every layer name, the layers whose output is a map a CAM can use) of a model, without its
    weights: from the spec where it records them (the model store's probe), else from the
    architecture run on the meta device. None where neither works (the worker checks then)."""
    if spec.layers is not None and spec.map_layers is not None:
        return spec.layers, spec.map_layers
    survey = _meta_survey(spec)
    return survey and survey[:2]


def row_bytes(spec: ModelSpec, height: int, width: int) -> int | None:
    """Memory one image row at height × width needs in a forward and backward pass of the model
    (:func:`~engine.models.inspection.pass_bytes` per pixel, measured at the model's input size
    by the model store's probe or on the meta device); None for series models and where it is
    unknown. Linear in the pixels: right for CNNs, low for transformers at larger sizes."""
    per_pixel = spec.bytes_per_pixel
    if per_pixel is None and spec.input_kind == "image":
        survey = _meta_survey(spec)
        per_pixel = survey[2] if survey else None
    return None if per_pixel is None else math.ceil(per_pixel * height * width)


@functools.lru_cache(maxsize=32)
def _meta_survey(spec: ModelSpec) -> tuple[tuple[str, ...], tuple[str, ...], float | None] | None:
    """(layer names, map layers, bytes per pixel of a pass) of the architecture run on the meta
    device, without weights; None if it cannot run there."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying checkpoint tensors into meta ones: a no-op
            module, _ = spec.build("random" if spec.needs_weights_file else None)
            maps, per_pixel = {}, None
            if spec.input_kind == "image":
                probe = torch.empty(1, 3, *spec.input_size)
                maps = map_layers(module, probe)
                engine_view = frozen(with_normalisation(spec, module))
                per_pixel = pass_bytes(engine_view, probe) / math.prod(spec.input_size)
    except Exception:  # an architecture that cannot be built or run without real tensors
        return None
    return tuple(layer_names(module)), tuple(maps), per_pixel


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no parameter requiring a gradient (attributions are taken
    with respect to the input only); works on ScriptModules, which lack ``requires_grad_``."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def with_normalisation(spec: ModelSpec, classifier: nn.Module) -> nn.Module:
    """The classifier as the engine runs it: images in [0, 1] pixels, normalised inside where
    the spec has a mean and std; series as they are."""
    if spec.input_kind == "image" and spec.mean is not None and spec.std is not None:
        return Normalized(classifier, spec.mean, spec.std)
    return classifier


def load_model(
    name: str, weights: str | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build ``name`` with its weights, wrap the normalisation inside, freeze it, move to device,
    in the memory layout that runs it faster there (:mod:`engine.models.layout`).

    Missing weight files raise :class:`ModelError` naming the path searched; a random model is
    only ever returned when asked for explicitly (``weights="random[:SEED]"``).
    """
    spec = get_model_spec(name)
    classifier, source = spec.build(weights)
    # Images are explained in [0, 1] pixels, normalised inside; series are taken as they are.
    device = torch.device(device)
    module = frozen(with_normalisation(spec, classifier)).to(device)
    if spec.input_kind == "image":
        module, _ = in_preferred_layout(module, layout_example(spec, device))
    sha = file_sha256(source) if Path(source).is_file() else None
    return LoadedModel(spec, module, source, sha, device)


def layout_example(spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """The batch the layout probe times: two seeded uniform images at the model's input size."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, *spec.input_size, generator=generator).to(device)


@functools.lru_cache(maxsize=4)
def cached_model(name: str, weights: str | None, device: str) -> LoadedModel:
    """:func:`load_model`, kept for the next call (the four most recent name, weights and
    device triples): a worker or a CLI run loads a model once. ``cache_clear()`` forgets
    them (a stored model replaced)."""
    return load_model(name, weights, device)


__all__ = [
    "MODELS",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "Normalized",
    "cached_model",
    "frozen",
    "get_model_spec",
    "known_layers",
    "load_model",
    "model_lock",
    "prepared",
    "register_model",
    "row_bytes",
    "with_normalisation",
]
