"""The pattern backward rule: weights replaced by A (PatternNet) or W ⊙ A (PatternAttribution).

The forward pass keeps the original weights, so ReLU masks and max-pool switches are those of the
real network; only each Conv2d/Linear layer's backward uses the substitute weights, through a
custom autograd function (never by changing the weights in place). Biases do not enter the
backward. With every pattern equal to 1, PatternAttribution's substitute is W itself and the
rule gives the ordinary gradient.

A layer with a BatchNorm folded in (scale s per unit, see :mod:`.estimate`) has pattern A' of the
folded weights s·W. The BatchNorm's own backward still multiplies by s, so the substitute is
chosen to make the pair act as the folded layer: W ⊙ A' for PatternAttribution (s·W ⊙ A' overall)
and A'/s for PatternNet (A' overall).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from engine.addons.pattern.estimate import PatternError, PatternSet
from engine.addons.pattern.layers import LayerCall, LayerCalls, weighted_layers

PatternKind = Literal["net", "attribution"]


class _SubstituteBackward(torch.autograd.Function):
    """Forward: the layer as it is. Backward to x: the transposed layer with other weights."""

    @staticmethod
    def forward(ctx, x: Tensor, output: Tensor, call: LayerCall, substitute: Tensor) -> Tensor:
        ctx.call, ctx.substitute = call, substitute
        # A copy: the returned input would be a view that an in-place activation after the
        # layer (timm's BatchNormAct2d with SiLU(inplace=True)) may not modify.
        return output.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return ctx.call.input_gradient(grad, ctx.substitute), None, None, None


class PatternRule:
    """A :class:`~engine.attribution.base.BackwardRule` from a :class:`PatternSet`."""

    def __init__(self, patterns: PatternSet, kind: PatternKind = "attribution"):
        self.patterns = patterns
        self.kind = kind
        # Per model id, after its fingerprint matched: the substitute weights (IG and SmoothGrad
        # enter the rule once per chunk of the same model).
        self._substitutes: dict[int, dict[str, Tensor]] = {}

    def substitutes(self, model: nn.Module) -> dict[str, Tensor]:
        modules = dict(model.named_modules())
        missing = [name for name in self.patterns.patterns if name not in modules]
        if missing:
            raise PatternError(f"the pattern set names layers this model lacks: {missing[:3]}")
        result = {}
        for name, pattern in self.patterns.patterns.items():
            weight = modules[name].weight
            pattern = pattern.to(weight.device, weight.dtype)
            if self.kind == "attribution":
                result[name] = weight.detach() * pattern
                continue
            scale = self.patterns.scales.get(name)
            if scale is not None:
                scale = scale.to(pattern).view(-1, *[1] * (pattern.ndim - 1))
                safe = torch.where(scale.abs() > 1e-12, scale, torch.ones_like(scale))
                pattern = torch.where(scale.abs() > 1e-12, pattern / safe, 0.0)
            result[name] = pattern
        return result

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        if id(model) not in self._substitutes:
            self.patterns.check(model)
            self._substitutes[id(model)] = self.substitutes(model)
        substitutes = self._substitutes[id(model)]

        def replace(call: LayerCall) -> Tensor | None:
            substitute = substitutes.get(call.name)
            if substitute is None:
                return None  # a layer the estimation pass never saw: ordinary gradient
            with torch.no_grad():
                output = call.output()
            return _SubstituteBackward.apply(call.x, output, call, substitute)

        with LayerCalls(weighted_layers(model), replace):
            yield
