"""Grad-CAM (Selvaraju et al. 2017) and Guided Grad-CAM.

α_k = mean_{i,j} ∂S_c/∂A^k_{ij};  L = ReLU(Σ_k α_k A^k), upsampled to the input size.
Guided Grad-CAM = Guided Backprop ⊙ upsample(L).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.attribution.base import Attribution, MethodError, ScoreType, class_scores

Interpolation = Literal["bilinear", "nearest", "bicubic"]


def find_layer(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as error:
        raise MethodError(f"model has no layer {path!r}") from error


class GradCAM(Attribution):
    """Grad-CAM at ``layer`` (a module path); returns (B, 1, H, W).

    ``call_index`` picks which call of the layer to use when the module runs several times in
    one forward pass (-1: the last, e.g. EfficientNet's shared activation at the head).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        score: ScoreType = "logit",
        relu: bool = True,
        interpolation: Interpolation = "bilinear",
        align_corners: bool = False,
        call_index: int = -1,
    ):
        self.model = model
        self.layer = layer
        self.module = find_layer(model, layer)
        self.score = score
        self.relu = relu
        self.interpolation = interpolation
        self.align_corners = align_corners
        self.call_index = call_index

    def layer_map(self, x: Tensor, targets: Tensor) -> Tensor:
        """The class activation map at the layer's resolution, (B, 1, h, w)."""
        activations: list[Tensor] = []

        def keep(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
            # The rest of the network gets a copy, so an in-place operation after the layer
            # (ReLU(inplace=True), a residual +=) cannot overwrite the activation we explain.
            activations.append(output)
            return output.clone() if isinstance(output, Tensor) else None

        handle = self.module.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                scores = class_scores(self.model(leaf), targets, self.score)
                if not activations:
                    raise MethodError(f"layer {self.layer!r} did not run in the forward pass")
                activation = activations[self.call_index]
                if not isinstance(activation, Tensor) or activation.ndim != 4:
                    raise MethodError(f"layer {self.layer!r} does not output a (B, C, h, w) map")
                (grad,) = torch.autograd.grad(scores.sum(), activation)
        finally:
            handle.remove()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * activation).sum(dim=1, keepdim=True).detach()
        return F.relu(cam) if self.relu else cam

    def upsample(self, cam: Tensor, size: tuple[int, int]) -> Tensor:
        if self.interpolation == "nearest":
            return F.interpolate(cam, size=size, mode="nearest")
        return F.interpolate(
            cam, size=size, mode=self.interpolation, align_corners=self.align_corners
        )

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.upsample(self.layer_map(x, targets), tuple(x.shape[2:]))


class GuidedGradCAM(Attribution):
    """Guided Backprop ⊙ upsampled Grad-CAM, shaped like the input."""

    def __init__(self, gradcam: GradCAM, guided_backprop: Attribution):
        self.gradcam = gradcam
        self.guided_backprop = guided_backprop

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.guided_backprop.attribute(x, targets) * self.gradcam.attribute(x, targets)
