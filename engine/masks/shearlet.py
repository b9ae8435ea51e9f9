"""Shearlet representation: pyShearLab filters, decomposition and reconstruction by FFT in torch.

With Ψ_k the k-th shearlet filter in the frequency domain and F the 2-D FFT (pyShearLab's shift
conventions), c_k = Re F⁻¹(F(X)·Ψ_k) and X = Re F⁻¹(Σ_k F(c_k)·Ψ_k / Σ_k Ψ_k²) (Kutyniok et al.,
ShearLab 3D; ShearletX, Kolek et al. CVPR 2023). Filter systems are cached per (size, scales) in
memory and on disk (``$EXPLAINER_CACHE_DIR``, default ``~/.cache/explainer``), so building one
(≈1.4 s at 256²) happens once per machine. Where pyShearLab has no system with the requested
scales for a size, fewer scales are used (4 scales exist at 256², 3 at 128–224², 2 at 64–127²);
below 64 pixels no system exists, so the image is padded (edge values) to 64 and cropped back.
Both choices are recorded in ``describe()``.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading

import numpy as np
import torch
from torch import Tensor

from engine.masks.representation import Coefficients, NoiseModel, Representation
from engine.storage import cache_dir

MIN_SIZE = 64  # pyShearLab builds no system below 64 pixels: smaller images are padded
_MEMORY: dict[tuple[int, int, int, str], tuple[Tensor, Tensor]] = {}
_LOCK = threading.Lock()


def build_system(height: int, width: int, scales: int) -> tuple[np.ndarray, np.ndarray]:
    """pyShearLab filters (K, H, W) and dual frame weights (H, W), float64, centred layout."""
    from pyshearlab_mind import SLgetShearletSystem2D

    with contextlib.redirect_stdout(io.StringIO()):  # it prints notices about filter sizes
        system = SLgetShearletSystem2D(0, height, width, scales)
    filters = np.moveaxis(np.real(system["shearlets"]), -1, 0)
    return filters, np.real(system["dualFrameWeights"])


def load_system(height: int, width: int, scales: int) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir() / "shearlets" / f"{height}x{width}_scales{scales}_f64.npz"
    if path.is_file():
        with np.load(path) as stored:
            return stored["filters"], stored["dual"]
    filters, dual = build_system(height, width, scales)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, filters=filters, dual=dual)
    os.replace(tmp, path)
    return filters, dual


def shearlet_system(
    height: int, width: int, scales: int, device: torch.device
) -> tuple[Tensor, Tensor, int]:
    """(filters (K,H,W), dual weights (H,W)) in FFT order (ifftshifted), on ``device``, and the
    number of scales actually used (fewer than asked where pyShearLab has no such system)."""
    for used in range(scales, 0, -1):
        key = (height, width, used, str(device))
        with _LOCK:
            if key in _MEMORY:
                return (*_MEMORY[key], used)
        try:
            filters, dual = load_system(height, width, used)
        except (ValueError, SystemExit):  # no such system at this size (pyShearLab may sys.exit)
            continue
        shifted = torch.fft.ifftshift(torch.from_numpy(np.asarray(filters, np.float64)), (-2, -1))
        weights = torch.fft.ifftshift(torch.from_numpy(np.asarray(dual, np.float64)), (-2, -1))
        pair = (shifted.to(device), weights.to(device))
        with _LOCK:
            _MEMORY[key] = pair
        return (*pair, used)
    raise ValueError(f"no shearlet system exists for {height}×{width}")


def shearlet_decompose(x: Tensor, filters: Tensor) -> Tensor:
    """(..., H, W) → (..., K, H, W) in FFT-native layout: c_k = ifft2(fft2(ifftshift(x)) · Ψ_k).

    pyShearLab's coefficients are fftshift(c_k); keeping them unshifted saves a roll per map, and
    nothing but the saved mask depends on the layout (sums, per-map ranks and statistics do not).
    The filters are even in frequency, so the real FFT is exact.
    """
    height, width = x.shape[-2:]
    half = filters[..., : width // 2 + 1]
    spectrum = torch.fft.rfft2(torch.fft.ifftshift(x, (-2, -1)))
    return torch.fft.irfft2(spectrum.unsqueeze(-3) * half, s=(height, width))


class _Reconstruct(torch.autograd.Function):
    """X = fftshift(irfft2(Σ_k rfft2(c_k) · W_k)) with W_k = Ψ_k / D real and even in frequency.

    Each term is a circular convolution with a real, even kernel, i.e. a symmetric operator, so
    the adjoint is ∂c_k = irfft2(rfft2(ifftshift(∂X)) · W_k): one small FFT and K inverse FFTs,
    without the full-spectrum complex transform autograd would use for rfft2's backward.
    """

    @staticmethod
    def forward(ctx, c: Tensor, weights: Tensor) -> Tensor:
        height, width = c.shape[-2:]
        ctx.save_for_backward(weights)
        ctx.size = (height, width)
        spectrum = (torch.fft.rfft2(c) * weights).sum(-3)
        return torch.fft.fftshift(torch.fft.irfft2(spectrum, s=(height, width)), (-2, -1))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        spectrum = torch.fft.rfft2(torch.fft.ifftshift(grad, (-2, -1)))
        return torch.fft.irfft2(spectrum.unsqueeze(-3) * weights, s=ctx.size), None


CHUNK_BYTES = 2 << 20  # one step of the fused loop: a few maps per colour, within a CPU's cache


class _ClampedMixture(torch.autograd.Function):
    """X_i = fftshift(irfft2(Σ_k rfft2(clamp(z_ik, 0, 1)) · W_k)), z_i = m⊙c + (1 − m)⊙(μ + σ·u_i),
    for every noise sample i of every image, differentiated with respect to the mask m only.

    The same value as mixing, clamping and :class:`_Reconstruct` on the whole (B, n, C, K, H, W)
    tensor, computed a few shearlets at a time per sample so that the mixed coefficients, their
    spectra and the clamp's gradient stay in cache; the backward recomputes z instead of saving
    it (the peak holds no tensor of that size). Backward, per shearlet k:
    ∂z_ik = irfft2(rfft2(ifftshift(∂X_i)) · W_k) where −tol < z_ik < 1 + tol (the tie rule of
    :func:`~engine.masks.representation.unit_clamp`), and ∂m = Σ_{i, colour} ∂z_ik ⊙ (c − μ − σu_i).
    """

    @staticmethod
    def forward(ctx, m: Tensor, c: Tensor, mean: Tensor, std: Tensor, u: Tensor, weights: Tensor):
        batch, colours, _, height, width = c.shape
        kept_and_mean, spread = _mixture_terms(m, c, mean, std)
        interleaved = weights.unsqueeze(-1).expand(*weights.shape, 2).contiguous()
        spectra = c.new_zeros(batch, u.shape[1], colours, height, width // 2 + 1, 2)
        for b, i, block in _steps(c, u):
            z = torch.addcmul(kept_and_mean[b, :, block], spread[b, 0, block], u[b, i, 0, block])
            spectrum = torch.view_as_real(torch.fft.rfft2(z.clamp_(0, 1)))
            for k, w in zip(range(block.start, block.stop), interleaved[block], strict=True):
                spectra[b, i].addcmul_(spectrum[:, k - block.start], w)
        ctx.save_for_backward(m, c, mean, std, u, interleaved)
        image = torch.fft.irfft2(torch.view_as_complex(spectra), s=(height, width))
        return torch.fft.fftshift(image, (-2, -1)).flatten(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        m, c, mean, std, u, interleaved = ctx.saved_tensors
        batch, colours, _, height, width = c.shape
        kept_and_mean, spread = _mixture_terms(m, c, mean, std)
        centred = c - mean  # ∂z/∂m = c − μ − σ·u
        tolerance = 64 * torch.finfo(c.dtype).eps
        grad = torch.fft.ifftshift(grad.view(batch, -1, colours, height, width), (-2, -1))
        spectra = torch.view_as_real(torch.fft.rfft2(grad))
        grad_m = torch.zeros_like(m)
        for b, i, block in _steps(c, u):
            product = spectra[b, i].unsqueeze(1) * interleaved[block]
            grad_z = torch.fft.irfft2(torch.view_as_complex(product), s=(height, width))
            z = torch.addcmul(kept_and_mean[b, :, block], spread[b, 0, block], u[b, i, 0, block])
            grad_z = torch.ops.aten.hardtanh_backward(grad_z, z, -tolerance, 1 + tolerance)
            slope = centred[b, :, block] - std[b, 0, block] * u[b, i, 0, block]
            target = grad_m[b, 0, block]
            for colour in range(colours):
                target.addcmul_(grad_z[colour], slope[colour])
        return grad_m, None, None, None, None, None


def _mixture_terms(m: Tensor, c: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """(m⊙c + (1 − m)⊙μ, (1 − m)⊙σ): z_i = first + second⊙u_i in one pass per step."""
    keep = 1 - m
    return torch.addcmul(m * c, keep, mean), keep * std


def _steps(c: Tensor, u: Tensor):
    """(image, sample, block of shearlets) in order: blocks of about CHUNK_BYTES for all colours."""
    batch, colours, shearlets, height, width = c.shape
    per_block = max(1, CHUNK_BYTES // (colours * height * width * c.element_size()))
    blocks = [slice(k, min(k + per_block, shearlets)) for k in range(0, shearlets, per_block)]
    for b in range(batch):
        for i in range(u.shape[1]):
            for block in blocks:
                yield b, i, block


def reconstruction_weights(filters: Tensor, dual: Tensor) -> Tensor:
    """W_k = Ψ_k / D on the real-FFT half spectrum (K, H, W//2 + 1)."""
    half = filters.shape[-1] // 2 + 1
    return filters[..., :half] / dual[..., :half]


def standard_layout(c: Tensor) -> Tensor:
    """Native layout → pyShearLab's (each map centred with fftshift)."""
    return torch.fft.fftshift(c, (-2, -1))


class ShearletRepresentation(Representation):
    """Coefficients [c (B, 3, K, H, W)]: K shearlets per colour channel (FFT-native layout, see
    :func:`shearlet_decompose`); masks (B, 1, K, H, W).

    Noise (ShearletX): mean and std per shearlet k over the positions of the grey image's
    coefficients (grey = (R+G+B)/3), one noise tensor shared by the three colour channels.
    """

    def __init__(self, scales: int = 4):
        self.name = "shearlet"
        self.scales = scales
        self.scales_used: int | None = None
        self.padded_to: tuple[int, int] | None = None
        self.size: tuple[int, int] | None = None
        self._system: tuple[Tensor, Tensor] | None = None
        self._weights: Tensor | None = None

    def _ensure(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The system for this size. Below 64 pixels, and for shapes pyShearLab has no system
        for (e.g. 224×320), the image is padded: to 64, then to a square (recorded)."""
        self.size = (height, width)
        tall, wide = max(height, MIN_SIZE), max(width, MIN_SIZE)
        for padded in dict.fromkeys([(tall, wide), (max(tall, wide),) * 2]):
            try:
                filters, dual, used = shearlet_system(*padded, self.scales, device)
            except ValueError:
                continue
            self.padded_to = padded if padded != (height, width) else None
            self.scales_used = used
            if self._system is None or self._system[0] is not filters:
                self._system, self._weights = (filters, dual), None
            return filters, dual
        raise ValueError(f"no shearlet system for {height}×{width}, even padded")

    def decompose(self, x: Tensor) -> Coefficients:
        filters, _ = self._ensure(x.shape[-2], x.shape[-1], x.device)
        filters = filters.to(x.dtype)
        if self.padded_to is not None:
            height, width = self.padded_to
            pad = (0, width - x.shape[-1], 0, height - x.shape[-2])
            x = torch.nn.functional.pad(x, pad, mode="replicate")
        return [shearlet_decompose(x, filters)]

    def reconstruct(self, coefficients: Coefficients) -> Tensor:
        c = coefficients[0]
        image = _Reconstruct.apply(c, self._reconstruction_weights(c.dtype))
        return image[..., : self.size[0], : self.size[1]]

    def _reconstruction_weights(self, dtype: torch.dtype) -> Tensor:
        if self._weights is None or self._weights.dtype != dtype:
            self._weights = reconstruction_weights(*self._system).to(dtype)
        return self._weights

    def clamped_mixture(
        self, coefficients: Coefficients, masks: list[Tensor], noise: NoiseModel, unit: Coefficients
    ) -> Tensor:
        """The published obfuscation, fused (:class:`_ClampedMixture`) on the CPU where only
        the mask takes a gradient and the noise is shared by the colours, as ShearletX's is. Its
        blocks are sized for a CPU's cache; an accelerator keeps the whole-batch computation of
        the base class, a few large kernels (measured on an H100 at PixelMask's speed)."""
        c, m, u = coefficients[0], masks[0], unit[0]
        mean, std = noise.means[0], noise.stds[0]
        fused = c.device.type == "cpu" and u.shape[2] == 1
        if not fused or any(t.requires_grad for t in (c, mean, std, u)):
            return super().clamped_mixture(coefficients, masks, noise, unit)
        weights = self._reconstruction_weights(c.dtype)
        image = _ClampedMixture.apply(m, c, mean.to(c), std.to(c), u, weights)
        return image[..., : self.size[0], : self.size[1]]

    def noise_model(self, x: Tensor, coefficients: Coefficients, kind: str) -> NoiseModel:
        grey = coefficients[0].mean(dim=1, keepdim=True)  # the decomposition is linear
        mean = grey.mean(dim=(-2, -1), keepdim=True)
        std = grey.std(dim=(-2, -1), keepdim=True)
        return NoiseModel([mean], [std], shared_across_colours=True, kind=kind)

    def output_masks(self, masks: list[Tensor]) -> list[Tensor]:
        return [standard_layout(m) for m in masks]

    def describe(self) -> dict:
        shearlets = None if self._system is None else int(self._system[0].shape[0])
        return {
            "name": self.name,
            "scales_requested": self.scales,
            "scales_used": self.scales_used,
            "shearlets": shearlets,
            "padded_to": self.padded_to,
            "mask_layout": "pyShearLab (each shearlet map centred)",
        }
