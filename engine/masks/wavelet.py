"""Discrete wavelet representation (pytorch-wavelets), as in CartoonX and WaveletX.

Coefficients: [yl (B,3,h,w), yh_0 (B,3,3,h_0,w_0), …, yh_{J−1}], finest level first; the three
orientations (LH, HL, HH) of a level sit in dim 2. The inverse is cropped to the input's size, so
odd sizes round-trip to their own shape.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from engine.masks.representation import Coefficients, NoiseModel, Representation, group_stats


class WaveletRepresentation(Representation):
    def __init__(self, wave: str = "db3", levels: int = 5, mode: str = "zero"):
        with warnings.catch_warnings():  # it imports the deprecated pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            from pytorch_wavelets import DWTForward, DWTInverse

        self.name = "wavelet"
        self.rank_per_group = True
        self.wave, self.levels, self.mode = wave, levels, mode
        self._forward = DWTForward(J=levels, wave=wave, mode=mode)
        self._inverse = DWTInverse(wave=wave, mode=mode)
        self._size: tuple[int, int] | None = None

    def _to(self, like: Tensor) -> None:
        self._forward.to(like.device, like.dtype)
        self._inverse.to(like.device, like.dtype)

    def decompose(self, x: Tensor) -> Coefficients:
        self._to(x)
        self._size = (x.shape[-2], x.shape[-1])
        low, high = self._forward(x)
        return [low, *high]

    def reconstruct(self, coefficients: Coefficients) -> Tensor:
        self._to(coefficients[0])
        image = self._inverse((coefficients[0], list(coefficients[1:])))
        height, width = self._size
        return image[..., :height, :width]

    def noise_model(self, x: Tensor, coefficients: Coefficients, kind: str) -> NoiseModel:
        # Pooled over everything in a group: yl over channels and positions; each level of yh over
        # channels, orientations and positions (CartoonX / WaveletX).
        stats = [group_stats(c, tuple(range(1, c.ndim))) for c in coefficients]
        return NoiseModel([m for m, _ in stats], [s for _, s in stats], kind=kind)

    def describe(self) -> dict:
        return {"name": self.name, "wave": self.wave, "levels": self.levels, "mode": self.mode}
