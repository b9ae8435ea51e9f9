"""Heat maps and overlays as PNG images. Rendering never changes the attribution itself."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image

Colormap = Literal["inferno", "viridis", "coolwarm", "gray"]

# Anchor colours sampled from the matplotlib maps of the same names, interpolated linearly.
_ANCHORS: dict[str, list[tuple[int, int, int]]] = {
    "inferno": [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                (245, 125, 21), (250, 193, 39), (252, 255, 164)],
    "viridis": [(68, 1, 84), (70, 50, 126), (54, 92, 141), (39, 127, 142), (31, 161, 135),
                (74, 193, 109), (160, 218, 57), (253, 231, 37)],
    "coolwarm": [(59, 76, 192), (124, 159, 249), (192, 212, 245), (242, 203, 183),
                 (238, 132, 104), (180, 4, 38)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}  # fmt: skip


def apply_colormap(values: np.ndarray, name: Colormap = "inferno") -> np.ndarray:
    """Values in [0, 1] (H, W) → uint8 RGB (H, W, 3)."""
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    positions = np.linspace(0, 1, len(anchors))
    v = np.clip(np.nan_to_num(values, nan=0.0), 0, 1)
    rgb = np.stack([np.interp(v, positions, anchors[:, k]) for k in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def normalise_heatmap(
    heatmap: np.ndarray, signed: bool, clip_percentile: float = 99.5
) -> np.ndarray:
    """Scale to [0, 1] for display: |h| / p-th percentile of |h|; signed maps to 0.5 ± h/2."""
    magnitude = np.abs(heatmap)
    scale = float(np.percentile(magnitude, clip_percentile)) if magnitude.size else 0.0
    if scale <= 0:
        scale = float(magnitude.max()) or 1.0
    if signed:
        return np.clip(0.5 + 0.5 * heatmap / scale, 0, 1)
    return np.clip(magnitude / scale, 0, 1)


def heatmap_image(
    heatmap: torch.Tensor | np.ndarray,
    signed: bool = False,
    colormap: Colormap | None = None,
    clip_percentile: float = 99.5,
) -> Image.Image:
    h = np.asarray(heatmap, dtype=np.float64)
    colormap = colormap or ("coolwarm" if signed else "inferno")
    return Image.fromarray(apply_colormap(normalise_heatmap(h, signed, clip_percentile), colormap))


def overlay_image(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    signed: bool = False,
    colormap: Colormap | None = None,
    clip_percentile: float = 99.5,
) -> Image.Image:
    """Blend the coloured heat map over the (3, H, W) image in [0, 1]; weight ``alpha`` per pixel
    scaled by the heat-map magnitude, so cold regions show the photograph."""
    picture = np.asarray(image, dtype=np.float64)
    if picture.shape[0] == 3:
        picture = picture.transpose(1, 2, 0)
    h = np.asarray(heatmap, dtype=np.float64)
    colormap = colormap or ("coolwarm" if signed else "inferno")
    level = normalise_heatmap(h, signed, clip_percentile)
    colours = apply_colormap(level, colormap).astype(np.float64) / 255
    strength = alpha * (np.abs(level - 0.5) * 2 if signed else level)[..., None]
    blended = (1 - strength) * picture + strength * colours
    return Image.fromarray((np.clip(blended, 0, 1) * 255).round().astype(np.uint8))


def image_from_tensor(image: torch.Tensor | np.ndarray) -> Image.Image:
    picture = np.asarray(image, dtype=np.float64)
    if picture.ndim == 3 and picture.shape[0] in (1, 3):
        picture = picture.transpose(1, 2, 0)
    return Image.fromarray((np.clip(picture.squeeze(), 0, 1) * 255).round().astype(np.uint8))


def series_plot(
    series: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray, width: int = 800,
    panel_height: int = 120,
) -> Image.Image:  # fmt: skip
    """One panel per feature: the series as a line over a background shaded by the mask (T, D)
    in [0, 1] (white = 0, orange = 1)."""
    from PIL import ImageDraw

    values, weights = np.asarray(series, np.float64), np.clip(np.asarray(mask, np.float64), 0, 1)
    steps, features = values.shape
    picture = Image.new("RGB", (width, panel_height * features), "white")
    draw = ImageDraw.Draw(picture)
    x_of = np.linspace(0, width - 1, steps + 1)
    shade = np.array([255, 140, 0], dtype=np.float64)
    for d in range(features):
        top, bottom = d * panel_height, (d + 1) * panel_height - 1
        for t in range(steps):
            colour = tuple(int(v) for v in (255 - weights[t, d] * (255 - shade)).round())
            draw.rectangle([x_of[t], top, x_of[t + 1], bottom], fill=colour)
        low, high = values[:, d].min(), values[:, d].max()
        scale = (high - low) or 1.0
        ys = bottom - 8 - (values[:, d] - low) / scale * (panel_height - 16)
        xs = (x_of[:-1] + x_of[1:]) / 2
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(20, 20, 120), width=2)
        draw.line([0, bottom, width, bottom], fill=(160, 160, 160))
        draw.text((4, top + 2), f"feature {d}", fill=(0, 0, 0))
    return picture


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
