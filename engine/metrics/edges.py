"""CoShREM edge measure: complex shearlets, vectorised in torch.

An odd-symmetric (edge-like) feature at y makes the complex shearlet coefficients ψ_j(y) of the
best-matching orientation nearly imaginary with the same sign on every scale j. With c_j = Im ψ_j
of the pivot orientation (the largest imaginary coefficient over orientations and scales) and
r_j = |Re ψ_j| taken ``offset`` octaves finer,

    edgeness(y) = max(0, Σ_j (c_j − r_j) − N·β) / (N · max_j c_j),   N scales, β = min contrast,

which lies in [0, 1] (CoShREM: Reisenhofer, Kiefer & King, "Shearlet-based detection of flame
fronts", Exp. Fluids 2016; Reisenhofer & King, "Edge, ridge, and blob detection with symmetric
molecules", SIAM J. Imaging Sci. 2019). The filters follow
PyCoShREM 0.0.2's ``EdgeSystem`` with its defaults (Mexican-hat wavelet sampled off the origin,
Gaussian in the other direction, shear level 3 → 10 orientations, 2 scales per octave over 3.5
octaves → 7 scales, normalised per scale). That package needs NumPy < 1.24 and loops over pixels
in Python; here one FFT per image and one batched inverse FFT per filter bank do the work. The
orientation output of PyCoShREM is not computed (the Hallucination score does not use it).
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch
from torch import Tensor

_LOCK = threading.Lock()


def _pulsations(n: int) -> np.ndarray:
    """Frequencies 2πk/n in FFT order: [0, π) then [−π, 0)."""
    half = (n - 1) // 2
    return (2 * np.pi / n) * np.concatenate((np.arange(half + 1), np.arange(half - n + 1, 0)))


def _cones(shear_level: int) -> tuple[set[int], np.ndarray]:
    """1-based orientations of the horizontal cone and the shear number of every orientation."""
    shears = np.zeros(2**shear_level + 2, dtype=int)
    first = np.arange(2 ** max(shear_level - 2, 0) + 1)
    shears[first] = first
    horizontal = np.arange(first[-1] + 1, first[-1] + 1 + 2 ** (shear_level - 1) + 1)
    shears[horizontal] = horizontal[len(horizontal) // 2] - horizontal
    rest = np.arange(horizontal[-1] + 1, 2**shear_level + 2)
    shears[rest] = rest - (rest[-1] + 1) if rest.size else shears[rest]
    return {int(i) + 1 for i in horizontal}, shears


def _roll_each(data: np.ndarray, shifts: np.ndarray, along_rows: bool) -> np.ndarray:
    """Circularly shift every column (along_rows) or every row of ``data`` by its own amount."""
    rows, cols = data.shape
    if along_rows:
        index = (np.arange(rows)[:, None] - shifts[None, :]) % rows
        return np.take_along_axis(data, index, axis=0)
    index = (np.arange(cols)[None, :] - shifts[:, None]) % cols
    return np.take_along_axis(data, index, axis=1)


def _mexican_hat_off_origin(omega: np.ndarray) -> np.ndarray:
    """Mexican hat 2πω²e^{−ω²/2} in frequency, resampled half a sample off the origin in time."""
    n = omega.size
    spectrum = np.fft.fftshift(2 * np.pi * omega**2 * np.exp(-(omega**2) / 2))
    left = n // 2 if n % 2 == 0 else n // 2 + 1
    padded = np.pad(spectrum, (left, 2 * n - left - n))
    fine = np.real(np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(padded))))
    return np.fft.fft(np.fft.ifftshift(fine[1::2]))


def _base_shearlet(
    rows: int, cols: int, wavelet_support: float, gaussian_support: float,
    scales_per_octave: float, shear_level: int, alpha: float, scale: int, orientation: int,
    horizontal: set[int], shears: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Real even-symmetric shearlet (rows, cols) in centred frequency layout."""
    in_horizontal = orientation in horizontal
    if not in_horizontal:
        rows, cols = cols, rows
    dilation = 2 ** ((scale - 1) / scales_per_octave)
    refine = 2 ** (shear_level - 2)
    omega_wavelet = (63 * wavelet_support / 512) * _pulsations(rows) / dilation
    omega_gauss = (74 * gaussian_support / 512) * _pulsations(cols * refine) / dilation**alpha
    wavelet = _mexican_hat_off_origin(omega_wavelet)
    gauss = np.exp(-(omega_gauss**2) / 2)
    shear = -shears[orientation - 1]
    if in_horizontal:
        product = np.fft.fftshift(wavelet[:, None] * gauss[None, :])
        shifts = shear * (product.shape[0] // 2 - np.arange(product.shape[0]))
        return _roll_each(product, shifts, along_rows=False)[:, ::refine]
    product = np.fft.fftshift(gauss[:, None] * wavelet[None, :])
    shifts = shear * (product.shape[1] // 2 - np.arange(product.shape[1]))
    return _roll_each(product, shifts, along_rows=True)[::refine, :]


@functools.lru_cache(maxsize=8)
def edge_system(
    rows: int,
    cols: int,
    scales_per_octave: int = 2,
    shear_level: int = 3,
    alpha: float = 0.8,
    octaves: float = 3.5,
) -> tuple[np.ndarray, set[int]]:
    """Complex edge shearlets (S, O, rows, cols) in centred frequency layout, and the 1-based
    orientations of the horizontal cone.

    Each real shearlet is made one-sided in frequency (analytic: its Hilbert pair is the
    imaginary part in space) and normalised per scale so that a unit step gives Im ψ ≈ 1.
    """
    wavelet_support, gaussian_support = min(rows, cols) / 7, min(rows, cols) / 20
    horizontal, shears = _cones(shear_level)
    orientations = 2**shear_level + 2
    lower_half = np.ones((rows, cols))
    lower_half[: rows // 2] = 0
    left_half = np.ones((rows, cols))
    left_half[:, cols // 2 :] = 0
    scales = np.arange(1, int(scales_per_octave * octaves) + 1)
    system = np.zeros((len(scales), orientations, rows, cols), dtype=np.complex128)
    for j, scale in enumerate(scales):
        for o in range(1, orientations + 1):
            psi = _base_shearlet(rows, cols, wavelet_support, gaussian_support,
                                 scales_per_octave, shear_level, alpha, int(scale), o,
                                 horizontal, shears)  # fmt: skip
            if o in horizontal:
                psi = 2 * psi * lower_half
            else:
                psi = 2 * psi * left_half * (-1 if o > max(horizontal) else 1)
            if o == 1:
                spatial = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(psi)))
                normalisation = abs(np.imag(spatial[:, : cols // 2]).sum())
            system[j, o - 1] = psi / normalisation
    return system, horizontal


@functools.lru_cache(maxsize=8)
def _filters(rows: int, cols: int, device: str) -> tuple[Tensor, set[int]]:
    """conj(ψ) in FFT layout, complex64, on ``device``."""
    system, horizontal = edge_system(rows, cols)
    spectrum = np.fft.ifftshift(np.conj(system), axes=(-2, -1))
    return torch.from_numpy(spectrum).to(device, torch.complex64), horizontal


def _full_circle(coefficients: Tensor, horizontal: set[int]) -> Tensor:
    """(B, S, O, H, W) → (B, S, 2O, H, W): the opposite orientations are the negated filters,
    re-centred by one sample where the off-origin sampling shifted them."""
    first, second = [], []
    for o in range(coefficients.shape[2]):
        c = coefficients[:, :, o]
        if o + 1 in horizontal:
            c = c.roll(1, dims=-2)
            opposite = -c.roll(-1, dims=-2)
        elif o + 1 > max(horizontal):
            c = c.roll(-1, dims=-1)
            opposite = -c.roll(1, dims=-1)
        else:
            opposite = -c.roll(-1, dims=-1)
        first.append(c)
        second.append(opposite)
    return torch.stack(first + second, dim=2)


def edge_measure(images: Tensor, min_contrast: float = 4.0, offset: float = 1.0) -> Tensor:
    """Edgeness in [0, 1] of grey images (B, H, W) (or (H, W)), same shape as the input.

    ``min_contrast`` is in the images' own intensity units; ``offset`` is in octaves between
    the scales whose imaginary parts and whose real parts are compared.
    """
    squeeze = images.ndim == 2
    batch = images[None] if squeeze else images
    rows, cols = batch.shape[-2:]
    with _LOCK:
        filters, horizontal = _filters(rows, cols, str(batch.device))
    x = torch.fft.ifftshift(batch.to(torch.float32), dim=(-2, -1))
    spectrum = torch.fft.fft2(x)[:, None, None]  # (B, 1, 1, H, W)
    coefficients = torch.fft.fftshift(
        torch.fft.ifft2(spectrum * filters), dim=(-2, -1)
    ).conj()  # (B, S, O, H, W)
    coefficients = _full_circle(coefficients, horizontal)
    shift = int(offset * 2)  # two scales per octave
    total = coefficients.shape[1]
    imaginary = coefficients[:, shift:].imag  # (B, N, 2O, H, W)
    real = coefficients[:, : total - shift].real.abs()
    n = imaginary.shape[1]
    # Pivot: the orientation holding the largest imaginary coefficient over all scales.
    pivot_value, pivot_index = imaginary.flatten(1, 2).max(dim=1)
    orientation = (pivot_index % imaginary.shape[2])[:, None, None]
    index = orientation.expand(-1, n, 1, -1, -1)
    along_pivot = imaginary.gather(2, index).squeeze(2) - real.gather(2, index).squeeze(2)
    numerator = (along_pivot.sum(1) - n * min_contrast).clamp(min=0)
    edgeness = torch.where(
        numerator > 0, numerator / (n * pivot_value), torch.zeros_like(numerator)
    )
    return edgeness[0] if squeeze else edgeness
