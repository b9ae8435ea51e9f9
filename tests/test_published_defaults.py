"""Mask methods default to the published methods: the option defaults are the papers', and
ShearletX equals an independent re-derivation of the authors' obfuscation and loop.

The re-derivation below follows spec mask_methods.md §2.5 literally, in pyShearLab's layout:
filters from pyShearLab itself, complex FFTs with the centring shifts, one mask per coefficient
(K, H, W), noise μ_k + σ_k·u per shearlet from the grey coefficients shared by R, G and B, the
mixed coefficients clamped to [0, 1] and no pixel clamp, loss (1 − p_y)² + λ₁ mean|m| +
λ₂ Σ|clamp(rec(m ⊙ c_grey), 0, 1)|/(HW), Adam with projection to [0, 1]. It shares no code with
engine/masks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io

import numpy as np
import pytest
import torch

from engine import explain
from engine.catalogue import get_method
from engine.data import load_image
from engine.masks.representation import NoiseModel, obfuscate
from engine.masks.shearlet import ShearletRepresentation

# The ShearletX paper's experiments (Kolek et al., CVPR 2023; spec mask_methods.md §2):
# Adam lr 0.1, 300 steps, 16 uniform noise samples, all-ones init, distortion towards 1.
SHARED = {
    "iterations": 300,
    "learning_rate": 0.1,
    "noise_samples": 16,
    "noise": "uniform",
    "init": "ones",
    "distortion": "one",
    "normalize_gradient": False,
    "pixel_clamp": True,
}
PUBLISHED = {
    "pixelmask": {**SHARED, "l1": 1.0, "tv": 0.0},  # "pixel mask, not regularised"
    "smoothmask": {**SHARED, "l1": 1.0, "tv": 300.0},  # SX imagenet_utils PixelRDE setting
    "cartoonx": {**SHARED, "l1": 1.0, "wave": "db3", "levels": 5, "mode": "zero"},
    "waveletx": {**SHARED, "l1": 2.0, "energy": 10.0, "wave": "db3", "levels": 5, "mode": "zero"},
    "shearletx": {**SHARED, "l1": 1.0, "energy": 2.0, "scales": 4, "coefficient_clamp": True},
}


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_default_options_are_the_published_ones(method):
    defaults = get_method(method).parse_options({}).model_dump()
    for name, value in PUBLISHED[method].items():
        assert defaults[name] == value, (method, name, defaults[name], value)


# --- an independent ShearletX ---------------------------------------------------------------


def pyshearlab_system(size: int, scales: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ψ̂ (K, H, W) and Σ_k ψ̂_k² (H, W) from pyShearLab, float64, centred frequencies."""
    from pyshearlab_mind import SLgetShearletSystem2D

    with contextlib.redirect_stdout(io.StringIO()):
        system = SLgetShearletSystem2D(0, size, size, scales)
    filters = torch.from_numpy(np.real(system["shearlets"])).permute(2, 0, 1)
    return filters, torch.from_numpy(np.real(system["dualFrameWeights"]))


