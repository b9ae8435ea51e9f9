"""Integrated Gradients (Sundararajan et al. 2017) with quadrature rules and baselines.

IG_i(x) = (x_i − x'_i) ∫₀¹ ∂S_c(x' + α(x − x'))/∂x_i dα  ≈  (x_i − x'_i) Σ_k w_k g_i(α_k).

Completeness: Σ_i IG_i ≈ S_c(x) − S_c(x'); :func:`completeness_gap` reports the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.attribution.base import GradientFn, ScoreType, chunks, class_scores
from engine.method import Attribution, MethodError
from engine.runtime import input_generators

QuadratureRule = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]
BaselineKind = Literal["zero", "black", "mean", "blur", "uniform"]


def quadrature(rule: QuadratureRule, steps: int) -> tuple[Tensor, Tensor]:
    """Points α_k ∈ [0, 1] and weights w_k (Σ w_k = 1) of a rule with ``steps`` points.

    Every rule uses Captum's points: the Riemann points come from a float32 ``torch.linspace``,
    as Captum builds them (a float64 grid differs by one float32 step at some counts, e.g. 7,
    8, 50, 64 for the trapezoid, enough to flip a ReLU or a max-pool choice). The weights are
    Captum's too, except the trapezoid's: textbook h/2, h, …, h, h/2 with h = 1/(steps − 1),
    where Captum's are (steps − 1)/steps times these and do not sum to 1.
    """
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.tensor(0.5 * (1 + nodes)), torch.tensor(0.5 * weights)
    if steps < 2:
        raise MethodError("Riemann rules need at least 2 steps")
    intervals = {
        "riemann_left": (0.0, 1 - 1 / steps),
        "riemann_right": (1 / steps, 1.0),
        "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
        "riemann_trapezoid": (0.0, 1.0),
    }
    if rule not in intervals:
        raise MethodError(f"unknown quadrature rule {rule!r}")
    alphas = torch.linspace(*intervals[rule], steps, dtype=torch.float32).to(torch.float64)
    if rule == "riemann_trapezoid":
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
    else:
        weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    return alphas, weights


def make_baseline(
    x: Tensor,
    kind: BaselineKind | Tensor,
    *,
    blur_sigma: float = 5.0,
    seed: int = 0,
    generators: Sequence[torch.Generator] | None = None,
) -> Tensor:
    """The reference input x' for a batch x (B, C, H, W) in [0, 1] pixel space.

    ``zero``/``black``: all zeros; ``mean``: each image's mean colour; ``blur``: Gaussian blur of
    the image (σ = ``blur_sigma`` pixels); ``uniform``: U[0, 1) noise, image b's drawn on the CPU
    from ``generators[b]`` (default: :func:`~engine.runtime.input_generators` of ``seed``); or
    a given tensor (broadcast to x's shape).
    """
    if isinstance(kind, Tensor):
        return kind.to(x.device, x.dtype).expand_as(x)
    if kind in ("zero", "black"):
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).clone()
    if kind == "uniform":
        generators = generators or input_generators(seed, x.shape[0])
        noise = torch.stack([torch.rand(x.shape[1:], generator=g) for g in generators])
        return noise.to(x.device, x.dtype)
    if kind == "blur":
        return gaussian_blur(x, blur_sigma)
    raise MethodError(f"unknown baseline {kind!r}")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel, kernel radius ⌈3σ⌉ normalised to sum 1, borders
    mirrored (d c b | a b c d | c b a) as often as the radius needs: scipy.ndimage's
    ``gaussian_filter(mode="mirror", radius=⌈3σ⌉)``."""
    radius = max(1, int(np.ceil(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    out = mirror_pad(x, radius)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def mirror_pad(x: Tensor, width: int) -> Tensor:
    """Pad both spatial sides by ``width``, reflecting about the edge pixels again and again
    where ``width`` exceeds the image (a one-pixel side repeats its pixel)."""
    for dim in (-2, -1):
        remaining = width
        while remaining > 0:
            size = x.shape[dim]
            step = min(remaining, size - 1) if size > 1 else remaining
            pad = (0, 0, step, step) if dim == -2 else (step, step, 0, 0)
            x = F.pad(x, pad, mode="reflect" if size > 1 else "replicate")
            remaining -= step
    return x


class IntegratedGradients(Attribution):
    """IG along the straight path from a baseline, any gradient function, chunked over steps.

    The m·B path points are evaluated in chunks of ``internal_batch_size`` rows (Captum's
    meaning); progress is reported per chunk. Random draws (the uniform baseline, a subclass's
    path noise) come from a generator per image seeded with ``seed`` alone.
    """

    def __init__(
        self,
        gradient: GradientFn,
        baseline: BaselineKind | Tensor = "zero",
        steps: int = 50,
        rule: QuadratureRule = "gausslegendre",
        internal_batch_size: int | None = None,
        blur_sigma: float = 5.0,
        seed: int = 0,
    ):
        self.gradient = gradient
        self.baseline = baseline
        self.steps = steps
        self.rule = rule
        self.internal_batch_size = internal_batch_size
        self.blur_sigma = blur_sigma
        self.seed = seed
        self.last_baseline: Tensor | None = None

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        generators = input_generators(self.seed, x.shape[0])
        baseline = make_baseline(
            x, self.baseline, blur_sigma=self.blur_sigma, generators=generators
        )
        self.last_baseline = baseline
        alphas, weights = quadrature(self.rule, self.steps)
        alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
        batch = x.shape[0]
        delta = x - baseline
        # Row r of the flattened path is step r // B of image r % B (Captum's order).
        total_rows = self.steps * batch
        summed = torch.zeros_like(x)
        for part in chunks(total_rows, self.internal_batch_size, x[0]):
            rows = torch.arange(part.start, part.stop, device=x.device)
            step, image = rows // batch, rows % batch
            points = baseline[image] + alphas[step].view(-1, *[1] * (x.ndim - 1)) * delta[image]
            row_generators = [generators[i] for i in image.tolist()]
            grads = self.path_gradient(points, targets[image], row_generators)
            summed.index_add_(0, image, grads * weights[step].view(-1, *[1] * (x.ndim - 1)))
            self._report(part.stop, total_rows)
        return summed * delta

    def path_gradient(
        self, points: Tensor, targets: Tensor, generators: Sequence[torch.Generator]
    ) -> Tensor:
        """∂S/∂x at the path points; ``generators``: each row's image's generator, for a
        gradient estimate that draws (SmoothGrad-IG's)."""
        return self.gradient(points, targets)


@torch.no_grad()
def completeness_gap(
    model: nn.Module,
    x: Tensor,
    baseline: Tensor,
    attribution: Tensor,
    targets: Tensor,
    score: ScoreType = "logit",
) -> dict[str, Tensor]:
    """Σ IG − (S_c(x) − S_c(x')) per image, with the score difference it is compared to."""
    scores = class_scores(model(torch.cat([x, baseline])), targets.repeat(2), score)
    difference = scores[: x.shape[0]] - scores[x.shape[0] :]
    total = attribution.flatten(1).sum(1)
    return {"gap": total - difference, "score_difference": difference, "sum": total}
