"""Faithfulness as the StartGrad paper defines it: does removing what the explanation ranks first
hurt the prediction more than keeping only that?

For keep-fractions q ∈ {0, 1/(S−1), …, 1} (S = 21 steps) the ⌊qN + ½⌋ highest-ranked mask
entries are either kept (the rest replaced by noise) or replaced by noise (the rest kept), and
d(q) = (p_y(x) − p_y(x_q))² measures the damage. With AUC by the trapezoid rule over q,

    faithfulness = AUC(remove top) − AUC(keep top)

(Bükkaya et al., ICLR 2025; their code calls the two curves "insertion" and "deletion", names
swapped relative to what they do). Ranks are taken within each wavelet subband and jointly
otherwise; the noise is the representation's (StartGrad: U[μ−σ, μ+σ] of the image for pixels).
Ties are broken in a seeded random order, so a constant mask behaves as a random ranking
(faithfulness ≈ 0) rather than keeping or removing everything at once.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from engine.masks.representation import NoiseModel, obfuscate
from engine.masks.view import MaskView
from engine.metrics.base import MetricOptions, MetricSpec
from engine.metrics.cp import target_probability
from engine.runtime import max_rows_per_pass

BATCH = 64  # obfuscated images per forward pass
COEFFICIENTS_PER_CHUNK = 2**26


class FaithfulnessOptions(MetricOptions):
    steps: int = Field(21, ge=2, le=101, description="Keep-fractions from 0 to 1.")
    noise_samples: int = Field(1, ge=1, le=64, description="Noise draws averaged per fraction.")

    def model_passes(self, height: int, width: int) -> int:
        return 2 * self.steps * self.noise_samples + 1  # keep and remove curves


def rank_positions(
    values: list[Tensor], per_group: bool, generator: torch.Generator
) -> list[Tensor]:
    """Rank of every entry (0 = largest value) and its group size, for one image's mask groups;
    ties in a random order drawn from ``generator``."""

    def ranks(flat: Tensor) -> Tensor:
        order = torch.randperm(flat.numel(), generator=generator, device=generator.device)
        by_value = torch.sort(flat[order], descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order[by_value]] = torch.arange(flat.numel(), device=flat.device)
        return rank

    if per_group:
        return [ranks(v.flatten()).view(v.shape) for v in values]
    joint = ranks(torch.cat([v.flatten() for v in values]))
    parts = joint.split([v.numel() for v in values])
    return [part.view(v.shape) for part, v in zip(parts, values, strict=True)]


def faithfulness_curves(
    view: MaskView, steps: int = 21, noise_samples: int = 1
) -> dict[str, Tensor]:
    """d(q) per image for keeping and for removing the top fraction q: (B, steps) each."""
    fractions = torch.linspace(0, 1, steps)
    keep_curves, remove_curves = [], []
    for b, generator in enumerate(view.generators()):
        values = [m[b, 0] for m in view.masks]
        positions = rank_positions(values, view.representation.rank_per_group, generator)
        masks = []
        total = sum(v.numel() for v in values)
        for position, value in zip(positions, values, strict=True):
            size = value.numel() if view.representation.rank_per_group else total
            counts = torch.floor(fractions * size + 0.5).to(position.device)
            top = position[None] < counts.view(-1, *[1] * position.ndim)  # (steps, ...)
            masks.append(torch.cat([top, ~top]).unsqueeze(1).to(value.dtype))
        damage = _damage(view, b, masks, generator, noise_samples)
        keep_curves.append(damage[:steps])
        remove_curves.append(damage[steps:])
    return {
        "fractions": fractions,
        "keep_top": torch.stack(keep_curves),
        "remove_top": torch.stack(remove_curves),
    }


def _damage(
    view: MaskView, b: int, masks: list[Tensor], generator: torch.Generator, noise_samples: int
) -> Tensor:
    """(p_y(x) − p_y(x_k))² averaged over noise, for image b under every mask row k."""
    target = view.targets[b : b + 1]
    reference = target_probability(view, view.x[b : b + 1], target)
    per_row = sum(c[0].numel() for c in view.coefficients)  # bounds memory for shearlets
    images = min(BATCH, max_rows_per_pass(view.x[0].numel()))  # per forward pass
    rows_per_chunk = max(1, min(images // noise_samples, COEFFICIENTS_PER_CHUNK // per_row))
    damage = []
    for start in range(0, masks[0].shape[0], rows_per_chunk):
        chunk = [m[start : start + rows_per_chunk] for m in masks]
        rows = chunk[0].shape[0]
        coefficients = [c[b : b + 1].expand(rows, *c.shape[1:]) for c in view.coefficients]
        noise = NoiseModel(
            [m[b : b + 1].expand(rows, *m.shape[1:]) for m in view.noise.means],
            [s[b : b + 1].expand(rows, *s.shape[1:]) for s in view.noise.stds],
            view.noise.shared_across_colours,
            view.noise.kind,
        )
        unit = noise.unit(coefficients, noise_samples, [generator] * rows)
        images, _ = obfuscate(
            view.representation, coefficients, chunk, noise, unit,
            pixel_clamp=view.pixel_clamp, coefficient_clamp=view.coefficient_clamp,
        )  # fmt: skip
        kept = target_probability(view, images, target.expand(images.shape[0]))
        damage.append((reference - kept).pow(2).view(rows, noise_samples).mean(1))
    return torch.cat(damage)


def faithfulness(view: MaskView, options: FaithfulnessOptions) -> dict[str, Tensor]:
    curves = faithfulness_curves(view, options.steps, options.noise_samples)
    spacing = 1 / (options.steps - 1)
    keep = torch.trapezoid(curves["keep_top"], dx=spacing, dim=1)
    remove = torch.trapezoid(curves["remove_top"], dx=spacing, dim=1)
    return {"faithfulness": remove - keep, "auc_keep_top": keep, "auc_remove_top": remove}


FAITHFULNESS = MetricSpec(
    name="faithfulness",
    summary="AUC of the damage when the top-ranked fraction is removed minus when only it "
    "is kept (higher: the ranking matters to the model).",
    definition="Faithfulness (Bükkaya et al., ICLR 2025)",
    options=FaithfulnessOptions,
    compute=faithfulness,
    keys=("faithfulness", "auc_keep_top", "auc_remove_top"),
)
