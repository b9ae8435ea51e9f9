"""A user's own model described by a YAML or JSON config file.

Fields: ``name``; one of ``factory: "package.module:function"`` (called with ``factory_kwargs``),
``torchscript: path`` or ``series: path`` (a series classifier saved by ``train-series``);
optional ``state_dict: path``; ``input_size: [H, W]``; ``mean``; ``std``; ``labels`` (a list or a
text file with one label per line); ``cam_layer``. Relative paths are relative to the config
file. Weight files are read with ``weights_only=True``: never arbitrary pickles.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from engine.models.series import series_spec
from engine.models.spec import ModelError, ModelSpec


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = "user model"
    factory: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    factory_kwargs: dict[str, Any] = {}
    torchscript: str | None = None
    series: str | None = None
    state_dict: str | None = None
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    labels: list[str] | str = []
    cam_layer: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if sum(s is not None for s in (self.factory, self.torchscript, self.series)) != 1:
            raise ValueError("give exactly one of 'factory', 'torchscript' or 'series'")
        return self


def is_config_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".json")) and Path(name).is_file()


def spec_from_config(path: str | Path) -> ModelSpec:
    path = Path(path)
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        config = ModelConfig.model_validate(raw)
    except (ValidationError, ValueError, yaml.YAMLError) as error:
        raise ModelError(f"invalid model config {path}: {error}") from error

    def resolve(p: str) -> Path:
        return (path.parent / p).resolve()

    if config.series is not None:
        return series_spec(config.name, resolve(config.series))

    labels = config.labels
    if isinstance(labels, str):
        labels = [line.strip() for line in resolve(labels).read_text().splitlines() if line.strip()]

    def build(weights: str | None) -> tuple[nn.Module, str]:
        if config.torchscript is not None:
            model = torch.jit.load(str(resolve(config.torchscript)), map_location="cpu")
            source = str(resolve(config.torchscript))
        else:
            module_name, _, attr = config.factory.partition(":")
            factory = importlib.import_module(module_name)
            for part in attr.split("."):
                factory = getattr(factory, part)
            model = factory(**config.factory_kwargs)
            source = config.factory
        state_path = weights or config.state_dict
        if state_path is not None:
            file = Path(state_path) if weights else resolve(state_path)
            if not file.is_file():
                raise ModelError(f"state dict for {config.name!r} not found at {file}")
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            source = str(file)
        return model, source

    return ModelSpec(
        name=config.name,
        description=config.description,
        build=build,
        input_size=config.input_size,
        mean=config.mean,
        std=config.std,
        labels=tuple(labels),
        cam_layer=config.cam_layer,
    )
