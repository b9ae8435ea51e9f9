"""The model store: models added over the API, in a directory that the API and every worker share
(``EXPLAINER_MODEL_DIR``; in distributed mode the artifact volume). One folder per model holds
``model.json`` (the engine's model config format) and its weight file. Each process registers
the stored models in the engine's registry and reads the folder again when it changes, so a
worker started after an upload, or running while it happened, can run the new model.

A model is checked before it is stored: its name is free, its weights load without pickled code
(``weights_only``; TorchScript archives hold no Python objects), and it answers a probe input of
its declared size with one finite score per label (images) or per time step (series).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from engine.explain import cached_model
from engine.models import MODELS, ModelError, ModelSpec, register_model
from engine.models.builtin import builtin_specs
from engine.models.config import spec_from_config
from engine.models.spec import Normalized

log = logging.getLogger(__name__)
CONFIG = "model.json"
WEIGHTS = "weights.pt"
BUILT_IN = frozenset(spec.name for spec in builtin_specs())

Source = Literal["torchscript", "state_dict", "series"]


class ModelUpload(BaseModel):
    """What ``POST /models`` takes besides the weight file (the engine's config fields)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="A new model name.")
    source: Source = Field(
        ..., description="The weight file: a TorchScript archive, a state dict for 'factory' (a "
        "function importable on the server), or a series classifier saved by train-series.",
    )  # fmt: skip
    factory: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    factory_kwargs: dict[str, Any] = {}
    description: str = Field("uploaded model", max_length=500)
    input_size: tuple[int, int] = Field((224, 224), description="[H, W] of its input images")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    labels: list[str] = Field([], max_length=100_000, description="One per output class")
    cam_layer: str | None = None


class ModelRefused(ValueError):
    """An upload that cannot become a model; ``status`` is the HTTP status it deserves."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ModelStore:
    def __init__(self, root: str | Path, max_probe_pixels: int = 4096 * 4096):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_probe_pixels = max_probe_pixels
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # name → config mtime, of what this process registered

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG).is_file())

    def refresh(self) -> None:
        """Register what the folder holds now; forget what was removed or replaced."""
        with self._lock:
            current = {name: (self.root / name / CONFIG).stat().st_mtime_ns
                       for name in self.names()}  # fmt: skip
            if current == self._seen:
                return
            for name in set(self._seen) - set(current):
                MODELS.pop(name, None)
            for name, stamp in current.items():
                if self._seen.get(name) == stamp:
                    continue
                try:
                    register_model(spec_from_config(self.root / name / CONFIG))
                except ModelError as error:  # a broken folder must not take the others down
                    log.warning("stored model %s cannot be loaded: %s", name, error)
            cached_model.cache_clear()
            self._seen = current

    def add(self, upload: ModelUpload, weights: bytes) -> ModelSpec:
        """Check and store a model; ModelRefused says why not."""
        if upload.name in BUILT_IN:
            raise ModelRefused(409, f"{upload.name} is a built-in model's name")
        if (self.root / upload.name).exists():
            raise ModelRefused(409, f"a model {upload.name} exists; delete it first")
        if upload.source == "state_dict" and upload.factory is None:
            raise ModelRefused(422, "a state dict needs 'factory', a function on the server")
        incoming = self.root / f".incoming-{uuid.uuid4().hex}"
        incoming.mkdir()
        try:
            (incoming / WEIGHTS).write_bytes(weights)
            config = upload.model_dump(exclude={"source"}, exclude_none=True)
            if upload.source != "state_dict":
                config.pop("factory_kwargs", None)
            config[upload.source] = WEIGHTS  # the config field is named as the source
            (incoming / CONFIG).write_text(json.dumps(config, indent=2))
            spec = self._probe(incoming / CONFIG)
            incoming.rename(self.root / upload.name)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        self.refresh()
        return spec

    def remove(self, name: str) -> None:
        if name in BUILT_IN:
            raise ModelRefused(409, f"{name} is built in; it cannot be deleted")
        folder = self.root / name
        if not (folder / CONFIG).is_file():
            raise ModelRefused(404, f"no stored model {name}")
        shutil.rmtree(folder)
        self.refresh()

    def _probe(self, config: Path) -> ModelSpec:
        """Build the model from its config and run it once on a probe input of its size."""
        try:
            spec = spec_from_config(config)
            module, _ = spec.build(None)
        except Exception as error:  # anything a user's file or config can raise
            if "Weights only load failed" in str(error):
                raise ModelRefused(422, "the weights file holds pickled Python objects, which "
                                   "are refused: upload a state dict or a TorchScript "
                                   "archive") from None  # fmt: skip
            raise ModelRefused(422, f"the model cannot be loaded: {short(error)}") from None
        if spec.input_kind == "image":
            height, width = spec.input_size
            if height * width > self.max_probe_pixels:
                raise ModelRefused(422, f"input_size {height}×{width} is above the limit")
            module = Normalized(module, spec.mean, spec.std)
            probe = torch.rand(1, 3, height, width)
            scores, wanted = "one score per label", len(spec.labels) or None  # None: any number
        else:
            length, features = spec.input_size
            probe = torch.randn(1, length or 10, features)
            scores, wanted = "one logit per time step", probe.shape[1]
        try:
            with torch.no_grad():
                output = module.eval()(probe)
        except Exception as error:
            raise ModelRefused(422, f"the model fails on a probe input of shape "
                               f"{tuple(probe.shape)}: {short(error)}") from None  # fmt: skip
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        if len(shape) != 2 or shape[0] != 1 or (wanted and shape[1] != wanted):
            answer, expected = shape or type(output).__name__, f"(1, {wanted or 'classes'})"
            raise ModelRefused(422, f"on a probe input of shape {tuple(probe.shape)} the model "
                               f"answers {answer}, not {scores}: {expected}")  # fmt: skip
        if not torch.isfinite(output).all():
            raise ModelRefused(422, "the model answers a probe input with NaN or infinity")
        return spec


def short(error: BaseException, limit: int = 200) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "…"
