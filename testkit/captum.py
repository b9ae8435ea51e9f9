"""Helpers to compute Captum references on models equivalent to ours."""

from __future__ import annotations

import copy

from torch import Tensor, nn


class ClampMax(nn.Module):
    def __init__(self, upper: float):
        super().__init__()
        self.upper = upper

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(max=self.upper)


def relu6_as_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` where every nn.ReLU6 is min(·, 6) followed by an nn.ReLU.

    Same function; Captum's Guided Backprop and Deconvolution hook only nn.ReLU, so on this
    copy they apply the rectifier rule to the ReLU part of ReLU6, which is our definition.
    """
    rewritten = copy.deepcopy(model)
    for parent in list(rewritten.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.Sequential(ClampMax(6.0), nn.ReLU()))
    return rewritten
