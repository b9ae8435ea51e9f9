"""Heat-map and overlay rendering."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.render import (
    apply_colormap,
    colour_key,
    heatmap_image,
    normalise_heatmap,
    overlay_image,
    png_bytes,
)


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


def test_one_colour_map_per_kind_and_its_key():
    """Signed maps get the diverging map (its middle, 0, is near white), unsigned ones the
    sequential map; the key's ends are the clipped values the extreme colours stand for."""
    signed = np.array([[-2.0, 0.0, 1.0, 2.0]])
    key = colour_key(signed, signed=True, clip_percentile=100)
    assert key["colormap"] == "coolwarm" and (key["low"], key["high"]) == (-2.0, 2.0)
    assert key["colors"][0] == "#3b4cc0" and key["colors"][-1] == "#b40426"
    middle = tuple(int(key["colors"][4][i : i + 2], 16) for i in (1, 3, 5))
    assert min(middle) > 190  # 0 is pale: neither evidence for nor against
    assert np.asarray(heatmap_image(signed, signed=True, clip_percentile=100))[0, 0].tolist() == [
        59, 76, 192]  # fmt: skip
    unsigned = colour_key(np.array([[0.0, 3.0]]), signed=False, clip_percentile=100)
    assert unsigned["colormap"] == "inferno" and (unsigned["low"], unsigned["high"]) == (0.0, 3.0)
    assert len(unsigned["colors"]) == 9 and unsigned["colors"][-1] == "#fcffa4"


def test_overlay_shows_a_weak_speckle():
    """A pixel at a tenth of the clipped maximum still visibly changes the photograph."""
    image = np.full((3, 8, 8), 0.5)
    heat = np.zeros((8, 8))
    heat[0, 0], heat[1, 1] = 1.0, 0.1
    picture = np.asarray(overlay_image(image, heat, clip_percentile=100)).astype(int)
    assert np.abs(picture[1, 1] - 128).max() > 25


def test_series_plot_has_a_time_axis_and_the_ground_truth():
    from engine.render import series_plot, time_ticks

    assert time_ticks(50) == [0, 10, 20, 30, 40]
    assert time_ticks(200) == [0, 50, 100, 150]
    values = np.sin(np.linspace(0, 6, 50))[:, None].repeat(2, 1)
    truth = np.zeros((50, 2))
    truth[10:20, 1] = 1
    plain = np.asarray(series_plot(values, np.zeros((50, 2))))
    marked = np.asarray(series_plot(values, np.zeros((50, 2)), truth=truth))
    assert plain.shape[0] == marked.shape[0] == 2 * 120 + 34  # the panels and the time axis
    green = np.all(marked == (27, 127, 59), axis=-1)
    rows, cols = np.nonzero(green)
    assert rows.min() > 120 and rows.max() < 240  # feature 1's panel only
    x_of = np.linspace(40, 799, 51)
    assert x_of[10] - 1 <= cols.min() and cols.max() <= x_of[20] + 1  # steps 10 to 19
    assert not np.all(plain == (27, 127, 59), axis=-1).any()
    axis = marked[240:]
    assert (axis < 100).all(axis=-1).sum() > 50  # tick marks and labels drawn
