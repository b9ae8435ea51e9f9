"""Real photographs shipped inside the scikit-image wheel, usable by name offline."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _motorcycle(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return data.stereo_motorcycle()[side]

    return load


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": _skimage("chelsea"),  # a cat: EfficientNet-Lite0 says Egyptian cat (285)
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "camera": _skimage("camera"),  # greyscale
    "coins": _skimage("coins"),  # greyscale
    "clock": _skimage("clock"),  # greyscale
    "moon": _skimage("moon"),  # greyscale
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "brick": _skimage("brick"),
}


@functools.cache
def sample_size(name: str) -> tuple[int, int]:
    """(width, height) of a sample photograph, as an uploaded image's is recorded."""
    height, width = load_sample(name).shape[:2]
    return width, height


def load_sample(name: str) -> np.ndarray:
    """A sample photograph as uint8 RGB (H, W, 3)."""
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}")
    array = np.asarray(SAMPLES[name]())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))
