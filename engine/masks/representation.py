"""Representations a mask lives on: pixels, wavelets (DWT) and shearlets.

A representation turns a batch of RGB images (B, 3, H, W) into a list of coefficient tensors,
each with the colour channels in dim 1, and back. A mask has one value per coefficient position
shared by the colour channels (dim 1 of size 1), so every initialisation gets the same capacity.
Noise for deleted coefficients is drawn per coefficient group with the group's mean and std.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.runtime import input_generators

Coefficients = list[Tensor]


@dataclass
class NoiseModel:
    """Per-image statistics of each coefficient group: mean and unbiased std, shaped to
    broadcast over that group's coefficients (B, 1 or 3, ...)."""

    means: list[Tensor]
    stds: list[Tensor]
    shared_across_colours: bool = False  # ShearletX draws one noise tensor for R, G and B
    kind: str = "uniform"  # uniform: U[μ−σ, μ+σ]; gaussian: N(μ, σ²)

    def unit(
        self, coefficients: Coefficients, samples: int, generators: list[torch.Generator]
    ) -> Coefficients:
        """Standard noise u per group, shaped (B, n, C or 1, ...); image b uses its own generator.
        Uniform on [−1, 1) or standard normal; the noise itself is μ + σ·u."""
        drawn = []
        for c in coefficients:
            colours = 1 if self.shared_across_colours else c.shape[1]
            # Each image's draws fill its own contiguous block, in the order a tensor of its
            # own would get them (no copy of the (B, n, ...) tensor afterwards; 0.04 s of
            # ShearletX's step at 224²).
            device = generators[0].device if generators else c.device  # draws where drawn before
            block = torch.empty(len(generators), samples, colours, *c.shape[2:], device=device)
            for values, g in zip(block, generators, strict=True):
                if self.kind == "gaussian":
                    values.normal_(generator=g)
                else:
                    values.uniform_(-1, 1, generator=g)
            drawn.append(block.to(c))
        return drawn