def centred_fft(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifftshift(torch.fft.fft2(torch.fft.fftshift(x, (-2, -1))), (-2, -1))


def centred_ifft(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifftshift(torch.fft.ifft2(torch.fft.fftshift(x, (-2, -1))), (-2, -1))


def decompose(image: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(..., H, W) → (..., K, H, W): c_k = Re F⁻¹(F(X) · ψ̂_k)."""
    return centred_ifft(centred_fft(image).unsqueeze(-3) * filters).real


def reconstruct(c: torch.Tensor, filters: torch.Tensor, dual: torch.Tensor) -> torch.Tensor:
    """(..., K, H, W) → (..., H, W): X = Re F⁻¹(Σ_k F(c_k) · ψ̂_k / Σ_k ψ̂_k²)."""
    return centred_ifft((centred_fft(c) * filters).sum(-3) / dual).real


def clamp(z: torch.Tensor) -> torch.Tensor:
    """clamp(z, 0, 1). The published code leaves the gradient at values exactly on a bound
    (flat regions under an all-ones mask) to rounding; like ours, this passes it within 64 ulp."""
    band = (z > -64 * torch.finfo(z.dtype).eps) & (z < 1 + 64 * torch.finfo(z.dtype).eps)
    return z.clamp(0, 1).detach() + (z - z.detach()) * band


def published_obfuscations(x, mask, unit, filters, dual) -> torch.Tensor:
    """x̃_i, colour channel j: rec(clamp(m ⊙ c_j + (1 − m) ⊙ (μ + σ u_i), 0, 1)), (n, 3, H, W)."""
    colour = decompose(x[0], filters)  # (3, K, H, W)
    grey = decompose(x[0].mean(0), filters)  # (K, H, W)
    mean = grey.mean((-2, -1), keepdim=True)
    std = grey.std((-2, -1), keepdim=True)
    noise = mean + std * unit  # (n, K, H, W), the same for R, G and B
    mixed = mask * colour.unsqueeze(0) + (1 - mask) * noise.unsqueeze(1)  # (n, 3, K, H, W)
    return reconstruct(clamp(mixed), filters, dual)


def published_shearletx(model, x, target, filters, dual, draws, l1=1.0, energy=2.0, lr=0.1):
    """The authors' loop on one image, with the uniform draws u ∈ [−1, 1) given per step."""
    size = x.shape[-1]
    grey = decompose(x[0].mean(0), filters)
    mask = torch.ones(filters.shape, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=lr)
    for unit in draws:
        images = published_obfuscations(x, mask, unit, filters, dual)
        probability = model(images).softmax(1)[:, target]
        distortion = (1 - probability).pow(2).mean()
        spatial = reconstruct(mask * grey, filters, dual)
        loss = (
            distortion
            + l1 * mask.abs().sum() / mask.numel()
            + energy * clamp(spatial).sum() / size**2  # clamp ≥ 0: Σ|·| = Σ·
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
    return mask.detach()


def native_draws(seed: int, samples: int, shape: tuple[int, ...], steps: int) -> list:
    """The draws our loop makes (one generator per image, FFT-native layout), centred."""
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.empty(samples, 1, *shape).uniform_(-1, 1, generator=generator)[:, 0]
             for _ in range(steps)]  # fmt: skip
    return [torch.fft.fftshift(u, (-2, -1)) for u in draws]


SIZE = 64  # pyShearLab has 2 scales (K = 17) at 64²: small enough for a float64 loop


@pytest.fixture(scope="module")
def lite0_float64(lite0):
    return dataclasses.replace(lite0, module=copy.deepcopy(lite0.module).double())


@pytest.fixture(scope="module")
def system():
    return pyshearlab_system(SIZE, 2)


def test_published_obfuscation_in_float32(lite0, system):
    """One step's 4 obfuscations of a random mask: ours (native layout, real FFTs, exact
    adjoint) and the re-derivation (centred layout, complex FFTs) agree to 1e-5."""
    filters, dual = system
    x = load_image("coffee", (SIZE, SIZE))[0][None]
    representation = ShearletRepresentation(scales=4)
    coefficients = representation.decompose(x)
    assert representation.scales_used == 2 and coefficients[0].shape[2] == filters.shape[0]
    mask = torch.rand(1, 1, *coefficients[0].shape[2:], generator=torch.Generator().manual_seed(1))
    noise = representation.noise_model(x, coefficients, "uniform")
    unit = noise.unit(coefficients, 4, [torch.Generator().manual_seed(2)])
    ours, _ = obfuscate(representation, coefficients, [mask], noise, unit,
                        pixel_clamp=False, coefficient_clamp=True)  # fmt: skip
    centred = torch.fft.fftshift
    reference = published_obfuscations(
        x.double(), centred(mask[0, 0], (-2, -1)).double(),
        centred(unit[0][0, :, 0], (-2, -1)).double(), filters, dual,
    )  # fmt: skip
    assert isinstance(noise, NoiseModel) and noise.shared_across_colours
    assert (ours.double() - reference).abs().max() < 1e-5
    # The clamp matters: the pixel-clamped variant is far from the published obfuscation.
    unclamped, _ = obfuscate(representation, coefficients, [mask], noise, unit)
    assert (unclamped.double() - reference).abs().max() > 1e-2


@pytest.mark.parametrize("photo", ["chelsea", "astronaut"])  # astronaut: a pure black background
def test_shearletx_defaults_equal_the_published_method(lite0_float64, system, photo):
    """Three Adam steps of our default ShearletX (float64, 3 noise samples) give the masks of
    the re-derivation to 1e-5; with the clamp off they do not."""
    filters, dual = system
    x = load_image(photo, (SIZE, SIZE))[0][None].double()
    options = {"iterations": 3, "noise_samples": 3}
    result = explain(lite0_float64, x, "shearletx", options, seed=5, resize="none")
    target = result.targets[0]
    draws = native_draws(5, 3, tuple(filters.shape), 3)
    reference = published_shearletx(lite0_float64.module, x, target, filters, dual, draws)
    ours = result.outputs.masks[0][0, 0]  # pyShearLab's layout
    assert (ours - reference).abs().max() < 1e-5
    assert (reference - 1).abs().max() > 0.05  # the three steps moved the mask
    unclamped = explain(lite0_float64, x, "shearletx", {**options, "coefficient_clamp": False},
                        seed=5, resize="none").outputs.masks[0][0, 0]  # fmt: skip
    assert (unclamped - reference).abs().max() > 1e-2
