"""Estimating PatternNet/PatternAttribution patterns in one streaming pass (Kindermans et al. 2018).

For each output unit j of a layer with weights w_j, input x (a Conv's receptive-field patch,
padding included; every output position is a sample) and y_j = w_jᵀx (no bias):

- linear estimator:        a_j = cov(x, y_j) / (w_jᵀ cov(x, y_j))
- two-component estimator: the same with every expectation over the samples where
  z_j = w_jᵀx + b_j > 0 (the positive regime; after a ReLU the negative one does not matter).

Statistics (count, Σx, Σy, Σxy per unit) accumulate in float64 over a dataset in eval mode; the
denominator uses a safe divide (0 → 1). A pattern has its weight's shape; grouped (depthwise)
convolutions are estimated per group.

Which estimator and which weights: a first forward pass follows each layer's output. An
eval-mode BatchNorm right after a layer is folded into it (w'_j = s_j w_j, b'_j = s_j b_j + t_j),
so the regime z'_j > 0 is the one the following ReLU sees, and the pattern is the folded layer's.
Layers whose output (after that BatchNorm) enters a rectifier use the two-component estimator
(when asked for), all others (the logits, a projection before a residual sum) the linear one,
as iNNvestigate does. ReLU6's upper saturation is not modelled (regime z' > 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.addons.pattern.layers import (
    LayerCall,
    LayerCalls,
    LayerContext,
    layer_contexts,
    weighted_layers,
)
from engine.method import MethodError, ProgressFn
from engine.models.spec import model_fingerprint
from engine.runtime import checkpoint
from engine.storage import load_record, save_record

Estimator = Literal["two_component", "linear"]
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.Bilinear)  # fmt: skip
FORMAT = "explainer-patterns/1"


class PatternError(MethodError):
    """A pattern set that is missing, unreadable, or made for another model."""


def _samples(call: LayerCall, context: LayerContext) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs X (N, G, D_g), (folded) weights W (G, C_g, D_g) and biases (G, C_g), float64."""
    weight = call.weight.detach().double()
    if call.is_conv:
        kernel = weight.shape[-2:]
        patches = F.unfold(call.x.detach().double(), kernel, call.dilation, call.padding,
                           call.stride)  # fmt: skip
        inputs = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B·L, C_in·kh·kw)
    else:
        inputs = call.x.detach().double().reshape(-1, weight.shape[1])
    groups = call.groups
    out_channels = weight.shape[0]
    x = inputs.view(inputs.shape[0], groups, -1)
    w = weight.reshape(groups, out_channels // groups, -1)
    bias = call.bias.detach().double() if call.bias is not None else torch.zeros(out_channels)
    bias = bias.to(w)
    if context.scale is not None:
        w = w * context.scale.to(w).view(groups, -1, 1)
        bias = bias * context.scale.to(w) + context.shift.to(w)
    return x, w, bias.view(groups, -1)


@dataclass
class _Moments:
    """Running sums for one layer and one regime: per unit count, Σx, Σy and Σxy."""

    count: Tensor
    sum_x: Tensor
    sum_y: Tensor
    sum_xy: Tensor

    @classmethod
    def zeros(cls, w: Tensor) -> _Moments:
        groups, units, width = w.shape
        return cls(
            torch.zeros(groups, units, dtype=w.dtype, device=w.device),
            torch.zeros(groups, units, width, dtype=w.dtype, device=w.device),
            torch.zeros(groups, units, dtype=w.dtype, device=w.device),
            torch.zeros(groups, units, width, dtype=w.dtype, device=w.device),
        )

    def add(self, x: Tensor, y: Tensor, mask: Tensor | None) -> None:
        """x (N, G, D), y (N, G, C), mask (N, G, C) of the samples in this regime (None: all)."""
        if mask is None:
            self.count += x.shape[0]
            self.sum_x += x.sum(0).unsqueeze(1)
            self.sum_y += y.sum(0)
        else:
            self.count += mask.sum(0)
            self.sum_x += torch.einsum("ngc,ngd->gcd", mask, x)
            y = y * mask
            self.sum_y += y.sum(0)
        self.sum_xy += torch.einsum("ngc,ngd->gcd", y, x)

    def pattern(self, w: Tensor) -> Tensor:
        """a_j = cov_j / (w_jᵀ cov_j) with cov_j = E[x y_j] − E[x] E[y_j] (G, C, D)."""
        count = self.count.clamp(min=1).unsqueeze(-1)
        covariance = self.sum_xy / count - (self.sum_x / count) * (self.sum_y.unsqueeze(-1) / count)
        denominator = (w * covariance).sum(-1, keepdim=True)
        return covariance / torch.where(denominator == 0, torch.ones_like(denominator), denominator)


@dataclass
class PatternSet:
    """Patterns A (one per weighted layer, the weight's shape) for one model's exact weights."""

    model: str
    fingerprint: str
    estimator: Estimator
    patterns: dict[str, Tensor]  # of the layer with its BatchNorm folded in, where it has one
    layer_estimators: dict[str, Estimator]
    samples: int  # images seen
    source: str = ""
    scales: dict[str, Tensor] = field(default_factory=dict)  # folded BatchNorm scale s per unit
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, model: nn.Module) -> None:
        """Refuse a pattern set estimated for other weights."""
        if model_fingerprint(model) != self.fingerprint:
            raise PatternError(
                f"these patterns were estimated for model {self.model!r} with weights "
                f"{self.fingerprint[:12]}…; this model's weights differ: estimate patterns for it"
            )

    def save(self, path: str | Path) -> Path:
        record = {**vars(self)}
        record["patterns"] = {k: v.float().cpu() for k, v in self.patterns.items()}
        record["scales"] = {k: v.float().cpu() for k, v in self.scales.items()}
        return save_record(path, FORMAT, record)

    @classmethod
    def load(cls, path: str | Path) -> PatternSet:
        return cls(**load_record(path, FORMAT, PatternError, "pattern file"))


