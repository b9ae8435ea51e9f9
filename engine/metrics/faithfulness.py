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

from engine.attribution.base import class_scores
from engine.masks.representation import NoiseModel, obfuscate
from engine.masks.view import MaskView
from engine.metrics.base import MetricOptions, MetricSpec, perturbed_outputs
from engine.metrics.cp import target_probability

COEFFICIENTS_PER_CHUNK = 2**26  # mask rows per pass × coefficients per row at most


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
    """d(q) per image for keeping and for removing the top fraction q: (B, steps) each.

    Every image's 2·steps mask rows (keep, then remove) form one stream of rows, each obfuscated
    with ``noise_samples`` draws from its image's generator (ranks drawn first, then the noise
    row by row) and built only for the pass it goes through the model in: an image's scores do
    not depend on its batch nor on the rows per pass."""
    fractions = torch.linspace(0, 1, steps)
    generators = view.generators()
    masks = [_mask_rows(view, b, g, fractions) for b, g in enumerate(generators)]
    masks = [torch.cat(group) for group in zip(*masks, strict=True)]  # per group (B·2S, 1, ...)
    per_image = 2 * steps
    reference = target_probability(view, view.x, view.targets)

    def rows(part: slice) -> Tensor:
        image = torch.arange(part.start, part.stop, device=view.x.device) // per_image
        coefficients = [c[image] for c in view.coefficients]
        noise = NoiseModel([m[image] for m in view.noise.means],
                           [s[image] for s in view.noise.stds],
                           view.noise.shared_across_colours, view.noise.kind)  # fmt: skip
        # Row by row, every group of a row before the next row: draws independent of the passes.
        draws = [view.noise.unit([c[b : b + 1] for c in view.coefficients], noise_samples,
                                 [generators[b]]) for b in image.tolist()]  # fmt: skip
        unit = [torch.cat(group) for group in zip(*draws, strict=True)]
        images, _ = obfuscate(
            view.representation, coefficients, [m[part] for m in masks], noise, unit,
            pixel_clamp=view.pixel_clamp, coefficient_clamp=view.coefficient_clamp,
        )  # fmt: skip
        return images

    per_row = sum(c[0].numel() for c in view.coefficients)  # bounds memory for shearlets
    outputs = perturbed_outputs(view.model, len(view.x) * per_image, rows, view.x[0],
                                rows_each=noise_samples,
                                most=max(1, COEFFICIENTS_PER_CHUNK // per_row))  # fmt: skip
    targets = view.targets.repeat_interleave(per_image * noise_samples)
    kept = class_scores(outputs, targets, "softmax").view(len(view.x), per_image, noise_samples)
    damage = (reference[:, None, None] - kept).pow(2).mean(2)
    return {"fractions": fractions, "keep_top": damage[:, :steps], "remove_top": damage[:, steps:]}


def _mask_rows(
    view: MaskView, b: int, generator: torch.Generator, fractions: Tensor
) -> list[Tensor]:
    """Image b's masks per coefficient group (2·steps, 1, ...): the top fraction q kept (rows
    0 … steps−1), then removed."""
    values = [m[b, 0] for m in view.masks]
    positions = rank_positions(values, view.representation.rank_per_group, generator)
    total = sum(v.numel() for v in values)
    masks = []
    for position, value in zip(positions, values, strict=True):
        size = value.numel() if view.representation.rank_per_group else total
        counts = torch.floor(fractions * size + 0.5).to(position.device)
        top = position[None] < counts.view(-1, *[1] * position.ndim)  # (steps, ...)
        masks.append(torch.cat([top, ~top]).unsqueeze(1).to(value.dtype))
    return masks


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
