"""Perturbation metrics of the gradient-method papers: how the output changes as the pixels an
explanation ranks are removed. Rankings use the explanation's pixel heat map (the heat-map
reduction of the request; pgig ranked the signed channel sum).

- **Degradation** (pgig, after Samek et al. 2017; specs §2.1): the image is cut into p×p patches
  ranked by their mean heat; at step t the t highest-ranked patches (MoRF), the t lowest (LeRF)
  or t random ones are replaced by their own per-channel mean, for t = 0 … T. The curve of the
  target's softmax probability is summarised by its normalised AUC, the trapezoid over [0, 1].
  MoRF: lower is better; LeRF: higher is better. Step t removes ranks 0 … t−1 (pgig removed rank
  t, never the top patch) and every pixel of a removed patch is replaced, whatever its value
  (pgig wrote only where the mean was > 0).
- **Pixel perturbation** (Srinivas & Fleuret 2019; specs §2.2): remove the fraction k of *least*
  salient pixels and report |S_c(x̃) − S_c(x)| / |S_c(x)| (logit by default); lower is better,
  compared with the same number of random pixels.
- **Sensitivity-n** (Ancona et al., ICLR 2018; specs §2.3): for each n of a log-spaced grid,
  N random feature subsets S with |S| = n are set to the baseline; the Pearson correlation over
  the subsets between Σ_{i∈S} R_i and S_c(x) − S_c(x_{S=x'}) is the score at n.

Random orders and subsets are drawn per image, on the CPU, from a generator seeded with the
seed alone (:func:`~engine.runtime.input_generators`): an image's scores do not depend on the
batch it is scored in, nor on the device. Perturbed images are built pass by pass and go through
the model in passes of the process's rows per pass (:func:`~engine.metrics.base.perturbed_outputs`);
rows every curve shares (the clean image of step 0) are computed once.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from engine.attribution.base import ScoreType, class_scores
from engine.masks.view import MaskView
from engine.metrics.base import (
    MetricOptions,
    MetricSpec,
    outputs_of,
    perturbed_outputs,
    pixel_heatmap,
)
from engine.runtime import input_generators

Order = Literal["morf", "lerf", "random"]
ORDERS: tuple[Order, ...] = ("morf", "lerf", "random")
Fill = Literal["channel_mean", "black"]


@torch.no_grad()
def scores_of(model: nn.Module, images: Tensor, targets: Tensor, score: ScoreType) -> Tensor:
    """S_c of each image, in passes of the process's rows per pass."""
    outputs = outputs_of(model, images)
    return class_scores(outputs, targets, score)


def patch_ids(height: int, width: int, patch: int, device=None) -> tuple[Tensor, int]:
    """The patch index of every pixel (H·W,) on a ⌈H/p⌉×⌈W/p⌉ grid, and the patch count."""
    columns = math.ceil(width / patch)
    rows = torch.arange(height, device=device) // patch
    cols = torch.arange(width, device=device) // patch
    return (rows[:, None] * columns + cols[None, :]).flatten(), math.ceil(height / patch) * columns


def patch_means(values: Tensor, ids: Tensor, count: int) -> Tensor:
    """Mean of (B, C, H·W) values over each patch → (B, C, P)."""
    sums = torch.zeros(*values.shape[:2], count, dtype=values.dtype, device=values.device)
    sizes = torch.bincount(ids, minlength=count).to(values.dtype)
    return sums.index_add_(2, ids, values) / sizes


def ranking(values: Tensor, order: Order, seed: int = 0) -> Tensor:
    """(B, F) → rank of each feature (0 removed first): by descending value (MoRF), ascending
    (LeRF) or random (row b's order from its own generator of ``seed``); ties broken by
    position."""
    if order == "random":
        generators = input_generators(seed, values.shape[0])
        keys = torch.stack([torch.rand(values.shape[1:], generator=g) for g in generators])
        keys = keys.to(values.device)
    else:
        keys = -values if order == "morf" else values
    return inverse_permutation(torch.argsort(keys, dim=1, stable=True))


