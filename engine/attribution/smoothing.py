"""Noise averaging around any method: SmoothGrad, SmoothGrad², VarGrad, and SmoothGrad-IG.

With ε_j ~ N(0, σ_b² I) and σ_b = s · (max x_b − min x_b) per image (Smilkov et al. 2017):
SmoothGrad = mean_j A(x + ε_j); SmoothGrad² = mean_j A(x + ε_j)² (Hooker et al. 2019);
VarGrad = mean_j A² − (mean_j A)² (Adebayo et al. 2018). ``NoiseTunnel`` wraps any
:class:`Attribution`; ``SmoothGradIG`` is what pgig's ``sg_ig`` computes: IG whose path
gradients are SmoothGrad estimates, σ recomputed at each path point from its own range.

Image b's noise comes from its own generator seeded with the seed alone
(:func:`~engine.runtime.input_generators`), so an image gets the same noise at any position of
any batch. A method wrapped in a tunnel sees each noisy copy as an input of its own: its own
random draws (IG's uniform baseline, EG's references) are then the same for every copy of an
image, and the tunnel averages over the input noise only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from engine.attribution.base import GradientFn, chunks
from engine.attribution.integrated_gradients import IntegratedGradients
from engine.method import Attribution, ProgressFn
from engine.runtime import input_generators

SmoothingKind = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]


def noise_scale(x: Tensor, noise_level: float) -> Tensor:
    """σ_b = s · (max x_b − min x_b) for each image b, shaped to broadcast over x."""
    flat = x.flatten(1)
    sigma = noise_level * (flat.max(1).values - flat.min(1).values)
    return sigma.view(-1, *[1] * (x.ndim - 1))


def draw_noise(
    x: Tensor, samples: int, sigma: Tensor, generators: Sequence[torch.Generator]
) -> Tensor:
    """ε with shape (B·n, …): rows b·n … b·n + n − 1 belong to image b (Captum's layout) and
    are drawn from ``generators[b]``, n standard normal images in a row, times σ_b.

    Drawn on the CPU generators and moved, so a seed gives the same noise on every device.
    """
    standard = torch.cat([torch.randn((samples, *x.shape[1:]), generator=g) for g in generators])
    return standard.to(x.device, x.dtype) * sigma.repeat_interleave(samples, dim=0)


def aggregate(values: Tensor, samples: int, kind: SmoothingKind) -> Tensor:
    """Reduce (B·n, …) per-sample attributions to (B, …)."""
    grouped = values.view(-1, samples, *values.shape[1:])
    mean = grouped.mean(1)
    if kind == "smoothgrad":
        return mean
    mean_sq = (grouped**2).mean(1)
    if kind == "smoothgrad_sq":
        return mean_sq
    return mean_sq - mean**2


class NoiseTunnel(Attribution):
    """Average a method over noisy copies of the input (any :class:`Attribution`)."""

    def __init__(
        self,
        method: Attribution,
        kind: SmoothingKind = "smoothgrad",
        samples: int = 25,
        noise_level: float = 0.15,
        batch_size: int | None = None,
        seed: int = 0,
    ):
        self.method = method
        self.kind = kind
        self.samples = samples
        self.noise_level = noise_level
        self.batch_size = batch_size  # noisy copies per inner call (None: all at once)
        self.seed = seed
        self.noise: Tensor | None = None  # injected noise (B·n, …) replaces the random draw

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        noise = self.noise
        if noise is None:
            sigma = noise_scale(x, self.noise_level)
            noise = draw_noise(x, self.samples, sigma, input_generators(self.seed, x.shape[0]))
        noisy = x.repeat_interleave(self.samples, dim=0) + noise
        noisy_targets = targets.repeat_interleave(self.samples)
        parts, rows = [], noisy.shape[0]
        self._per_row = 1  # progress units per noisy row: the wrapped method's, once it reports
        for part in chunks(rows, self.batch_size, x[0]):
            self.method.progress = self._within(part, rows)
            parts.append(self.method.attribute(noisy[part], noisy_targets[part]))
            self._report(part.stop * self._per_row, rows * self._per_row)
        return aggregate(torch.cat(parts), self.samples, self.kind)

    def _within(self, part: slice, rows: int) -> ProgressFn:
        """The wrapped method's progress on the noisy rows ``part``, in its own units (IG: path
        points), as progress over all ``rows``: a long inner call reports, and can be stopped."""

        def report(done: int, total: int, **_: object) -> None:
            self._per_row = max(1, total // (part.stop - part.start))
            self._report(part.start * self._per_row + done, rows * self._per_row)

        return report


class SmoothGradIG(IntegratedGradients):
    """IG whose path gradient at each point p is a SmoothGrad estimate,
    ∇̃S(p) = mean_j ∇S(p + ε_j) with ε_j ~ N(0, σ_p² I), σ_p = s · (max p − min p).

    Image b's path points are evaluated in path order, so its generator draws the noise of
    step 0, then step 1, …: the same draws in any batch and any chunking of the path.
    """

    def __init__(self, gradient: GradientFn, samples: int = 25, noise_level: float = 0.15, **path):
        super().__init__(gradient, **path)
        self.samples = samples
        self.noise_level = noise_level

    def path_gradient(
        self, points: Tensor, targets: Tensor, generators: Sequence[torch.Generator]
    ) -> Tensor:
        noise = draw_noise(points, self.samples, noise_scale(points, self.noise_level), generators)
        noisy = points.repeat_interleave(self.samples, dim=0) + noise
        grads = self.gradient(noisy, targets.repeat_interleave(self.samples))
        return aggregate(grads, self.samples, "smoothgrad")
