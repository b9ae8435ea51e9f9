"""A user's own model described by a YAML or JSON config file.

Fields: ``name``; one source: ``factory: "package.module:function"`` (called with
``factory_kwargs``), ``timm: architecture`` (``timm.create_model`` without pretrained weights,
with ``factory_kwargs``), ``export: path`` (a ``torch.export`` program saved by
``torch.export.save``), ``torchscript: path`` or ``series: path`` (a series classifier saved by
``train-series``); optional ``state_dict: path`` (for ``factory`` and ``timm``);
``input_size: [H, W]``; the normalisation: ``mean`` and ``std``, or ``normalize: false`` for a
model that takes [0, 1] pixels (a timm model's default is its ``pretrained_cfg``, otherwise
ImageNet's); ``labels`` (a list or a text file with one label per line); ``cam_layer``. Relative
paths are relative to the config file. Weight files are read with ``weights_only=True``: never
arbitrary pickles. TorchScript archives and exported programs are checked before and after they
are loaded: nothing runs while they load, and their graphs call allowed operators only
(:mod:`engine.models.operators`).
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.export.pt2_archive.constants import (
    CUSTOM_OBJ_FILENAME_PREFIX,
    OPAQUE_OBJ_FILENAME_PREFIX,
)

from engine.models import operators
from engine.models.series import series_spec
from engine.models.spec import ModelError, ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("factory", "timm", "export", "torchscript", "series")
# timm.create_model arguments that would fetch or read weights on their own.
TIMM_REFUSED_KWARGS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = "user model"
    factory: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    factory_kwargs: dict[str, Any] = {}
    timm: str | None = Field(None, pattern=r"^[\w.]+$")
    export: str | None = None
    torchscript: str | None = None
    series: str | None = None
    state_dict: str | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalize: bool = True
    labels: list[str] | str = []
    cam_layer: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if sum(getattr(self, source) is not None for source in SOURCES) != 1:
            raise ValueError(f"give exactly one of {', '.join(repr(s) for s in SOURCES)}")
        if self.state_dict is not None and self.factory is None and self.timm is None:
            raise ValueError("'state_dict' goes with 'factory' or 'timm'")
        if self.timm is not None and (refused := TIMM_REFUSED_KWARGS & set(self.factory_kwargs)):
            raise ValueError(f"factory_kwargs may not set {', '.join(sorted(refused))}: weights "
                             "come from the state dict only")  # fmt: skip
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both 'mean' and 'std', or neither")
        return self


def is_config_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".json")) and Path(name).is_file()


def timm_defaults(architecture: str) -> tuple[tuple[int, int], tuple, tuple]:
    """(input size, mean, std) of a timm architecture's ``pretrained_cfg`` (no download)."""
    import timm

    if not timm.is_model(architecture):
        raise ModelError(f"timm has no architecture {architecture!r}")
    cfg = timm.models.get_pretrained_cfg(architecture)
    if cfg is None:
        return (224, 224), IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.input_size[1:]), tuple(cfg.mean), tuple(cfg.std)


def normalisation(config: ModelConfig) -> tuple[tuple[int, int], tuple | None, tuple | None]:
    """(input size, mean, std): given, else the timm architecture's, else 224² and ImageNet's;
    mean and std are None for ``normalize: false``."""
    size, mean, std = (224, 224), IMAGENET_MEAN, IMAGENET_STD
    if config.timm is not None:
        size, mean, std = timm_defaults(config.timm)
        side = config.factory_kwargs.get("img_size")
        if isinstance(side, int):
            size = (side, side)
        elif isinstance(side, list | tuple) and len(side) == 2:
            size = (int(side[0]), int(side[1]))
    if config.input_size is not None:
        size = config.input_size
    if not config.normalize:
        return size, None, None
    if config.mean is not None:
        mean, std = config.mean, config.std
    return size, mean, std


