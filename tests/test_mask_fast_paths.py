"""The mask methods' fused paths against the plain computation of the same math."""

from __future__ import annotations

import pytest
import torch

from engine.data import load_image
from engine.masks.representation import unit_clamp
from engine.masks.shearlet import ShearletRepresentation


def _published_obfuscation(representation, c, m, mean, std, u):
    """x̃_i = T⁻¹(clamp(m⊙c + (1 − m)⊙(μ + σ·u_i), 0, 1)), written out: every tensor of the
    (B, n, C, K, H, W) mixture materialised, T⁻¹ by the full complex FFT in pyShearLab's form
    X = Re F⁻¹(Σ_k F(c_k)·Ψ_k / Σ_k Ψ_k²) (the coefficients are in FFT-native layout, so the
    result is fftshifted), cropped to the input size."""
    filters, dual = representation._system
    mean, std = (
        mean.unsqueeze(1),
        std.unsqueeze(1),
    )  # (B, 1, 1, K, 1, 1) against u (B, n, 1, K, H, W)
    z = m.unsqueeze(1) * c.unsqueeze(1) + (1 - m.unsqueeze(1)) * (mean + std * u)
    y = unit_clamp(z).flatten(0, 1)
    spectrum = (torch.fft.fft2(y) * filters.to(y.dtype)).sum(-3) / dual.to(y.dtype)
    image = torch.fft.fftshift(torch.fft.ifft2(spectrum).real, (-2, -1))
    height, width = representation.size
    return image[..., :height, :width]


@pytest.mark.parametrize(
    ("size", "batch", "dtype", "tolerance"),
    [(64, 2, torch.float64, 1e-10), (40, 1, torch.float64, 1e-10), (96, 1, torch.float32, 1e-5)],
)
def test_fused_shearlet_obfuscation_equals_the_plain_computation(size, batch, dtype, tolerance):
    """Values and the mask's gradient, with masks reaching both clamp bounds, on photographs
    (40² is padded to 64²); float32 within 1e-5 of the largest value."""
    names = ["chelsea", "astronaut"][:batch]
    x = torch.stack([load_image(name, (size, size))[0] for name in names]).to(dtype)
    representation = ShearletRepresentation(scales=4)
    coefficients = representation.decompose(x)
    noise = representation.noise_model(x, coefficients, "uniform")
    generators = [torch.Generator().manual_seed(b) for b in range(batch)]
    unit = noise.unit(coefficients, 3, generators)
    shape = representation.mask_shapes(coefficients)[0]
    start = torch.rand(shape, generator=torch.Generator().manual_seed(7), dtype=dtype) * 1.4 - 0.2
    start[..., : size // 3, :] = 1  # an all-ones region: coefficients kept (clamped to [0, 1])
    grad_out = torch.randn(batch * 3, 3, size, size, generator=torch.Generator().manual_seed(3))

    results = []
    for fused in (True, False):
        mask = start.clone().requires_grad_(True)
        if fused:
            image = representation.clamped_mixture(coefficients, [mask], noise, unit)
        else:
            c, mean, std = coefficients[0], noise.means[0], noise.stds[0]
            image = _published_obfuscation(representation, c, mask, mean, std, unit[0])
        image.backward(grad_out.to(dtype))
        results.append((image.detach(), mask.grad))
    (image, grad), (reference, reference_grad) = results
    assert image.shape == reference.shape == (batch * 3, 3, size, size)
    assert (image - reference).abs().max() <= tolerance * reference.abs().max()
    assert (grad - reference_grad).abs().max() <= tolerance * reference_grad.abs().max()
    assert reference_grad.abs().max() > 0
