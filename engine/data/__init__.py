"""Inputs: image decoding and validation, sample photographs, and the recorded resize policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.data.archives import read_zip_entry
from engine.data.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    InputError,
    InputRecord,
    ResizePolicy,
    decode_image,
    fit_to_size,
    image_to_tensor,
    open_image,
    sha256_bytes,
)
from engine.data.samples import SAMPLES, load_sample

ImageSource = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor


def load_image(
    source: ImageSource,
    size: tuple[int, int] | None = None,
    policy: ResizePolicy = "center_crop",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, InputRecord]:
    """Any supported image source → ((3, h, w) tensor in [0, 1], record of what was done).

    A string names a bundled sample (``chelsea``) or else a file path; bytes are decoded with
    :func:`decode_image`; arrays and tensors are taken as RGB in [0, 1] (uint8 arrays in 0..255).
    """
    if isinstance(source, str) and source in SAMPLES:
        array = load_sample(source)
        tensor, name, digest = image_to_tensor(array), f"sample:{source}", _digest(array)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InputError(
                f"no sample or file named {str(source)!r}; samples: {', '.join(SAMPLES)}"
            )
        data = path.read_bytes()
        tensor = image_to_tensor(decode_image(data, max_pixels=max_pixels))
        name, digest = f"file:{path.name}", sha256_bytes(data)
    elif isinstance(source, bytes):
        tensor = image_to_tensor(decode_image(source, max_pixels=max_pixels))
        name, digest = "bytes", sha256_bytes(source)
    elif isinstance(source, Image.Image):
        array = np.asarray(source.convert("RGB"))
        tensor, name, digest = image_to_tensor(array), "pil", _digest(array)
    elif isinstance(source, np.ndarray):
        tensor, name, digest = image_to_tensor(source), "array", _digest(source)
    elif isinstance(source, torch.Tensor):
        if source.ndim != 3 or source.shape[0] != 3:
            raise InputError(f"expected a (3, H, W) image tensor, got shape {tuple(source.shape)}")
        tensor = source.detach().float().cpu()
        name, digest = "tensor", _digest(tensor.numpy())
    else:
        raise InputError(f"unsupported image source of type {type(source).__name__}")
    original = (int(tensor.shape[1]), int(tensor.shape[2]))
    fitted, how = fit_to_size(tensor, size, policy) if size else (tensor, {"policy": "none"})
    record = InputRecord(
        source=name,
        sha256=digest,
        original_size=original,
        policy=how["policy"],
        size=(int(fitted.shape[1]), int(fitted.shape[2])),
        crop_box=how.get("crop_box"),
    )
    return fitted, record


def reference_set(
    name: str, size: tuple[int, int], policy: ResizePolicy = "center_crop"
) -> torch.Tensor:
    """Reference images (R, 3, h, w): ``samples`` (the bundled photographs) or a folder path."""
    if name == "samples":
        sources: list[ImageSource] = list(SAMPLES)
    else:
        if not Path(name).is_dir():
            raise InputError(f"reference set {name!r} is neither 'samples' nor a folder")
        sources = image_files(name)
    return torch.stack([load_image(source, size, policy)[0] for source in sources])


def image_files(folder: str | Path) -> list[Path]:
    """The PNG/JPEG/WebP files of a folder, sorted; an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no PNG/JPEG/WebP images in {folder}")
    return files


def image_batches(
    files: list[Path], size: tuple[int, int], batch_size: int, policy: ResizePolicy = "center_crop"
) -> Iterator[torch.Tensor]:
    """(b, 3, h, w) batches of the files, loaded lazily (a folder need not fit in memory)."""
    for start in range(0, len(files), batch_size):
        part = files[start : start + batch_size]
        yield torch.stack([load_image(path, size, policy)[0] for path in part])


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def _digest(array: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(array).tobytes())


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "SAMPLES",
    "ImageSource",
    "InputError",
    "InputRecord",
    "decode_image",
    "fit_to_size",
    "image_batches",
    "image_files",
    "image_to_tensor",
    "load_image",
    "load_sample",
    "open_image",
    "read_zip_entry",
    "reference_set",
]
