"""Discrete wavelet representation, as in CartoonX and WaveletX.

Coefficients: [yl (B,3,h,w), yh_0 (B,3,3,h_0,w_0), …, yh_{J−1}], finest level first; the three
orientations (LH, HL, HH) of a level sit in dim 2. The inverse is cropped to the input's size, so
odd sizes round-trip to their own shape.

pytorch-wavelets computes the decomposition. The inverse, which every mask iteration runs with its
backward, is ours, the same sums as one polyphase convolution per level (`synthesis_kernel`):
pytorch-wavelets' six grouped 1-D transposed convolutions per level took 0.15 s forward+backward
for 16 × 3 × 224² on one CPU thread, ours 0.04 s; and its hand-written backward is not the
adjoint of its inverse in the 'symmetric' and 'reflect' modes (gradcheck fails), while ours is
autograd's. Its inverse stays for the periodic 'periodization' mode; the tests hold ours to it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.masks.representation import Coefficients, NoiseModel, Representation, group_stats


def synthesis_kernel(g0_col: Tensor, g1_col: Tensor, g0_row: Tensor, g1_row: Tensor) -> Tensor:
    """conv2d weight (4 phases, 4 subbands, L/2, L/2) of one level of the 2-D synthesis bank.

    A level's inverse is x = Σ_s conv_transpose2d(z_s, k_s, stride 2, padding L−2) over the
    subbands s = LL, LH, HL, HH with k_s = g_col ⊗ g_row (length-L filters). Output pixel
    (2m+a, 2n+b) meets only the taps k_s[a+2i, b+2j], so each phase (a, b) is a stride-1
    correlation of z with those taps reversed: all four in one conv2d, then interleaved.
    """
    lo_col, hi_col, lo_row, hi_row = (
        g.flatten().double() for g in (g0_col, g1_col, g0_row, g1_row)
    )
    subbands = torch.stack(
        [
            torch.outer(lo_col, lo_row),
            torch.outer(hi_col, lo_row),
            torch.outer(lo_col, hi_row),
            torch.outer(hi_col, hi_row),
        ]
    )
    taps = subbands.shape[-1] // 2
    # k_s[2t + a, 2t' + b] → [s, t, a, t', b]; reverse t and t', then order as [a, b, s, t, t']
    by_phase = subbands.view(4, taps, 2, taps, 2).flip(1, 3).permute(2, 4, 0, 1, 3)
    return by_phase.reshape(4, 4, taps, taps).contiguous()


def synthesize(low: Tensor, highs: list[Tensor], kernel: Tensor) -> Tensor:
    """The multilevel inverse DWT (pytorch-wavelets' layout, 'zero'/'symmetric'/'reflect' modes,
    whose synthesis is the same) from the coarsest level up; ``kernel`` from `synthesis_kernel`."""
    taps = kernel.shape[-1]
    for high in reversed(highs):
        low = low[..., : high.shape[-2], : high.shape[-1]]  # a level's odd row/column
        batch, channels, height, width = low.shape
        # the four subbands of a position side by side: conv2d runs channels-last, its fast path
        stacked = torch.cat([low.unsqueeze(-1), high.permute(0, 1, 3, 4, 2)], dim=-1)
        stacked = stacked.view(batch * channels, height, width, 4).permute(0, 3, 1, 2)
        phases = F.conv2d(stacked, kernel).permute(0, 2, 3, 1)  # (…, m, n, 2a + b)
        out_h, out_w = height - taps + 1, width - taps + 1
        low = (
            phases.reshape(batch, channels, out_h, out_w, 2, 2)
            .permute(0, 1, 2, 4, 3, 5)
            .reshape(batch, channels, 2 * out_h, 2 * out_w)
        )
    return low


# Multiply-adds per pixel of one inverse transform above which a wavelet and level count are
# refused: db3 at 5 levels on 224² costs 52, db20 4,167 (1.25 s forward+backward for 16 × 3 ×
# 224² on one thread, about 1.3 of Lite0's passes); coif17 at 8 levels on 97² cost 68,800.
MAX_SYNTHESIS_MACS_PER_PIXEL = 5000


def transform_refusal(wave: str, levels: int, mode: str, height: int, width: int) -> str | None:
    """Why this DWT cannot, or may not, represent a height × width image (messages say width ×
    height, as the plan does), or None.

    'periodization' (pytorch-wavelets wraps around once): every level's input, made even, must
    be at least the filter length L, else the inverse does not give the image back. 'reflect':
    every level's input must be longer than its padding, else the decomposition fails. Any mode:
    the inverse's polyphase convolution, 16·(L/2)² multiply-adds per coefficient position
    summed over levels, must stay within MAX_SYNTHESIS_MACS_PER_PIXEL per pixel (long filters
    pad every level, so short images at many levels cost most).
    """
    import pywt  # 0.1 s to import, for the wavelet methods only

    length = pywt.Wavelet(wave).dec_len
    advice = "choose fewer levels, a shorter wavelet or a larger image_size"
    sides, positions = [height, width], 0
    for _ in range(levels):
        for axis, side in enumerate(sides):
            if mode == "periodization":
                if side + side % 2 < length:
                    return (f"mode 'periodization' with {wave} ({length} taps) cannot represent "
                            f"a {width}×{height} image at {levels} levels: {advice}, or another "
                            "mode")  # fmt: skip
                sides[axis] = (side + side % 2) // 2
                continue
            coefficients = pywt.dwt_coeff_len(side, length, mode)
            if mode == "reflect" and (2 * (coefficients - 1) - side + length + 1) // 2 >= side:
                return (f"mode 'reflect' with {wave} ({length} taps) cannot pad a "
                        f"{width}×{height} image at {levels} levels: {advice}, or mode 'zero' "
                        "or 'symmetric'")  # fmt: skip
            sides[axis] = coefficients
        positions += sides[0] * sides[1]
    cost = positions * 16 * (length // 2) ** 2 / (height * width)
    if cost > MAX_SYNTHESIS_MACS_PER_PIXEL:
        bound = f"{MAX_SYNTHESIS_MACS_PER_PIXEL:,}"
        return (f"{wave} ({length} taps) at {levels} levels on a {width}×{height} image costs "
                f"{cost:,.0f} multiply-adds per pixel in each inverse transform, above the bound "
                f"of {bound} (db3 at 5 levels on 224²: 52): {advice}")  # fmt: skip
    return None


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
        inverse = self._inverse
        filters = (inverse.g0_col, inverse.g1_col, inverse.g0_row, inverse.g1_row)
        periodic = mode in ("per", "periodization")
        self._kernel = None if periodic else synthesis_kernel(*filters)  # float64, cast per use
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
        if self._kernel is None:
            image = self._inverse((coefficients[0], list(coefficients[1:])))
        else:
            kernel = self._kernel.to(coefficients[0])
            image = synthesize(coefficients[0], list(coefficients[1:]), kernel)
        height, width = self._size
        return image[..., :height, :width]

    def noise_model(self, x: Tensor, coefficients: Coefficients, kind: str) -> NoiseModel:
        # Pooled over everything in a group: yl over channels and positions; each level of yh over
        # channels, orientations and positions (CartoonX / WaveletX).
        stats = [group_stats(c, tuple(range(1, c.ndim))) for c in coefficients]
        return NoiseModel([m for m, _ in stats], [s for _, s in stats], kind=kind)

    def describe(self) -> dict:
        return {"name": self.name, "wave": self.wave, "levels": self.levels, "mode": self.mode}
