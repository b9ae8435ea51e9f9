"""Heat maps and overlays as PNG images. Rendering never changes the attribution itself.

One colour map per kind of map: a signed attribution (positive and negative evidence) is drawn
with the diverging ``coolwarm`` (white is 0), every map without a sign (masks, CAMs, absolute
gradients) with the sequential ``inferno``. :func:`colour_key` describes the colours and the values
they stand for, so a page can draw the colour bar of a picture."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image

Colormap = Literal["inferno", "viridis", "coolwarm", "gray"]
SEQUENTIAL: Colormap = "inferno"  # masks, CAMs, |attribution|: 0 … most
DIVERGING: Colormap = "coolwarm"  # signed attributions: most negative … 0 … most positive

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


def colormap_for(signed: bool) -> Colormap:
    """The colour map of a kind of map: diverging for signed maps, sequential otherwise."""
    return DIVERGING if signed else SEQUENTIAL


def heatmap_scale(heatmap: np.ndarray, clip_percentile: float = 99.5) -> float:
    """The magnitude drawn with the map's extreme colour: the p-th percentile of |h| (values
    above it are clipped), or the maximum where that percentile is 0."""
    magnitude = np.abs(np.asarray(heatmap, dtype=np.float64))
    scale = float(np.percentile(magnitude, clip_percentile)) if magnitude.size else 0.0
    if scale <= 0:
        scale = float(magnitude.max()) if magnitude.size else 0.0
    return scale or 1.0


def colour_key(
    heatmap: np.ndarray, signed: bool, clip_percentile: float = 99.5, stops: int = 9
) -> dict:
    """What the colours of :func:`heatmap_image` and :func:`overlay_image` stand for: the colour
    map's name, ``stops`` colours from its low to its high end (#rrggbb), the values at both ends
    (``low`` = −scale for signed maps, else 0) and the percentile that clipped them."""
    scale = heatmap_scale(heatmap, clip_percentile)
    name = colormap_for(signed)
    rgb = apply_colormap(np.linspace(0, 1, stops)[None], name)[0]
    return {"colormap": name, "signed": signed, "clip_percentile": clip_percentile,
            "low": -scale if signed else 0.0, "high": scale,
            "colors": ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in rgb]}  # fmt: skip


def normalise_heatmap(
    heatmap: np.ndarray, signed: bool, clip_percentile: float = 99.5
) -> np.ndarray:
    """Scale to [0, 1] for display: |h| / p-th percentile of |h|; signed maps to 0.5 ± h/2."""
    magnitude = np.abs(heatmap)
    scale = heatmap_scale(heatmap, clip_percentile)
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
    colormap = colormap or colormap_for(signed)
    return Image.fromarray(apply_colormap(normalise_heatmap(h, signed, clip_percentile), colormap))


def overlay_image(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    alpha: float = 0.8,
    signed: bool = False,
    colormap: Colormap | None = None,
    clip_percentile: float = 99.5,
) -> Image.Image:
    """Blend the coloured heat map over the (3, H, W) image in [0, 1]: the colours and the
    percentile clipping of :func:`heatmap_image` (the overlay shows what the heat map shows),
    weighted per pixel by ``alpha`` × √(magnitude in [0, 1]), so cold regions show the photograph
    and sparse maps (IG's speckles) stay visible over it."""
    picture = np.asarray(image, dtype=np.float64)
    if picture.shape[0] == 3:
        picture = picture.transpose(1, 2, 0)
    h = np.asarray(heatmap, dtype=np.float64)
    colormap = colormap or colormap_for(signed)
    level = normalise_heatmap(h, signed, clip_percentile)
    colours = apply_colormap(level, colormap).astype(np.float64) / 255
    strength = alpha * np.sqrt(np.abs(level - 0.5) * 2 if signed else level)[..., None]
    blended = (1 - strength) * picture + strength * colours
    return Image.fromarray((np.clip(blended, 0, 1) * 255).round().astype(np.uint8))


def image_from_tensor(image: torch.Tensor | np.ndarray) -> Image.Image:
    picture = np.asarray(image, dtype=np.float64)
    if picture.ndim == 3 and picture.shape[0] in (1, 3):
        picture = picture.transpose(1, 2, 0)
    return Image.fromarray((np.clip(picture.squeeze(), 0, 1) * 255).round().astype(np.uint8))


def time_ticks(steps: int, count: int = 6) -> list[int]:
    """About ``count`` round time steps from 0 to the last step (0, 10, 20, … or 0, 50, …)."""
    if steps <= 1:
        return [0]
    last = steps - 1
    raw = last / max(count - 1, 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = max(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), 1)
    return [int(t) for t in np.arange(0, last + 1, step)]


def series_plot(
    series: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray,
    truth: torch.Tensor | np.ndarray | None = None, width: int = 800, panel_height: int = 120,
) -> Image.Image:  # fmt: skip
    """One panel per feature: the series as a line over a background shaded by the mask (T, D)
    in [0, 1] (the sequential colour map's light end, white = 0, orange = 1); the ground truth
    (T, D) of 0/1, when given, as a green band under each panel; a time axis at the bottom."""
    from PIL import ImageDraw

    values, weights = np.asarray(series, np.float64), np.clip(np.asarray(mask, np.float64), 0, 1)
    steps, features = values.shape
    left, band, axis = 40, 8 if truth is not None else 0, 34
    picture = Image.new("RGB", (width, panel_height * features + axis), "white")
    draw = ImageDraw.Draw(picture)
    x_of = np.linspace(left, width - 1, steps + 1)
    shade = np.array([255, 140, 0], dtype=np.float64)
    for d in range(features):
        top, bottom = d * panel_height, (d + 1) * panel_height - 1
        plot_bottom = bottom - band
        for t in range(steps):
            colour = tuple(int(v) for v in (255 - weights[t, d] * (255 - shade)).round())
            draw.rectangle([x_of[t], top, x_of[t + 1], plot_bottom], fill=colour)
            if truth is not None and np.asarray(truth)[t, d] > 0:
                draw.rectangle([x_of[t], plot_bottom + 2, x_of[t + 1], bottom - 1],
                               fill=(27, 127, 59))  # fmt: skip
        low, high = values[:, d].min(), values[:, d].max()
        scale = (high - low) or 1.0
        ys = plot_bottom - 8 - (values[:, d] - low) / scale * (panel_height - band - 16)
        xs = (x_of[:-1] + x_of[1:]) / 2
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(20, 20, 120), width=2)
        draw.line([left, bottom, width, bottom], fill=(160, 160, 160))
        draw.text((2, top + 2), f"x{d}", fill=(0, 0, 0))
    base = panel_height * features
    draw.line([left, base, width - 1, base], fill=(60, 60, 60))
    for t in time_ticks(steps):
        x = float((x_of[t] + x_of[t + 1]) / 2)
        draw.line([x, base, x, base + 5], fill=(60, 60, 60))
        draw.text((x - 3 * len(str(t)), base + 7), str(t), fill=(0, 0, 0))
    label = "time step" + ("   (green band: ground truth)" if truth is not None else "")
    draw.text((left, base + 21), label, fill=(60, 60, 60))
    return picture


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