def estimate_patterns(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    model_name: str = "",
    estimator: Estimator = "two_component",
    progress: ProgressFn | None = None,
    total: int | None = None,
) -> PatternSet:
    """Patterns of every Conv2d/Linear layer from the input batches (one pass, eval mode).

    Other layers with weights that act linearly on their input (Conv1d/Conv3d, transposed
    convolutions, Bilinear) are refused: the backward rule could not replace their weights.
    """
    unsupported = sorted({type(m).__name__ for m in model.modules() if isinstance(m, UNSUPPORTED)})
    if unsupported:
        raise PatternError(f"patterns are estimated for Conv2d and Linear layers only; this "
                           f"model has {', '.join(unsupported)}")  # fmt: skip
    layers = weighted_layers(model)
    moments: dict[str, tuple[_Moments, bool]] = {}  # per layer: sums, positive regime only?
    weights: dict[str, Tensor] = {}
    contexts: dict[str, LayerContext] = {}

    def record(call: LayerCall) -> None:
        context = contexts.get(call.name, LayerContext())
        x, w, bias = _samples(call, context)
        y = torch.einsum("ngd,gcd->ngc", x, w)
        if call.name not in moments:
            weights[call.name] = w
            two_component = estimator == "two_component" and context.rectified
            moments[call.name] = (_Moments.zeros(w), two_component)
        sums, two_component = moments[call.name]
        sums.add(x, y, (y + bias > 0).to(y) if two_component else None)

    seen = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            checkpoint()
            if not contexts:
                contexts.update(layer_contexts(model, batch[:1]))
            with torch.no_grad(), LayerCalls(layers, record):
                model(batch)
            seen += batch.shape[0]
            if progress is not None:
                progress(seen, total or seen)
    finally:
        model.train(was_training)
    if not moments:
        raise PatternError("the model ran no Conv2d or Linear layer: nothing to estimate")
    modules = dict(model.named_modules())
    patterns, chosen = {}, {}
    for name, (sums, two_component) in moments.items():
        chosen[name] = "two_component" if two_component else "linear"
        patterns[name] = sums.pattern(weights[name]).reshape(modules[name].weight.shape).float()
    scales = {name: c.scale.float() for name, c in contexts.items() if c.scale is not None}
    return PatternSet(model_name, model_fingerprint(model), estimator, patterns, chosen, seen,
                      scales=scales)  # fmt: skip
