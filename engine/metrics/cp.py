"""Conciseness-preciseness (CP) scores: kept class evidence per unit of kept information.

Two published definitions, kept apart by name:

- ShearletX (Kolek et al., CVPR 2023, Fig. 4): CP = [p_max(Ê)/p_max(x)] / [I(explanation)/I(x)]
  with Ê = E / max E the max-normalised explanation image and p_max the largest class
  probability. I is Σ|m ⊙ c| (``cp_l1_sx``, representation coefficients; pixel masks: Σ|Ê|),
  Σ|Ê| (``cp_l1_pixel_sx``), or the entropy H(q), q_i = |c_i|²/Σ|c_j|² (``cp_entropy_sx``).
- StartGrad (Bükkaya et al., ICLR 2025): r = mean_i p_y(x̃_i)/p_y(x) over noisy obfuscations
  x̃_i (``retained_probability_sg``), CP-ℓ1 = r / (Σ|m ⊙ c| / Σ|c|) (``cp_l1_sg``) and
  CP-pixel = r / (Σ|clamp(T⁻¹(m ⊙ c), 0, 1)| / Σ|x|) (``cp_pixel_sg``). For a gradient method
  the mask is the normalised heat map, so r is measured (the original code set it to 1).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from engine.attribution.base import class_scores
from engine.masks.representation import obfuscate
from engine.masks.view import TINY, MaskView, l1_share, pixel_share
from engine.metrics.base import MetricOptions, MetricSpec, outputs_of


def entropy(values: list[Tensor]) -> Tensor:
    """H = −Σ q_i log(q_i + 1e-7), q_i = |v_i|² / Σ_j |v_j|², jointly over all tensors."""
    energy = torch.cat([v.flatten(1).pow(2) for v in values], dim=1)
    q = energy / energy.sum(1, keepdim=True).clamp_min(TINY)
    return -(q * torch.log(q + 1e-7)).sum(1)


def max_probability(view: MaskView, images: Tensor) -> Tensor:
    """max_c p_c of each image, in passes of at most the process's rows per pass."""
    outputs = outputs_of(view.model, images)
    return outputs.softmax(1).amax(1)


def target_probability(view: MaskView, images: Tensor, targets: Tensor) -> Tensor:
    """p_y of each image for its target, in passes of at most the process's rows per pass (256
    noisy copies at once held 4.6 GB at 224²)."""
    outputs = outputs_of(view.model, images)
    return class_scores(outputs, targets, "softmax")


def max_normalised(image: Tensor) -> Tensor:
    peak = image.flatten(1).amax(1).clamp_min(TINY)
    return image / peak.view(-1, *[1] * (image.ndim - 1))


def cp_shearletx(view: MaskView, options: MetricOptions) -> dict[str, Tensor]:
    x = view.x
    normalised = max_normalised(view.explanation())
    explained, original = max_probability(view, torch.cat([normalised, x])).chunk(2)
    retained = explained / original
    pixel = pixel_share(normalised, x)
    if view.representation.name == "pixel":
        l1, information = pixel, entropy([normalised]) / entropy([x])
    else:
        l1 = l1_share(view.masks, view.coefficients)
        kept = [m * c for m, c in zip(view.masks, view.coefficients, strict=True)]
        information = entropy(kept) / entropy(view.coefficients)
    return {
        "cp_l1_sx": retained / l1,
        "cp_l1_pixel_sx": retained / pixel,
        "cp_entropy_sx": retained / information.clamp_min(TINY),
    }


class StartGradCPOptions(MetricOptions):
    noise_samples: int = Field(16, ge=1, le=256, description="Noisy obfuscations averaged in r.")

    def model_passes(self, height: int, width: int) -> int:
        return self.noise_samples + 1


def retained_probability(view: MaskView, noise_samples: int) -> tuple[Tensor, Tensor]:
    """r = mean_i p_y(x̃_i) / p_y(x) per image (fills drawn from the view's noise model, i.e. a
    mask method's own), and the kept image T⁻¹(m ⊙ c)."""
    unit = view.noise.unit(view.coefficients, noise_samples, view.generators())
    images, kept = obfuscate(
        view.representation, view.coefficients, view.masks, view.noise, unit,
        pixel_clamp=view.pixel_clamp, coefficient_clamp=view.coefficient_clamp,
    )  # fmt: skip
    # Each image's row, then its noisy rows: the original is scored in a pass with its copies.
    rows = torch.cat([view.x[:, None], images.unflatten(0, (-1, noise_samples))], 1).flatten(0, 1)
    p = target_probability(view, rows, view.targets.repeat_interleave(1 + noise_samples))
    p = p.view(-1, 1 + noise_samples)
    return (p[:, 1:] / p[:, :1]).mean(1), kept


def cp_startgrad(view: MaskView, options: StartGradCPOptions) -> dict[str, Tensor]:
    retained, kept = retained_probability(view, options.noise_samples)
    return {
        "retained_probability_sg": retained,
        "cp_l1_sg": retained / l1_share(view.masks, view.coefficients),
        "cp_pixel_sg": retained / pixel_share(kept.clamp(0, 1), view.x),
    }


CP_SHEARLETX = MetricSpec(
    name="cp_shearletx",
    summary="CP-ℓ1, CP-ℓ1-pixel and CP-entropy: largest class probability of the "
    "max-normalised explanation per unit of kept information.",
    definition="ShearletX CP scores (Kolek et al., CVPR 2023, Fig. 4)",
    options=MetricOptions,
    compute=cp_shearletx,
    keys=("cp_l1_sx", "cp_l1_pixel_sx", "cp_entropy_sx"),
)
CP_STARTGRAD = MetricSpec(
    name="cp_startgrad",
    summary="Retained target probability over noisy obfuscations, and CP-ℓ1 / CP-pixel: "
    "that retention per unit of kept coefficients / pixels.",
    definition="StartGrad CP scores (Bükkaya et al., ICLR 2025)",
    options=StartGradCPOptions,
    compute=cp_startgrad,
    keys=("retained_probability_sg", "cp_l1_sg", "cp_pixel_sg"),
)
