"""GAD's evaluation (Mazini Rodrigues, Boutry & Najman, PRL): Relative Coverage and Relative
Sensitivity of the convex hulls of a map's important pixels (specs §2.6).

- RC = A(CH_GAD) / A(CH_orig), areas as pixel counts of the rasterised hulls; RC < 1: GAD's
  important region is smaller than the original method's.
- RS(I, M, a) = |N_a(I) − N_a(I ⊙ (1 − M))| / Σ M, with M a binary hull mask and N_a the
  original model's logit of the target: the output change per occluded pixel. It is computed
  for M_GAD = CH_GAD and for the supplementary mask M_sup = CH_orig ∧ ¬CH_GAD; the paper expects
  RS(GAD) > RS(sup).

A hull of fewer than 3 points, or of collinear points, is degenerate: its mask is the points
themselves and the image is flagged (``gad_hull_degenerate`` = 1) to be excluded from counts.
An empty mask has RS 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from engine.attribution.base import class_scores
from engine.metrics.base import perturbed_outputs
from engine.metrics.perturbation import ranking


def important_pixels(heat: Tensor, binarisation: str = "top_fraction", top_fraction: float = 0.5,
                     threshold: float = 0.1) -> Tensor:  # fmt: skip
    """Boolean (B, H, W): the top fraction q of pixels of each map (ties broken by position,
    stably; a pixel of zero heat is never important), or the pixels with heat ≥ τ·max > 0."""
    flat = heat.flatten(1)
    if binarisation == "threshold":
        return ((flat >= threshold * flat.amax(1, keepdim=True)) & (flat > 0)).view_as(heat)
    count = max(1, math.ceil(top_fraction * flat.shape[1]))
    return ((ranking(flat, "morf") < count) & (flat > 0)).view_as(heat)


def convex_hull(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """The rasterised convex hull of a boolean image's True pixels, and whether it is degenerate."""
    from skimage.morphology import convex_hull_image

    points = np.argwhere(mask)
    if len(points) < 3 or np.linalg.matrix_rank(points - points.mean(0)) < 2:
        return mask.copy(), True
    return convex_hull_image(mask), False


def occlusion_sensitivity(model: nn.Module, x: Tensor, targets: Tensor, masks: Tensor) -> Tensor:
    """|N_a(x) − N_a(x ⊙ (1 − M))| / Σ M per image (logits; 0 where M is empty)."""
    return occlusion_sensitivities(model, x, targets, [masks])[0]


@torch.no_grad()
def occlusion_sensitivities(
    model: nn.Module, x: Tensor, targets: Tensor, masks: list[Tensor]
) -> list[Tensor]:
    """:func:`occlusion_sensitivity` for each of ``masks``, the clean images scored once, every
    occluded image built for its own pass."""
    batch = x.shape[0]
    kept = [torch.ones_like(masks[0], dtype=x.dtype)] + [1 - m.to(x.dtype) for m in masks]
    kept = torch.stack(kept).flatten(0, 1).unsqueeze(1)  # (K·B, 1, H, W): row 0 … B−1 clean

    def rows(part: slice) -> Tensor:
        return x[torch.arange(part.start, part.stop, device=x.device) % batch] * kept[part]

    outputs = perturbed_outputs(model, batch * (1 + len(masks)), rows, x[0])
    logits = class_scores(outputs, targets.repeat(1 + len(masks)), "logit").view(-1, batch)
    return [(logits[0] - changed).abs() / m.flatten(1).sum(1).to(x.dtype).clamp(min=1)
            for m, changed in zip(masks, logits[1:], strict=True)]  # fmt: skip


def gad_scores(model: nn.Module, x: Tensor, targets: Tensor, gad_pixels: Tensor,
               original_pixels: Tensor) -> dict[str, Tensor]:  # fmt: skip
    """RC, RS(GAD), RS(supplementary) and the degenerate flag for each image."""
    rc, degenerate, hulls_gad, hulls_sup = [], [], [], []
    for gad, original in zip(gad_pixels.cpu().numpy(), original_pixels.cpu().numpy(), strict=True):
        hull_gad, flat_gad = convex_hull(gad)
        hull_orig, flat_orig = convex_hull(original)
        rc.append(hull_gad.sum() / max(hull_orig.sum(), 1))
        degenerate.append(float(flat_gad or flat_orig))
        hulls_gad.append(hull_gad)
        hulls_sup.append(hull_orig & ~hull_gad)
    as_tensor = lambda masks: torch.from_numpy(np.stack(masks)).to(x.device)  # noqa: E731
    sensitivity, supplementary = occlusion_sensitivities(
        model, x, targets, [as_tensor(hulls_gad), as_tensor(hulls_sup)]
    )
    return {
        "gad_rc": torch.tensor(rc, dtype=torch.float32),
        "gad_hull_degenerate": torch.tensor(degenerate),
        "gad_rs": sensitivity.cpu(),
        "gad_rs_supplementary": supplementary.cpu(),
        "gad_pixel_share": gad_pixels.flatten(1).float().mean(1).cpu(),
    }