def load_torchscript(path: Path) -> nn.Module:
    """A TorchScript archive on the CPU whose loading runs no code and whose every operator is
    allowed (:mod:`engine.models.operators`)."""
    with warnings.catch_warnings():  # PyTorch's own notice that TorchScript is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return operators.load_torchscript(path)


def check_exported_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive whose loading would run code: PyTorch unpickles payloads marked
    ``use_pickle``, custom and opaque objects, legacy ``<model>.pt`` weight or constant files,
    and sample inputs that ``weights_only`` refuses (it falls back to a full unpickler), and
    loads compiled AOTInductor libraries. An archive of a plain ``torch.export.save`` has none
    of these: every file in its weights and constants folders is listed by their configs."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ModelError("the file is not a torch.export archive (.pt2, a zip)") from None
    with archive:
        listed = set()
        for name in archive.namelist():
            if name.endswith("_config.json") and "/data/" in name:
                folder = name.rsplit("/", 1)[0]
                entries = json.loads(archive.read(name)).get("config", {}).values()
                listed |= {f"{folder}/{entry.get('path_name', '')}" for entry in entries}
        for name in archive.namelist():
            stored = "/data/weights/" in name or "/data/constants/" in name
            if stored and not name.endswith("_config.json") and name not in listed:
                raise ModelError("the archive holds weight or constant files that its "
                                 "configuration does not list (legacy pickles), which are "
                                 "refused")  # fmt: skip
            if "aotinductor/" in name:
                raise ModelError("the archive holds compiled AOTInductor code, which is refused")
            if "/sample_inputs/" in name:
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise ModelError("the archive's sample inputs hold pickled Python objects, "
                                     "which are refused") from None  # fmt: skip
            if name.endswith("_config.json") and "/data/" in name:
                for entry in json.loads(archive.read(name)).get("config", {}).values():
                    path_name = str(entry.get("path_name", ""))
                    objects = path_name.startswith((CUSTOM_OBJ_FILENAME_PREFIX,
                                                    OPAQUE_OBJ_FILENAME_PREFIX))  # fmt: skip
                    if entry.get("use_pickle") or not path_name or objects:
                        raise ModelError("the archive holds pickled Python objects (weights or "
                                         "constants), which are refused")  # fmt: skip
    operators.check_program_archive(path)


def load_exported(path: Path) -> nn.Module:
    """A ``torch.export`` program as modules with the original names, so hooks run on them
    (after :func:`check_exported_archive`, and with every operator of its graphs allowed)."""
    check_exported_archive(path)
    program = torch.export.load(str(path))
    operators.refuse_unless_allowed(operators.program_operators(program), "exported program")
    return torch.export.unflatten(program)


def call_factory(path: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = path.partition(":")
    factory = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"{path} returned no PyTorch model (an nn.Module)")
    return model


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors only (``weights_only``), memory-mapped where the file's format allows, so a large
    file is not read into memory before its tensors are copied into the model."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(file, map_location="cpu", weights_only=True)  # a legacy-format file


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
            return load_torchscript(resolve(config.torchscript)), str(resolve(config.torchscript))
        if config.export is not None:
            return load_exported(resolve(config.export)), str(resolve(config.export))
        if config.timm is not None:
            import timm

            model = timm.create_model(config.timm, pretrained=False, **config.factory_kwargs)
            source = f"timm:{config.timm}"
        else:
            model, source = call_factory(config.factory, config.factory_kwargs), config.factory
        state_path = weights or config.state_dict
        if state_path is not None:
            file = Path(state_path) if weights else resolve(state_path)
            if not file.is_file():
                raise ModelError(f"state dict for {config.name!r} not found at {file}")
            model.load_state_dict(read_state_dict(file))
            source = str(file)
        return model, source

    size, mean, std = normalisation(config)
    return ModelSpec(
        name=config.name,
        description=config.description,
        build=build,
        input_size=size,
        mean=mean,
        std=std,
        labels=tuple(labels),
        cam_layer=config.cam_layer,
    )
