"""Model registry: built-in specs, user config files, and a loader that returns ready models."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.builtin import builtin_specs
from engine.models.config import is_config_path, spec_from_config
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


def load_model(
    name: str, weights: str | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build ``name`` with its weights, wrap the normalisation inside, freeze it, move to device.

    Missing weight files raise :class:`ModelError` naming the path searched; a random model is
    only ever returned when asked for explicitly (``weights="random[:SEED]"``).
    """
    spec = get_model_spec(name)
    classifier, source = spec.build(weights)
    # Images are explained in [0, 1] pixels, normalised inside; series are taken as they are.
    module = (
        Normalized(classifier, spec.mean, spec.std) if spec.input_kind == "image" else classifier
    )
    module.eval().requires_grad_(False)
    device = torch.device(device)
    sha = file_sha256(source) if Path(source).is_file() else None
    return LoadedModel(spec, module.to(device), source, sha, device)


__all__ = [
    "MODELS",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "Normalized",
    "get_model_spec",
    "load_model",
    "register_model",
]
