"""Saliency (vanilla gradient) and Gradient × Input.

Saliency: A = ∂S_c/∂x (Simonyan et al. 2014). Gradient × Input: A = x ⊙ ∂S_c/∂x (Shrikumar et
al. 2016). With a backward rule the same classes give Guided Backprop and Deconvolution.
"""

from __future__ import annotations

from torch import Tensor

from engine.attribution.base import GradientFn
from engine.method import Attribution


class Saliency(Attribution):
    """A = ∂S_c/∂x, signed (take |·| in the heat-map reduction if wanted)."""

    def __init__(self, gradient: GradientFn):
        self.gradient = gradient

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.gradient(x, targets)


class GradientXInput(Attribution):
    """A = x ⊙ ∂S_c/∂x."""

    def __init__(self, gradient: GradientFn):
        self.gradient = gradient

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return x * self.gradient(x, targets)
