"""An explanation seen as a mask on a representation of the image: the one view every quality
metric reads (engine/metrics), built by the mask methods from their own mask and, for gradient
and CAM methods, from the min-max normalised heat map as a pixel mask.

Also the kept-information shares that both the mask loop (its per-iteration StartGrad CP) and
the CP metrics use: Σ|m ⊙ c| / Σ|c| over coefficients and Σ|image| / Σ|x| over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.masks.representation import (
    Coefficients,
    NoiseModel,
    PixelRepresentation,
    Representation,
    image_generators,
)

TINY = 1e-12  # an empty explanation has share 0: its CP is large and finite, never inf


def _per_image_sum(values: Tensor) -> Tensor:
    return values.abs().flatten(1).sum(1)


def l1_share(masks: list[Tensor], coefficients: Coefficients) -> Tensor:
    """Σ|m ⊙ c| / Σ|c| per image, over every coefficient group and colour."""
    kept = sum(_per_image_sum(m * c) for m, c in zip(masks, coefficients, strict=True))
    return (kept / sum(_per_image_sum(c) for c in coefficients)).clamp_min(TINY)


def pixel_share(image: Tensor, x: Tensor) -> Tensor:
    """Σ|image| / Σ|x| per image."""
    return (_per_image_sum(image) / _per_image_sum(x)).clamp_min(TINY)


@dataclass
class MaskView:
    """An explanation as a mask on a representation, with what is needed to obfuscate the image.

    ``masks`` (one per coefficient group, (B, 1, ...), values in [0, 1]) and ``coefficients``
    share the representation's computation layout; ``noise`` fills deleted coefficients.
    """

    model: nn.Module
    x: Tensor  # (B, 3, H, W) in [0, 1]
    targets: Tensor  # (B,)
    representation: Representation
    coefficients: Coefficients
    masks: list[Tensor]
    noise: NoiseModel
    seed: int = 0
    pixel_clamp: bool = True
    coefficient_clamp: bool = False
    history: list[dict[str, list[float]]] | None = None  # mask methods: per image, per iteration
    heatmap: Tensor | None = None  # (B, H, W) the explanation's pixel heat map (pixel metrics)

    def explanation(self) -> Tensor:
        """E = clamp(T⁻¹(m ⊙ c), 0, 1): the image with deleted coefficients set to 0."""
        kept = [m * c for m, c in zip(self.masks, self.coefficients, strict=True)]
        return self.representation.reconstruct(kept).clamp(0, 1)

    def generators(self) -> list[torch.Generator]:
        return image_generators(self.seed, self.x.shape[0], self.x.device)


def heatmap_view(
    model: nn.Module, x: Tensor, targets: Tensor, heatmap: Tensor, seed: int = 0
) -> MaskView:
    """A gradient or CAM heat map (B, H, W) as a pixel mask: min-max normalised per image to
    [0, 1]; deleted pixels are filled with U[μ−σ, μ+σ] of the image (StartGrad's convention)."""
    flat = heatmap.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    mask = ((heatmap - low[:, None, None]) / scale[:, None, None]).unsqueeze(1).to(x)
    representation = PixelRepresentation()
    noise = representation.noise_model(x, [x], "uniform")
    return MaskView(model, x, targets, representation, [x], [mask], noise, seed, heatmap=heatmap)