def inverse_permutation(positions: Tensor) -> Tensor:
    """rank[..., positions[..., i]] = i: the argsort of a permutation, in one scatter."""
    indices = torch.arange(positions.shape[-1], device=positions.device).expand_as(positions)
    return torch.empty_like(positions).scatter_(-1, positions, indices)


def normalised_auc(curve: Tensor) -> Tensor:
    """Trapezoid over an x-axis of [0, 1] with the curve's points evenly spaced: (B, T+1) → (B,)."""
    if curve.shape[1] == 1:
        return curve[:, 0]
    return (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / (curve.shape[1] - 1)


def degradation_curve(model: nn.Module, x: Tensor, targets: Tensor, heat: Tensor, *,
                      patch: int = 9, steps: int | None = None, order: Order = "morf",
                      score: ScoreType = "softmax", seed: int = 0) -> Tensor:  # fmt: skip
    """S_c after removing 0 … T patches in ``order`` (B, T+1); T = all patches by default."""
    return degradation_curves(model, x, targets, heat, patch=patch, steps=steps, orders=(order,),
                              score=score, seed=seed)[order]  # fmt: skip


@torch.no_grad()
def degradation_curves(model: nn.Module, x: Tensor, targets: Tensor, heat: Tensor, *,
                       patch: int = 9, steps: int | None = None,
                       orders: tuple[Order, ...] = ORDERS, score: ScoreType = "softmax",
                       seed: int = 0) -> dict[Order, Tensor]:  # fmt: skip
    """S_c after removing 0 … T patches (B, T+1), for each of ``orders``.

    Image b's rows are its clean image (step 0 of every curve, scored once), then steps 1 … T
    of each order: 1 + |orders|·T rows per image, built pass by pass."""
    batch, _, height, width = x.shape
    ids, count = patch_ids(height, width, patch, x.device)
    steps = count if steps is None else min(steps, count)
    fill = patch_means(x.flatten(2), ids, count)[:, :, ids].view_as(x)
    patch_heat = patch_means(heat.flatten(1)[:, None], ids, count)[:, 0]
    ranks = torch.stack([ranking(patch_heat, order, seed) for order in orders], 1)  # (B, O, P)
    per_image = 1 + len(orders) * steps

    def rows(part: slice) -> Tensor:
        index = torch.arange(part.start, part.stop, device=x.device)
        image, row = index // per_image, index % per_image
        curve = (row - 1).clamp(min=0) // steps
        step = torch.where(row > 0, (row - 1) % steps + 1, 0)
        removed = (ranks[image, curve] < step[:, None])[:, ids].view(-1, 1, height, width)
        return torch.where(removed, fill[image], x[image])

    outputs = perturbed_outputs(model, batch * per_image, rows, x[0])
    scores = class_scores(outputs, targets.repeat_interleave(per_image), score)
    scores = scores.view(batch, 1, per_image)
    clean, curves = scores[..., 0], scores[..., 1:].unflatten(2, (len(orders), steps))[:, 0]
    return {order: torch.cat([clean, curves[:, i]], 1) for i, order in enumerate(orders)}


def fill_values(x: Tensor, fill: Fill) -> Tensor:
    if fill == "black":
        return torch.zeros_like(x)
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def pixel_perturbation(model: nn.Module, x: Tensor, targets: Tensor, heat: Tensor, *,
                       fraction: float = 0.1, fill: Fill = "channel_mean",
                       order: Order = "lerf", score: ScoreType = "logit",
                       seed: int = 0) -> Tensor:  # fmt: skip
    """|S_c(x̃) − S_c(x)| / |S_c(x)| with the ⌊k·H·W⌉ least salient (``lerf``) or random pixels
    replaced; (B,)."""
    return pixel_perturbations(model, x, targets, heat, fraction=fraction, fill=fill,
                               orders=(order,), score=score, seed=seed)[order]  # fmt: skip


def pixel_perturbations(model: nn.Module, x: Tensor, targets: Tensor, heat: Tensor, *,
                        fraction: float = 0.1, fill: Fill = "channel_mean",
                        orders: tuple[Order, ...] = ("lerf", "random"), score: ScoreType = "logit",
                        seed: int = 0) -> dict[Order, Tensor]:  # fmt: skip
    """:func:`pixel_perturbation` for each of ``orders``, the clean images scored once."""
    count = round(fraction * heat[0].numel())
    replacement = fill_values(x, fill)
    perturbed = [
        torch.where((ranking(heat.flatten(1), order, seed) < count).view_as(heat)[:, None],
                    replacement, x)
        for order in orders
    ]  # fmt: skip
    scores = scores_of(model, torch.cat([x, *perturbed]), targets.repeat(1 + len(orders)), score)
    clean, *changed = scores.chunk(1 + len(orders))
    change = [(c - clean).abs() / clean.abs().clamp(min=1e-12) for c in changed]
    return dict(zip(orders, change, strict=True))


def sensitivity_grid(features: int, points: int = 6, max_fraction: float = 0.8) -> list[int]:
    """Log-spaced subset sizes n from 1 to max_fraction · features (distinct integers)."""
    top = max(1, int(max_fraction * features))
    return sorted({round(n) for n in np.geomspace(1, top, points)})


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Correlation along the last axis; 0 where either side is constant."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(denominator > 0, (a * b).sum(-1) / denominator.clamp(min=1e-30), 0.0)


def sensitivity_n(model: nn.Module, x: Tensor, targets: Tensor, heat: Tensor, grid: list[int], *,
                  subsets: int = 64, patch: int = 1, score: ScoreType = "logit",
                  seed: int = 0) -> Tensor:  # fmt: skip
    """Pearson correlation per image and per n of ``grid`` (B, len(grid)); baseline 0 (black),
    features = p×p patches (R summed over each); image b's subsets from its own generator."""
    batch, _, height, width = x.shape
    ids, count = patch_ids(height, width, patch, x.device)
    relevance = patch_means(heat.flatten(1)[:, None], ids, count)[:, 0]
    relevance = relevance * torch.bincount(ids, minlength=count).to(relevance)  # sums per patch
    sizes = torch.tensor(grid, device=x.device).view(-1, 1, 1)
    chosen = []  # (G·N, F) per image: the features set to the baseline
    for generator in input_generators(seed, batch):
        keys = torch.rand(len(grid), subsets, count, generator=generator).to(x.device)
        chosen.append((inverse_permutation(torch.argsort(keys, dim=-1)) < sizes).flatten(0, 1))
    chosen = torch.stack(chosen)  # (B, G·N, F)
    per_image = 1 + len(grid) * subsets  # the clean image, then every subset

    def rows(part: slice) -> Tensor:
        index = torch.arange(part.start, part.stop, device=x.device)
        image, row = index // per_image, index % per_image
        zeroed = chosen[image, (row - 1).clamp(min=0)][:, ids] & (row > 0)[:, None]
        return torch.where(zeroed.view(-1, 1, height, width), 0.0, x[image])

    outputs = perturbed_outputs(model, batch * per_image, rows, x[0])
    scores = class_scores(outputs, targets.repeat_interleave(per_image), score)
    scores = scores.view(batch, per_image)
    drops = scores[:, :1] - scores[:, 1:]
    sums = (chosen * relevance[:, None]).sum(-1)
    return pearson(sums.view(batch, len(grid), subsets), drops.view(batch, len(grid), subsets))


class DegradationOptions(MetricOptions):
    patch: int = Field(9, ge=1, le=64, description="Patch side p in pixels (pgig: 9).")
    fraction: float = Field(
        0.16, gt=0, le=1, description="Share of patches removed by the last step (pgig: 16%)."
    )

    def model_passes(self, height: int, width: int) -> int:
        patches = math.ceil(height / self.patch) * math.ceil(width / self.patch)
        return 1 + len(ORDERS) * math.ceil(self.fraction * patches)  # step 0 shared by curves


def _degradation(view: MaskView, options: DegradationOptions) -> dict[str, Tensor]:
    heat, (height, width) = pixel_heatmap(view), view.x.shape[-2:]
    count = patch_ids(height, width, options.patch)[1]
    steps = max(1, math.ceil(options.fraction * count))
    curves = degradation_curves(view.model, view.x, view.targets, heat, patch=options.patch,
                                steps=steps, seed=view.seed)  # fmt: skip
    return {f"degradation_{order}": normalised_auc(curve) for order, curve in curves.items()}


class PixelPerturbationOptions(MetricOptions):
    fraction: float = Field(0.1, gt=0, lt=1, description="Share k of least salient pixels.")
    fill: Fill = Field("channel_mean", description="Replacement: the image's mean colour or 0.")

    def model_passes(self, height: int, width: int) -> int:
        return 3  # the clean input, and the salient-order and random-order perturbations


def _pixel_perturbation(view: MaskView, options: PixelPerturbationOptions) -> dict[str, Tensor]:
    changes = pixel_perturbations(
        view.model, view.x, view.targets, pixel_heatmap(view), fraction=options.fraction,
        fill=options.fill, seed=view.seed,
    )  # fmt: skip
    return {"pixel_perturbation": changes["lerf"], "pixel_perturbation_random": changes["random"]}


class SensitivityOptions(MetricOptions):
    points: int = Field(6, ge=1, le=32, description="Subset sizes n on a log grid.")
    subsets: int = Field(64, ge=3, le=1000, description="Random subsets N per n.")
    max_fraction: float = Field(0.8, gt=0, le=1, description="Largest n as a share of features.")
    patch: int = Field(1, ge=1, le=64, description="Feature = p×p pixel patch.")

    def model_passes(self, height: int, width: int) -> int:
        return self.points * self.subsets + 1


def _sensitivity_n(view: MaskView, options: SensitivityOptions) -> dict[str, Tensor]:
    height, width = view.x.shape[-2:]
    features = patch_ids(height, width, options.patch)[1]
    grid = sensitivity_grid(features, options.points, options.max_fraction)
    correlations = sensitivity_n(
        view.model, view.x, view.targets, pixel_heatmap(view), grid, subsets=options.subsets,
        patch=options.patch, seed=view.seed,
    )  # fmt: skip
    return {"sensitivity_n": correlations.mean(1)}


DEGRADATION = MetricSpec(
    name="degradation",
    summary="Normalised AUC of the target probability as the most (MoRF), least (LeRF) or "
    "randomly ranked patches are replaced by their mean (MoRF: lower is better).",
    definition="Degradation test (pgig, Schwarzenberg & Castle 2020; Samek et al. 2017)",
    options=DegradationOptions,
    compute=_degradation,
    keys=("degradation_morf", "degradation_lerf", "degradation_random"),
)
PIXEL_PERTURBATION = MetricSpec(
    name="pixel_perturbation",
    summary="Fractional logit change when the least salient fraction of pixels is removed "
    "(lower is better), and for as many random pixels.",
    definition="Pixel perturbation (Srinivas & Fleuret, NeurIPS 2019)",
    options=PixelPerturbationOptions,
    compute=_pixel_perturbation,
    keys=("pixel_perturbation", "pixel_perturbation_random"),
)
SENSITIVITY_N = MetricSpec(
    name="sensitivity_n",
    summary="Mean over a log grid of n of the correlation between the attribution summed "
    "over n random features and the logit drop when they are zeroed (higher is better).",
    definition="Sensitivity-n (Ancona et al., ICLR 2018)",
    options=SensitivityOptions,
    compute=_sensitivity_n,
    keys=("sensitivity_n",),
)
