"""What differs between kinds of input (images, time series): how inputs are prepared, how the
model's output becomes class probabilities, how an attribution becomes a heat map, which scores
every result gets, and which files are written. One :class:`InputKind` per kind."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn

from engine.method import Attribution, MethodOptions, Reduction
from engine.metrics.base import MetricRequest
from engine.models.spec import ModelSpec
from engine.result import Explanation

PICTURE_SOURCES = ".pictures.npz"  # a hidden file: the arrays an input's pictures come from


class InputKind(ABC):
    name: str

    @abstractmethod
    def prepare(
        self, inputs: Any, model: ModelSpec, options: MethodOptions, resize: str
    ) -> tuple[Tensor, list[dict]]:
        """One input, a list, or a ready batch → (batch tensor, a record per input)."""

    def classifier(self, model: nn.Module) -> nn.Module:
        """The model as a classifier with outputs (B, classes), for methods that explain a
        class (``MethodSpec.explains == "classes"``)."""
        return model

    @abstractmethod
    def probabilities(self, outputs: Tensor) -> Tensor:
        """The model's outputs → class probabilities (B, classes)."""

    @abstractmethod
    def heatmap(self, attribution: Tensor, reduction: Reduction) -> Tensor:
        """The attribution reduced to the map that pictures and pixel metrics use."""

    @abstractmethod
    def check_metrics(self, requests: Sequence[MetricRequest]) -> None:
        """Refuse quality metrics this kind has no definition for (before any work is done)."""

    @abstractmethod
    def scores(
        self,
        model: nn.Module,
        x: Tensor,
        targets: Tensor,
        attribution: Tensor,
        heatmap: Tensor,
        method: Attribution,
        requests: Sequence[MetricRequest],
        seed: int,
    ) -> dict[str, Tensor]:
        """Per-input scores every result of this kind gets, plus the requested metrics."""

    @abstractmethod
    def write(
        self, explanation: Explanation, out: Path, index: int, pictures: bool = True
    ) -> dict[str, Path]:
        """Input ``index``'s files in ``out`` (summary.json included): name → path. With
        ``pictures`` False the PNG pictures are named but not drawn: what they are drawn from
        is saved instead (:meth:`save_pictures`), for :meth:`render` to draw them later."""

    @abstractmethod
    def render(self, sources: dict[str, np.ndarray]) -> dict[str, Image.Image]:
        """The input's pictures (file name → image), drawn from the arrays :meth:`write` chose."""

    def save_pictures(
        self, out: Path, sources: dict[str, np.ndarray], names: tuple[str, ...], now: bool
    ) -> dict[str, Path]:
        """Draw the pictures ``names`` into ``out`` now, or save their ``sources`` (with this
        kind's name) as ``PICTURE_SOURCES`` for :meth:`render` later; name → path either way."""
        if now:
            for name, picture in self.render(sources).items():
                picture.save(out / name)
        else:
            np.savez(out / PICTURE_SOURCES, kind=np.array(self.name), **sources)
        return {name: out / name for name in names}
