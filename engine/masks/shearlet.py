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
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.masks.representation import Coefficients, NoiseModel, Representation

MIN_SIZE = 64  # pyShearLab builds no system below 64 pixels: smaller images are padded
_MEMORY: dict[tuple[int, int, int, str], tuple[Tensor, Tensor]] = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("EXPLAINER_CACHE_DIR", Path.home() / ".cache" / "explainer"))


def build_system(height: int, width: int, scales: int) -> tuple[np.ndarray, np.ndarray]:
    """pyShearLab filters (K, H, W) and dual frame weights (H, W), float64, centred layout."""
    from pyshearlab_mind import SLgetShearletSystem2D

    with contextlib.redirect_stdout(io.StringIO()):  # it prints notices about filter sizes
        system = SLgetShearletSystem2D(0, height, width, scales)
    filters = np.moveaxis(np.real(system["shearlets"]), -1, 0)
    return filters, np.real(system["dualFrameWeights"])


def load_system(height: int, width: int, scales: int) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir() / "shearlets" / f"{height}x{width}_scales{scales}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return stored["filters"], stored["dual"]
    filters, dual = build_system(height, width, scales)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, filters=filters.astype(np.float32), dual=dual.astype(np.float32))
    os.replace(tmp, path)
    return filters.astype(np.float32), dual.astype(np.float32)


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
        shifted = torch.fft.ifftshift(torch.from_numpy(np.asarray(filters, np.float32)), (-2, -1))
        weights = torch.fft.ifftshift(torch.from_numpy(np.asarray(dual, np.float32)), (-2, -1))
        pair = (shifted.to(device), weights.to(device))
        with _LOCK:
            _MEMORY[key] = pair
        return (*pair, used)
    raise ValueError(f"no shearlet system exists for {height}×{width}")


def shearlet_decompose(x: Tensor, filters: Tensor) -> Tensor:
    """(..., H, W) → (..., K, H, W): c_k = fftshift(ifft2(fft2(ifftshift(x)) · Ψ_k))."""
    spectrum = torch.fft.fft2(torch.fft.ifftshift(x, (-2, -1)))
    coefficients = torch.fft.ifft2(spectrum.unsqueeze(-3) * filters).real
    return torch.fft.fftshift(coefficients, (-2, -1))


def shearlet_reconstruct(c: Tensor, filters: Tensor, dual: Tensor) -> Tensor:
    """(..., K, H, W) → (..., H, W): X = fftshift(ifft2(Σ_k fft2(ifftshift(c_k)) · Ψ_k / D))."""
    spectrum = (torch.fft.fft2(torch.fft.ifftshift(c, (-2, -1))) * filters).sum(-3) / dual
    return torch.fft.fftshift(torch.fft.ifft2(spectrum).real, (-2, -1))


class ShearletRepresentation(Representation):
    """Coefficients [c (B, 3, K, H, W)]: K shearlets per colour channel; masks (B, 1, K, H, W).

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

    def _ensure(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The system for this size; below 64 pixels none exists, so pad up to 64 (recorded)."""
        self.size = (height, width)
        padded = (max(height, MIN_SIZE), max(width, MIN_SIZE))
        self.padded_to = padded if padded != (height, width) else None
        filters, dual, used = shearlet_system(*padded, self.scales, device)
        self.scales_used = used
        self._system = (filters, dual)
        return filters, dual

    def decompose(self, x: Tensor) -> Coefficients:
        filters, _ = self._ensure(x.shape[-2], x.shape[-1], x.device)
        filters = filters.to(x.dtype)
        if self.padded_to is not None:
            height, width = self.padded_to
            pad = (0, width - x.shape[-1], 0, height - x.shape[-2])
            x = torch.nn.functional.pad(x, pad, mode="replicate")
        return [shearlet_decompose(x, filters)]

    def reconstruct(self, coefficients: Coefficients) -> Tensor:
        filters, dual = self._system
        dtype = coefficients[0].dtype
        image = shearlet_reconstruct(coefficients[0], filters.to(dtype), dual.to(dtype))
        return image[..., : self.size[0], : self.size[1]]

    def noise_model(self, x: Tensor, coefficients: Coefficients, kind: str) -> NoiseModel:
        grey = coefficients[0].mean(dim=1, keepdim=True)  # the decomposition is linear
        mean = grey.mean(dim=(-2, -1), keepdim=True)
        std = grey.std(dim=(-2, -1), keepdim=True)
        return NoiseModel([mean], [std], shared_across_colours=True, kind=kind)

    def describe(self) -> dict:
        shearlets = None if self._system is None else int(self._system[0].shape[0])
        return {
            "name": self.name,
            "scales_requested": self.scales,
            "scales_used": self.scales_used,
            "shearlets": shearlets,
            "padded_to": self.padded_to,
        }
