"""What the engine knows about a classifier: its input, normalisation, labels and CAM layer."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from engine.models.inspection import CAPABILITIES, capabilities_of

InputKindName = Literal["image", "timeseries"]


def class_number(text: str) -> int | None:
    """The class index a text spells in ASCII digits ("285", "-1"), else None ("²" and other
    Unicode digits are labels, which str.isdigit would accept and int() then refuse)."""
    text = text.strip()
    return int(text) if re.fullmatch(r"-?[0-9]{1,18}", text) else None


class ModelError(ValueError):
    """A model cannot be built or loaded (unknown name, missing weights, bad config)."""


class WeightsNotFound(ModelError):
    """No weight file for ``model`` at ``path``. The message is worded for Python callers; an
    entry point words its own from ``model`` and ``path`` (the CLI names ``--weights``)."""

    def __init__(self, model: str, path: str | Path) -> None:
        self.model, self.path = model, str(path)
        super().__init__(f"weights for {model} not found at {path}; pass weights=PATH (a state "
                         f"dict file), or weights='random' for an untrained model")  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a registered model.

    ``build(weights)`` returns the raw classifier, which expects *normalised* input; the engine
    wraps it in :class:`Normalized` so that every attribution is taken w.r.t. [0, 1] pixels.
    """

    name: str
    description: str
    build: Callable[[str | None], tuple[nn.Module, str]]  # weights arg -> (module, weights source)
    input_kind: InputKindName = "image"
    input_size: tuple[int, int] = (224, 224)
    # Normalisation put inside the model: (x − mean) / std; None: the model takes [0, 1] pixels.
    mean: tuple[float, ...] | None = (0.485, 0.456, 0.406)
    std: tuple[float, ...] | None = (0.229, 0.224, 0.225)
    labels: Sequence[str] = field(default=(), repr=False)
    cam_layer: str | None = None  # the model's own module name
    needs_weights_file: bool = False
    # Where its weights are read from when none are named (a file the operator provides).
    default_weights: Callable[[], Path] | None = field(default=None, repr=False)
    # What the model allows (engine.models.inspection.CAPABILITIES) and its layer names, where
    # known without loading it (built-in models, the model store's probe); None: found at load.
    capabilities: frozenset[str] | None = field(default=None, repr=False)
    layers: tuple[str, ...] | None = field(default=None, repr=False)
    map_layers: tuple[str, ...] | None = field(default=None, repr=False)  # outputs CAMs can use
    # Memory of a forward+backward pass per input pixel (the model store's probe measures it).
    bytes_per_pixel: float | None = field(default=None, repr=False)
    # Which upload of a stored model this is (a name deleted and uploaded again is another
    # model: results of the first are not reused for the second); None for built-in models.
    revision: str | None = None

    @property
    def allows(self) -> frozenset[str]:
        """Its capabilities; a model whose capabilities are not recorded is taken to have them
        all (the engine checks the loaded model again before a method runs)."""
        return self.capabilities if self.capabilities is not None else frozenset(CAPABILITIES)

    def size_refusal(self, height: int, width: int) -> str | None:
        """Why images explained at height × width cannot go through this model (one that takes
        its input size only, as the model store's probe found), or None."""
        if self.input_kind != "image" or (height, width) == tuple(self.input_size):
            return None
        if "any_size" in self.allows:
            return None
        h, w = self.input_size
        return (f"model {self.name} takes {h}×{w} images only, not {height}×{width}: leave "
                "image_size and resize at their defaults")  # fmt: skip

    def unavailable(self) -> str | None:
        """Why this model cannot be built here with its default weights (their file is not on
        this machine), or None. Names the file, not the folder."""
        if self.default_weights is None or self.default_weights().is_file():
            return None
        return (f"model {self.name} has no weights on this server: the operator puts "
                f"{self.default_weights().name} in the torch hub cache (or uploads the "
                "model)")  # fmt: skip

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def class_index(self, label: str) -> int:
        """Resolve a class label (case-insensitive) or a number given as text."""
        if (number := class_number(label)) is not None:
            return number
        wanted = label.strip().lower()
        for i, name in enumerate(self.labels):
            if name.lower() == wanted:
                return i
        raise ModelError(f"model {self.name!r} has no class labelled {label!r}")

    def describe(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "input_kind": self.input_kind,
            "input_size": list(self.input_size),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "num_classes": len(self.labels),
            "cam_layer": self.cam_layer,
            "needs_weights_file": self.needs_weights_file,
            "capabilities": sorted(self.capabilities) if self.capabilities is not None else None,
        }


class Normalized(nn.Module):
    """``f(x) = classifier((x − mean) / std)``: the normalisation lives inside the model."""

    def __init__(self, classifier: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier((x - self.mean) / self.std)


@dataclass
class LoadedModel:
    """A ready model: eval mode, frozen parameters, normalisation inside, on ``device``."""

    spec: ModelSpec
    module: nn.Module
    weights: str
    weights_sha256: str | None
    device: torch.device

    @property
    def classifier(self) -> nn.Module:
        """The user's own model inside :attr:`module`: layer names are its names."""
        return self.module.classifier if isinstance(self.module, Normalized) else self.module

    @functools.cached_property
    def capabilities(self) -> frozenset[str]:
        """What the loaded model allows (:data:`~engine.models.inspection.CAPABILITIES`)."""
        return capabilities_of(self.classifier, self.spec.cam_layer)

    def record(self) -> dict:
        """Name and weights (a file by its name and sha256, never its folder: records leave
        the machine, e.g. in a service's summary.json)."""
        weights = self.weights
        if Path(weights).is_absolute():
            weights = f"file:{Path(weights).name}"
        return {"name": self.spec.name, "weights": weights, "weights_sha256": self.weights_sha256}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names and values of the model's parameters and buffers: what a pattern
    set or GAD support set is tied to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
