"""Heat-map and overlay rendering."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.render import apply_colormap, heatmap_image, normalise_heatmap, overlay_image, png_bytes


def test_colormap_endpoints_and_monotone_brightness():
    values = np.linspace(0, 1, 11)[None, :]
    rgb = apply_colormap(values, "inferno")[0].astype(float)
    assert tuple(rgb[0]) == (0, 0, 4) and tuple(rgb[-1]) == (252, 255, 164)
    brightness = rgb.sum(1)
    assert np.all(np.diff(brightness) > 0)


def test_normalisation_signed_and_unsigned():
    h = np.array([[-2.0, 0.0, 2.0]])
    assert np.allclose(normalise_heatmap(h, signed=True, clip_percentile=100), [[0, 0.5, 1]])
    assert np.allclose(normalise_heatmap(h, signed=False, clip_percentile=100), [[1, 0, 1]])
    assert np.all(normalise_heatmap(np.zeros((2, 2)), signed=False) == 0)


def test_overlay_keeps_cold_pixels_and_colours_hot_ones():
    image = np.full((3, 8, 8), 0.5)
    heat = np.zeros((8, 8))
    heat[0, 0] = 1.0
    picture = np.asarray(overlay_image(image, heat, alpha=1.0, clip_percentile=100))
    assert tuple(picture[5, 5]) == (128, 128, 128)  # untouched
    assert tuple(picture[0, 0]) == (252, 255, 164)  # fully coloured with the hottest colour
    decoded = Image.open(io.BytesIO(png_bytes(heatmap_image(heat))))
    assert decoded.size == (8, 8)
