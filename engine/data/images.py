"""Image decoding with validation, and the recorded resize/crop policy."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 40_000_000  # well above any photo, far below a decompression bomb
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
MIN_SIDE = 32  # what the models' strided convolutions need (resize='none' keeps the image's)

ResizePolicy = Literal["center_crop", "resize", "none"]


class InputError(ValueError):
    """The input cannot be used: not an image, corrupt, too large, wrong shape..."""


class ImageTooSmall(InputError):
    """An image below the smallest size a model can take."""


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes to an RGB image, applying EXIF orientation.

    The pixel count is checked from the header *before* the pixels are decoded, so a
    decompression bomb is refused without allocating it. Alpha is composited on white,
    greyscale and palette images become RGB.
    """
    if not data:
        raise InputError("empty image file")
    if len(data) > max_bytes:
        raise InputError(f"image file is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise InputError("not a readable image (PNG, JPEG or WebP expected)") from None
    except Image.DecompressionBombError as error:
        raise InputError(f"image too large: {error}") from error
    except Image.DecompressionBombWarning as error:
        raise InputError(f"image too large: {error}") from error
    if image.format not in ALLOWED_FORMATS:
        raise InputError(
            f"image format {image.format} not accepted; use one of {', '.join(ALLOWED_FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(f"image has {width}×{height} pixels; the limit is {max_pixels} pixels")
    if width < 1 or height < 1:
        raise InputError("image has no pixels")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"truncated or corrupt {image.format} image: {error}") from error
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB image → float32 tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(f"expected an RGB image array (H, W, 3), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise InputError("image values must be finite and within [0, 1]")
    return tensor.contiguous()


@dataclass(frozen=True)
class InputRecord:
    """How an input was obtained and brought to the model's size (part of every result)."""

    source: str
    sha256: str
    original_size: tuple[int, int]  # (H, W)
    policy: str
    size: tuple[int, int]
    crop_box: tuple[int, int, int, int] | None = None  # (top, left, height, width) after resize

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_size(
    height: int, width: int, size: tuple[int, int], policy: ResizePolicy
) -> tuple[int, int]:
    """The (h, w) an image is scaled to before any crop (see :func:`fit_to_size`)."""
    if policy == "none":
        return height, width
    if policy == "resize":
        return size
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


def check_fits(
    height: int,
    width: int,
    size: tuple[int, int],
    policy: ResizePolicy,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> None:
    """Refuse an image whose scaled copy would exceed ``max_pixels`` (a 10000×1 strip centre-
    cropped to 224² would be scaled to 2 240 000×224 first), before anything is allocated, and
    one kept at a size below :data:`MIN_SIDE`."""
    if policy == "none" and min(height, width) < MIN_SIDE:
        raise ImageTooSmall(
            f"a {width}×{height} image kept at its size (resize='none') is below the smallest "
            f"side of {MIN_SIDE} pixels; use resize='center_crop' or 'resize'"
        )
    scaled_h, scaled_w = scaled_size(height, width, size, policy)
    if scaled_h * scaled_w > max_pixels:
        raise InputError(
            f"a {width}×{height} image would be scaled to {scaled_w}×{scaled_h} for "
            f"resize={policy!r} to {size[1]}×{size[0]}, above the limit of {max_pixels} pixels: "
            "crop it to a less extreme aspect ratio or use resize='resize'"
        )


def fit_to_size(
    image: torch.Tensor, size: tuple[int, int], policy: ResizePolicy = "center_crop"
) -> tuple[torch.Tensor, dict]:
    """Bring a (3, H, W) image to ``size`` = (h, w).

    ``center_crop``: scale the shorter side to fit (antialiased bilinear), then crop the centre;
    ``resize``: scale to exactly (h, w), ignoring the aspect ratio; ``none``: keep as is.
    """
    _, height, width = image.shape
    target_h, target_w = size
    check_fits(height, width, size, policy)
    if policy == "none" or (height, width) == (target_h, target_w):
        return image, {"policy": policy, "size": (height, width), "crop_box": None}
    if policy == "resize":
        return _resize(image, (target_h, target_w)), {
            "policy": policy,
            "size": (target_h, target_w),
            "crop_box": None,
        }
    if policy != "center_crop":
        raise InputError(f"unknown resize policy {policy!r}")
    scaled_h, scaled_w = scaled_size(height, width, size, policy)
    scaled = _resize(image, (scaled_h, scaled_w))
    top, left = (scaled_h - target_h) // 2, (scaled_w - target_w) // 2
    cropped = scaled[:, top : top + target_h, left : left + target_w]
    return cropped.contiguous(), {
        "policy": policy,
        "size": (target_h, target_w),
        "crop_box": (top, left, target_h, target_w),
    }


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = F.interpolate(
        image[None], size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].clamp(0, 1)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
