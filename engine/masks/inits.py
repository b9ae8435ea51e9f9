"""Mask initialisations: ones, zeros, constant, uniform, and StartGrad with its variants.

StartGrad (Bükkaya et al., "Start Smart", ICLR 2025): the gradient of the class score with
respect to the coefficients the mask lives on, |·|, max over colour channels, then a rank
transform to [0, 1] within every 2-D map (per wavelet sub-band and orientation, per shearlet):
m₀ = rank / (N − 1), so each map starts uniform in rank. Ties are treated as the spec's reference
(scikit-learn's ``QuantileTransformer(output_distribution='uniform')`` with one quantile per
value) treats them: the values equal to the map's smallest get 0 and those equal to its largest
get 1 (a map of equal values: 0), every other group of equal values the mean of their ranks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from engine.attribution.base import ScoreType, class_scores
from engine.attribution.smoothing import noise_scale
from engine.masks.representation import Coefficients, Representation

InitKind = Literal[
    "ones", "zeros", "constant", "uniform", "startgrad", "startgrad_smoothgrad",
    "startgrad_grad_x_input",
]  # fmt: skip


def rank_transform(values: Tensor, map_dims: int = 2) -> Tensor:
    """Empirical CDF within each map of the last ``map_dims`` dims: rank/(N−1) (ranks from 0),
    ties averaged, except the ties at the map's bounds: every value equal to its minimum is 0
    and every value equal to its maximum is 1, as in scikit-learn's QuantileTransformer with
    n_quantiles = N (which clips the bounds; its 1e-7 tolerance around them is not copied)."""
    shape = values.shape
    flat = values.reshape(-1, int(torch.tensor(shape[-map_dims:]).prod()))
    rows, n = flat.shape
    ordered, order = flat.sort(dim=1)
    # Groups of equal values get the mean of their positions.
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(1) - 1 + torch.arange(rows, device=values.device)[:, None] * n
    positions = torch.arange(n, device=values.device, dtype=torch.float64).expand(rows, n)
    total = torch.zeros(rows * n, dtype=torch.float64, device=values.device)
    count = torch.zeros(rows * n, dtype=torch.float64, device=values.device)
    total.index_add_(0, group.flatten(), positions.flatten())
    count.index_add_(
        0, group.flatten(), torch.ones(rows * n, dtype=torch.float64, device=values.device)
    )
    average = (total[group.flatten()] / count[group.flatten()]).view(rows, n)
    ranks = torch.empty_like(average).scatter_(1, order, average) / max(n - 1, 1)
    ranks = ranks.masked_fill(flat == ordered[:, -1:], 1.0)  # then the minimum: an even map is 0
    ranks = ranks.masked_fill(flat == ordered[:, :1], 0.0)
    return ranks.to(values.dtype).view(shape)


def coefficient_gradients(
    model: nn.Module,
    representation: Representation,
    coefficients: Coefficients,
    targets: Tensor,
    score: ScoreType,
) -> list[Tensor]:
    """∂S/∂c for every coefficient group, reconstructing without clamping."""
    leaves = [c.detach().requires_grad_(True) for c in coefficients]
    with torch.enable_grad():
        image = representation.reconstruct(leaves)
        scores = class_scores(model(image), targets, score)
        return list(torch.autograd.grad(scores.sum(), leaves))


def startgrad(
    model: nn.Module,
    representation: Representation,
    coefficients: Coefficients,
    targets: Tensor,
    variant: InitKind = "startgrad",
    score: ScoreType = "logit",
    samples: int = 10,
    noise_level: float = 0.15,
    generators: list[torch.Generator] | None = None,
) -> list[Tensor]:
    """StartGrad masks, one per coefficient group, shaped (B, 1, ...)."""
    if variant == "startgrad_smoothgrad":
        image = representation.reconstruct(coefficients)
        sigma = noise_scale(image, noise_level)
        total = [torch.zeros_like(c) for c in coefficients]
        for _ in range(samples):
            noise = torch.stack(
                [torch.randn(image.shape[1:], generator=g, device=g.device) for g in generators]
            ).to(image)
            noisy = representation.decompose(image + noise * sigma)
            grads = coefficient_gradients(model, representation, noisy, targets, score)
            total = [t + g.abs() for t, g in zip(total, grads, strict=True)]
        magnitudes = [t / samples for t in total]
    else:
        grads = coefficient_gradients(model, representation, coefficients, targets, score)
        if variant == "startgrad_grad_x_input":
            grads = [g * c for g, c in zip(grads, coefficients, strict=True)]
        magnitudes = [g.abs() for g in grads]
    return [
        rank_transform(m.amax(dim=1, keepdim=True), representation.map_dims(i))
        for i, m in enumerate(magnitudes)
    ]


def initial_masks(
    kind: InitKind,
    shapes: list[tuple[int, ...]],
    like: Tensor,
    *,
    constant: float = 0.5,
    generators: list[torch.Generator] | None = None,
    startgrad_masks: list[Tensor] | None = None,
) -> list[Tensor]:
    """The starting masks (values in [0, 1]) with ``like``'s device and dtype, one tensor per
    coefficient group."""
    place = {"device": like.device, "dtype": like.dtype}
    if kind == "ones":
        return [torch.ones(s, **place) for s in shapes]
    if kind == "zeros":
        return [torch.zeros(s, **place) for s in shapes]
    if kind == "constant":
        return [torch.full(s, float(constant), **place) for s in shapes]
    if kind == "uniform":
        # Per-image generators: an image gets the same draw alone or in a batch.
        return [
            torch.stack([torch.rand(s[1:], generator=g, device=g.device) for g in generators]).to(
                **place
            )
            for s in shapes
        ]
    if startgrad_masks is None:
        raise ValueError(f"init {kind!r} needs the StartGrad masks")
    return [m.to(**place) for m in startgrad_masks]
