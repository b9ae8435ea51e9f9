"""CriGrad (critical gradient), a labelled **reconstruction**: no CriGrad code or paper is public.

The public README describes an add-on to input-gradient methods whose backward pass "filters
gradient noise" at chosen layers. This module rebuilds it in the manner of RectGrad (Kim et al.
2019) and PruneGrad (Khakzar et al. 2019), as specified in specs/gradient_methods.md §1.13:

1. at each chosen layer l (default: the output of every ReLU/ReLU6 module) the gradient g_l
   arrives during the ordinary backward pass;
2. the importance of each unit is I_l = a_l ⊙ g_l ('gxi'), |a_l ⊙ g_l| ('abs_gxi') or |g_l|
   ('abs_grad'), a_l being the layer's activation; per image the top fraction ρ of units is kept
   (granularity 'unit', or 'channel' with I summed over H, W): m_l = 1[I_l ≥ q_{1−ρ}(I_l)];
3. g_l ⊙ m_l flows on, so lower layers see gradients already filtered above (layer by layer
   on the way down).

The filtered input gradient ĝ_x then replaces ∂S/∂x inside any gradient method (Saliency, G×I,
IG, SmoothGrad, ...): the filter is a backward rule, applied at every path point or noisy copy.
With ρ = 1 every unit is kept and the result is the wrapped method's, exactly. Ties at the
threshold are all kept, so slightly more than a fraction ρ may pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from engine.addons import AddonOptions, build_base, with_rule
from engine.method import LAYER_NAME, Attribution, MethodContext, MethodError, MethodSpec
from engine.models.inspection import rectifier_modules

Importance = Literal["gxi", "abs_gxi", "abs_grad"]
Granularity = Literal["unit", "channel"]


def critical_mask(activation: Tensor, grad: Tensor, keep: float, importance: Importance,
                  granularity: Granularity) -> Tensor:  # fmt: skip
    """m = 1[I ≥ the ⌈ρ·n⌉-th largest I] per image, broadcastable to the gradient."""
    if importance == "gxi":
        scores = activation * grad
    elif importance == "abs_gxi":
        scores = (activation * grad).abs()
    else:
        scores = grad.abs()
    if granularity == "channel" and scores.ndim > 2:
        scores = scores.flatten(2).sum(2)
    flat = scores.flatten(1)
    count = flat.shape[1]
    kept = min(count, max(1, math.ceil(keep * count)))
    threshold = flat.kthvalue(count - kept + 1, dim=1, keepdim=True).values
    mask = (flat >= threshold).view_as(scores)
    while mask.ndim < grad.ndim:
        mask = mask.unsqueeze(-1)
    return mask.to(grad.dtype)


class _CriticalFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, activation: Tensor, settings: tuple) -> Tensor:
        ctx.save_for_backward(activation)
        ctx.settings = settings
        return activation.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (activation,) = ctx.saved_tensors
        return grad * critical_mask(activation, grad, *ctx.settings), None


class CriticalGradientRule:
    """Backward rule: filter the gradient at the chosen layers' outputs (see the module doc)."""

    def __init__(self, layers: list[nn.Module] | None = None, keep: float = 0.5,
                 importance: Importance = "gxi", granularity: Granularity = "unit"):  # fmt: skip
        self.layers = layers
        self.settings = (keep, importance, granularity)

    def modules(self, model: nn.Module) -> list[nn.Module]:
        """The filtered layers: those given, or every rectifier module of ``model``."""
        if self.layers is not None:
            return self.layers
        chosen = rectifier_modules(model)
        if not chosen:
            raise MethodError("CriGrad found no ReLU/ReLU6 module; name its layers")
        return chosen

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        def filtered(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            return _CriticalFilter.apply(output, self.settings)

        handles = [m.register_forward_hook(filtered) for m in self.modules(model)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class CriGradOptions(AddonOptions):
    keep: float = Field(0.5, gt=0, le=1, description="ρ: fraction of units kept per layer.")
    importance: Importance = Field(
        "gxi", description="Unit ranking: activation×gradient (gxi), its absolute value, or |grad|."
    )
    granularity: Granularity = Field("unit", description="Rank single units or whole channels.")
    layers: list[str] | None = Field(
        None,
        description="The model's module names filtered; default: every ReLU/ReLU6 module.",
        json_schema_extra={LAYER_NAME: "any"},
    )

    def requirements(self) -> frozenset[str]:
        own = {"hooks"} if self.layers is not None else {"hooks", "rectifiers"}
        return super().requirements() | own


def _crigrad(ctx: MethodContext, options: CriGradOptions) -> Attribution:
    layers = [ctx.layer(name) for name in options.layers] if options.layers is not None else None
    rule = CriticalGradientRule(layers, options.keep, options.importance, options.granularity)
    return build_base(with_rule(ctx, rule), options.base, options.base_options)


CRIGRAD_METHOD = MethodSpec(
    name="crigrad",
    family="addon",
    summary="CriGrad (reconstruction): the base gradient method with the gradient kept only "
    "through the top fraction ρ of units by activation×gradient at each ReLU, filtered "
    "layer by layer on the way down. ρ = 1 gives the base method.",
    citation="CriGrad README (no public code); reconstruction after RectGrad (Kim et al. 2019)",
    options=CriGradOptions,
    build=_crigrad,
)
