"""Image decoding with validation, and the recorded resize/crop policy."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
# A phone camera's JPEG with a second picture (depth map, preview): Pillow calls it MPO; its
# first frame is the photograph, read like any JPEG.
JPEG_VARIANTS = ("MPO",)
# PNG metadata that Pillow decompresses while it opens a file (text, ICC profile): a 50 KB file
# can hold a 50 MB chunk. Each chunk, and all of them together, are bounded before Pillow sees
# them (Pillow's own bounds are 1 MB a chunk and 64 MB in all).
MAX_PNG_CHUNK_BYTES = 1024 * 1024
MAX_PNG_METADATA_BYTES = 4 * 1024 * 1024
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
    decompression bomb is refused without allocating it, and so is a PNG whose metadata chunks
    would decompress to more than :data:`MAX_PNG_CHUNK_BYTES`. Alpha is composited on white,
    greyscale and palette images become RGB (16-bit greyscale scaled, not clipped); an MPO
    (a phone camera's JPEG with extra frames) is read as its first frame.
    """
    image = open_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"truncated or corrupt {image.format} image: {error}") from error
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def open_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """The image of PNG/JPEG/WebP bytes with its header read and checked (format, pixel count,
    PNG metadata; the limits of :func:`decode_image`) but no pixel decoded: what a server can
    afford to check before it queues the decoding."""
    if not data:
        raise InputError("empty image file")
    if len(data) > max_bytes:
        raise InputError(f"image file is {len(data)} bytes; the limit is {max_bytes} bytes")
    if data.startswith(PNG_SIGNATURE):
        check_png_metadata(data)
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
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InputError(f"not a readable image: its header is corrupt ({error})") from None
    if image.format in JPEG_VARIANTS:
        image.seek(0)  # the first frame is the photograph
    elif image.format not in ALLOWED_FORMATS:
        raise InputError(
            f"image format {image.format} not accepted; use one of {', '.join(ALLOWED_FORMATS)}"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(f"image has {width}×{height} pixels; the limit is {max_pixels} pixels")
    if width < 1 or height < 1:
        raise InputError("image has no pixels")
    return image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png_metadata(data: bytes) -> None:
    """Refuse a PNG whose compressed text (zTXt, iTXt) or ICC profile (iCCP) chunks decompress
    above :data:`MAX_PNG_CHUNK_BYTES` each or :data:`MAX_PNG_METADATA_BYTES` together, reading
    at most one byte past a limit. Anything else wrong with the file is left to Pillow."""
    offset, total = len(PNG_SIGNATURE), 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        start, offset = offset + 8, offset + 12 + length
        if kind == b"IEND":
            return
        if kind not in (b"zTXt", b"iTXt", b"iCCP"):
            continue
        compressed = _compressed_metadata(kind, data[start : start + length])
        if compressed is None:
            continue
        name = kind.decode("latin-1")
        size = _inflated_size(compressed, MAX_PNG_CHUNK_BYTES)
        if size > MAX_PNG_CHUNK_BYTES:
            raise InputError(f"PNG {name} chunk (metadata) decompresses to more than "
                             f"{MAX_PNG_CHUNK_BYTES} bytes; the limit is {MAX_PNG_CHUNK_BYTES} "
                             "bytes per chunk")  # fmt: skip
        total += size
        if total > MAX_PNG_METADATA_BYTES:
            raise InputError(f"PNG metadata (text and ICC chunks) decompresses to more than "
                             f"{MAX_PNG_METADATA_BYTES} bytes; the limit is "
                             f"{MAX_PNG_METADATA_BYTES} bytes")  # fmt: skip


def _compressed_metadata(kind: bytes, body: bytes) -> bytes | None:
    """The zlib stream of a zTXt, compressed iTXt or iCCP chunk; None for an uncompressed
    iTXt chunk or a malformed one."""
    if kind in (b"zTXt", b"iCCP"):  # name \0 method stream
        name_end = body.find(b"\0")
        return body[name_end + 2 :] if name_end >= 0 else None
    if kind == b"iTXt":  # keyword \0 flag method language \0 translated \0 text
        name_end = body.find(b"\0")
        if name_end < 0 or body[name_end + 1 : name_end + 2] != b"\1":
            return None
        language_end = body.find(b"\0", name_end + 3)
        translated_end = body.find(b"\0", language_end + 1) if language_end >= 0 else -1
        return body[translated_end + 1 :] if translated_end >= 0 else None
    return None


def _inflated_size(stream: bytes, limit: int) -> int:
    """Bytes the zlib ``stream`` inflates to, counting at most ``limit + 1`` (a corrupt stream
    counts what it gave; Pillow reports the corruption)."""
    inflater = zlib.decompressobj()
    try:
        return len(inflater.decompress(stream, limit + 1))
    except zlib.error:
        return 0


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode as 8-bit RGB: alpha composited on white, greyscale and palette images
    spread to three channels, 16-bit greyscale scaled to 8 bits (Pillow's own conversion would
    clip every value above 255 to white)."""
    if image.mode in SIXTEEN_BIT_GREY:
        image = Image.fromarray(scale_to_8_bits(np.asarray(image)), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Pillow's modes for 16-bit greyscale PNGs ("I" holds 32-bit integers; from a PNG, 16-bit ones).
SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def scale_to_8_bits(values: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) → uint8 (0..255), rounded: v · 255 / 65535 = v / 257."""
    scaled = np.clip(values.astype(np.float64), 0, 65535) / 257
    return np.round(scaled).astype(np.uint8)


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
