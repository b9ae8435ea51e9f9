"""Hallucination score: edges an explanation shows that the image does not have.

    Hallucination = #{B_E = 1 ∧ dilate₃ₓ₃(B_x) = 0} / #{B_x = 1}

with B = [CoShREM edgeness > 0.1] of the grey image (mean of R, G, B) and E the max-normalised
explanation image (Kolek et al., CVPR 2023, §5). Grey values are mapped to integers 0…85 before
edge detection, as the published score did (``int8(255·g/3)``); CoShREM's minimum contrast 3 is
in those units. An image without edges uses a denominator of 1 (the score is then the count of
explanation edges).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from engine.masks.view import MaskView
from engine.metrics.base import MetricOptions, MetricSpec
from engine.metrics.cp import max_normalised
from engine.metrics.edges import edge_measure


class HallucinationOptions(MetricOptions):
    threshold: float = Field(0.1, gt=0, lt=1, description="Edgeness above this is an edge.")
    min_contrast: float = Field(3.0, ge=0, description="CoShREM's minimum contrast (grey units).")
    grey_levels: int = Field(85, ge=1, le=65535, description="Grey values are integers 0…this.")

    def model_passes(self, height: int, width: int) -> int:
        return 0  # edges of two images, no model


def edge_map(images: Tensor, options: HallucinationOptions) -> Tensor:
    """Binary CoShREM edges (B, H, W) of RGB images (B, 3, H, W) in [0, 1]."""
    grey = torch.trunc(options.grey_levels * images.mean(1))
    return edge_measure(grey, options.min_contrast) > options.threshold


def hallucination_score(image_edges: Tensor, explanation_edges: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: the hallucination ratio and the hallucinated edge map (B, H, W)."""
    dilated = torch.nn.functional.max_pool2d(image_edges[:, None].float(), 3, 1, 1)[:, 0] > 0
    hallucinated = explanation_edges & ~dilated
    count = image_edges.flatten(1).sum(1).clamp_min(1)
    return hallucinated.flatten(1).sum(1) / count, hallucinated


def hallucination(view: MaskView, options: HallucinationOptions) -> dict[str, Tensor]:
    image_edges = edge_map(view.x, options)
    explanation_edges = edge_map(max_normalised(view.explanation()), options)
    score, _ = hallucination_score(image_edges, explanation_edges)
    return {"hallucination": score.float(), "image_edges": image_edges.flatten(1).sum(1).float()}


HALLUCINATION = MetricSpec(
    name="hallucination",
    summary="CoShREM edges of the explanation that lie away from the image's edges, per edge "
    "of the image (0: no artificial edges; can exceed 1).",
    definition="Hallucination score (Kolek et al., CVPR 2023)",
    options=HallucinationOptions,
    compute=hallucination,
    keys=("hallucination", "image_edges"),
)
