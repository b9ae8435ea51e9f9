"""Time series: T × D arrays, a model with one logit per time step, the attribution itself as the
map, the black-box scores on every result, and the series with its attribution as a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from engine.data.timeseries import SeriesRecord, load_series
from engine.kinds.base import InputKind
from engine.masks.extremal import SeriesMaskOutputs
from engine.method import Attribution, MethodError, MethodOptions, Reduction
from engine.metrics.base import MetricError, MetricRequest
from engine.metrics.timeseries import black_box
from engine.models.spec import ModelSpec
from engine.render import series_plot
from engine.result import Explanation, finite_history, json_text


class SummedSteps(nn.Module):
    """A series model's step logits z (B, T) as two class scores (−Σ_t z_t, Σ_t z_t): the
    gradient methods explain S = Σ_t z_t for 'step positive' (StartGrad's ∇Σ_t z_t), its
    negative for 'step negative'."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        total = self.model(x).sum(1)
        return torch.stack([-total, total], dim=1)


class SeriesKind(InputKind):
    name = "timeseries"

    def classifier(self, model: nn.Module) -> nn.Module:
        return SummedSteps(model)

    def prepare(self, inputs, model: ModelSpec, options: MethodOptions, resize: str):
        """A series (T × D array, tensor, .npy/.csv path), a list of them, or (B, T, D)."""
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
        records = [SeriesRecord.of(source, s).to_dict()
                   for source, s in zip(sources, loaded, strict=True)]  # fmt: skip
        return torch.stack(loaded), records

    def probabilities(self, outputs: Tensor) -> Tensor:
        """(B, T) step logits → (B, 2): the mean probability of a negative and of a positive
        step. A series model is explained on all its steps; its "class" is the majority."""
        positive = torch.sigmoid(outputs).mean(1)
        return torch.stack([1 - positive, positive], dim=1)

    def heatmap(self, attribution: Tensor, reduction: Reduction) -> Tensor:
        return attribution  # (B, T, D) is its own map

    def check_metrics(self, requests: Sequence[MetricRequest]) -> None:
        if requests:
            raise MetricError("the quality metrics are for images; a series result has the "
                              "black-box scores, and engine.metrics.timeseries.white_box scores "
                              "it against a ground truth")  # fmt: skip

    def scores(self, model: nn.Module, x, targets, attribution, heatmap, method: Attribution,
               requests: Sequence[MetricRequest], seed: int) -> dict[str, Tensor]:  # fmt: skip
        """The black-box scores of the attribution (its top 20 % of entries replaced by 0)."""
        return black_box(model, x, attribution)

    def write(
        self, explanation: Explanation, out: Path, index: int, pictures: bool = True
    ) -> dict[str, Path]:
        """``attribution.npy`` (T, D), ``series.png`` (the series, the attribution shaded per
        feature), ``history.json`` (mask methods) and ``summary.json``."""
        paths = {name: out / name for name in ("attribution.npy", "summary.json")}
        outputs = explanation.outputs
        attribution = explanation.attribution[index].numpy().astype(np.float32)
        np.save(paths["attribution.npy"], attribution)
        sources = {
            "series": explanation.inputs[index].numpy(),
            "level": np.abs(attribution) / max(float(np.abs(attribution).max()), 1e-12),
        }
        if explanation.truth is not None:
            sources["truth"] = explanation.truth[index].numpy()
        paths |= self.save_pictures(out, sources, ("series.png",), now=pictures)
        if isinstance(outputs, SeriesMaskOutputs):
            paths["history.json"] = out / "history.json"
            paths["history.json"].write_text(json_text(finite_history(outputs.history[index])))
        summary = explanation.summary(index) | {"files": sorted(paths)}
        paths["summary.json"].write_text(json_text(summary, indent=2))
        return paths

    def render(self, sources: dict[str, np.ndarray]) -> dict[str, Image.Image]:
        """The series with its attribution shaded per feature (and its ground truth)."""
        return {"series.png": series_plot(sources["series"], sources["level"],
                                          sources.get("truth"))}  # fmt: skip