def image_generators(
    seed: int, count: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per image, all seeded alike: an image gets the same draws in any batch
    (the engine's rule, :func:`~engine.runtime.input_generators`).

    The generators live on the images' device: ShearletX draws 16 × 49 × H × W noise values per
    iteration, which on a GPU would otherwise be drawn by the CPU and copied over (0.35 s of
    each 0.37 s iteration on an H100). A seed therefore gives other draws on CPU and on CUDA.
    """
    return input_generators(seed, count, device)


@dataclass
class Representation(ABC):
    """Decompose/reconstruct images; describe mask shapes, noise and StartGrad's 2-D maps."""

    name: str = field(init=False, default="")
    # Faithfulness ranks mask values within each coefficient group (wavelet subbands) or jointly.
    rank_per_group: bool = field(init=False, default=False)

    @abstractmethod
    def decompose(self, x: Tensor) -> Coefficients: ...

    @abstractmethod
    def reconstruct(self, coefficients: Coefficients) -> Tensor: ...

    def mask_shapes(self, coefficients: Coefficients) -> list[tuple[int, ...]]:
        """One mask value per coefficient position, shared across colours: dim 1 has size 1."""
        return [(c.shape[0], 1, *c.shape[2:]) for c in coefficients]

    @abstractmethod
    def noise_model(self, x: Tensor, coefficients: Coefficients, kind: str) -> NoiseModel: ...

    def map_dims(self, group: int) -> int:
        """How many trailing dims form one 2-D map for StartGrad's rank transform (default 2:
        every leading index, e.g. wavelet orientation or shearlet, is a separate map)."""
        return 2

    def output_masks(self, masks: list[Tensor]) -> list[Tensor]:
        """Masks in the layout users expect (a representation may compute in another)."""
        return masks

    def clamped_mixture(
        self, coefficients: Coefficients, masks: list[Tensor], noise: NoiseModel, unit: Coefficients
    ) -> Tensor:
        """T⁻¹(clamp(m ⊙ c + (1 − m) ⊙ (μ + σ·u_i), 0, 1)) for every image and noise sample,
        (B·n, C, H, W), rows b·n … b·n + n − 1 of image b: the obfuscation with coefficients
        clamped (ShearletX's published one). A representation may compute it fused."""
        mixed = [
            unit_clamp(torch.addcmul(((1 - m) * mean).unsqueeze(1), ((1 - m) * std).unsqueeze(1), u)
                       + (m * c).unsqueeze(1)).flatten(0, 1)
            for m, c, mean, std, u in zip(masks, coefficients, noise.means, noise.stds, unit,
                                          strict=True)
        ]  # fmt: skip
        return self.reconstruct(mixed)

    def describe(self) -> dict:
        return {"name": self.name}


def group_stats(values: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Mean and unbiased std over ``dims``, keeping them for broadcasting."""
    return values.mean(dim=dims, keepdim=True), values.std(dim=dims, keepdim=True)


class PixelRepresentation(Representation):
    """The identity: one coefficient group, the image itself."""

    def __init__(self):
        self.name = "pixel"

    def decompose(self, x: Tensor) -> Coefficients:
        return [x]

    def reconstruct(self, coefficients: Coefficients) -> Tensor:
        return coefficients[0]

    def noise_model(self, x: Tensor, coefficients: Coefficients, kind: str) -> NoiseModel:
        mean, std = group_stats(x, (1, 2, 3))  # over all pixels and channels of each image
        return NoiseModel([mean], [std], kind=kind)


class _UnitClamp(torch.autograd.Function):
    """clamp(z, 0, 1) whose gradient also passes within rounding (64 ulp) of the bounds.

    Torch's clamp passes the gradient for 0 ≤ z ≤ 1 only. A value that is exactly on a bound in
    exact arithmetic (a black pixel, a shearlet coefficient of a flat region under an all-ones
    mask) comes out of a transform as ±1e-16 (float64) or ±1e-7 (float32), so rounding, which
    differs between a batch and one image or between devices, would decide its gradient, and
    Adam's sign-like first step turns each such flip into a step of the full learning rate.
    Widening the band by the rounding tolerance makes those ties pass, always; values are the
    ordinary clamp's.
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return z.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        tolerance = 64 * torch.finfo(z.dtype).eps
        # grad where −tol < z < 1 + tol, else 0, in one pass (hardtanh's gradient is that rule)
        return torch.ops.aten.hardtanh_backward(grad, z, -tolerance, 1 + tolerance)


def unit_clamp(z: Tensor) -> Tensor:
    """clamp(z, 0, 1), with ties at the bounds broken the same way whatever the rounding."""
    return _UnitClamp.apply(z)


def obfuscate(
    representation: Representation,
    coefficients: Coefficients,
    masks: list[Tensor],
    noise: NoiseModel,
    unit: Coefficients,
    *,
    pixel_clamp: bool = True,
    coefficient_clamp: bool = False,
) -> tuple[Tensor, Tensor]:
    """x̃_i = T⁻¹(m ⊙ c + (1 − m) ⊙ (μ + σ·u_i)) for every (image, noise sample), and T⁻¹(m ⊙ c).

    ``unit`` comes from :meth:`NoiseModel.unit` (B, n, ...). Returns x̃ (B·n, C, H, W), rows
    b·n … b·n + n − 1 belonging to image b, and the kept part T⁻¹(m ⊙ c) (B, C, H, W), unclamped.
    ``coefficient_clamp`` (ShearletX code parity) clamps the mixed coefficients to [0, 1] instead
    of clamping pixels.
    """
    n = unit[0].shape[1]
    kept = representation.reconstruct([m * c for m, c in zip(masks, coefficients, strict=True)])
    if coefficient_clamp:
        return representation.clamped_mixture(coefficients, masks, noise, unit), kept
    # (1 − m) ⊙ (μ + σ·u) as one fused pass; masks and statistics broadcast over samples.
    fillers = [
        torch.addcmul(((1 - m) * mean).unsqueeze(1), ((1 - m) * std).unsqueeze(1), u)
        for m, mean, std, u in zip(masks, noise.means, noise.stds, unit, strict=True)
    ]
    # T⁻¹ is linear: T⁻¹(m⊙c) once per image, T⁻¹((1−m)⊙v) per sample (shared across colours
    # where the noise is), then add. Same value, a fraction of the transforms.
    filler = representation.reconstruct([f.flatten(0, 1) for f in fillers])
    image = (kept.unsqueeze(1) + filler.unflatten(0, (-1, n))).flatten(0, 1)
    return (unit_clamp(image) if pixel_clamp else image), kept
