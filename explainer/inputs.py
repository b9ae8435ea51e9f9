"""Turning what a caller has (a bundled sample's name, a file, bytes, a PIL image, a numpy array,
a list, a tensor or a data frame) into the parts of a ``POST /explain``: either JSON fields
(``sample``) or one multipart file (``image`` or ``series``). Images travel as their own file
bytes or as lossless PNG; series as ``.npy`` (exact floats) or the caller's ``.csv``."""

from __future__ import annotations

import io
import mimetypes
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

InputKind = Literal["image", "series"]
SERIES_SUFFIXES = {".npy", ".csv", ".txt"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".mpo"}
NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Encoded:
    """The request's input: JSON ``fields`` (a sample name), or one ``file`` for multipart as
    (field, file name, bytes, content type)."""

    fields: dict[str, Any] = field(default_factory=dict)
    file: tuple[str, str, bytes, str] | None = None


def looks_like_path(text: str) -> bool:
    """A string that names a file rather than a bundled sample ('chelsea', 'state:3')."""
    return (
        "/" in text
        or os.sep in text
        or Path(text).suffix.lower() in (SERIES_SUFFIXES | IMAGE_SUFFIXES)
    )


def encode_input(
    value: Any, kind: InputKind | None, model_kind: Callable[[], InputKind]
) -> Encoded:
    """The request parts for ``value``. ``kind`` forces image or series where the value alone
    cannot tell (a 2-D array, CSV bytes); otherwise ``model_kind()`` (the model's input kind,
    looked up only when needed) decides a 2-D array."""
    if isinstance(value, str | os.PathLike):
        return encode_path(value, kind)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if data.startswith(NPY_MAGIC) or kind == "series":
            name = "series.npy" if data.startswith(NPY_MAGIC) else "series.csv"
            return Encoded(file=("series", name, data, "application/octet-stream"))
        return Encoded(file=("image", "image", data, "application/octet-stream"))
    if isinstance(value, Image.Image):
        return Encoded(file=("image", "image.png", png_bytes(value), "image/png"))
    return encode_array(as_array(value), kind, model_kind)


def encode_path(value: str | os.PathLike, kind: InputKind | None) -> Encoded:
    """A file (image, or a series .npy/.csv), else a bundled sample's name. What the file is
    comes from its bytes (:func:`file_kind`); a file that is neither, or not the ``kind`` asked
    for, raises ValueError before anything is sent."""
    path = Path(value)
    if path.is_file():
        data = path.read_bytes()
        try:
            found = file_kind(data)
        except ValueError as error:
            raise ValueError(f"{path} {error}; nothing was sent") from None
        if kind is not None and kind != found:
            raise ValueError(f"{path} holds {'an image' if found == 'image' else 'a series'}, "
                             f"not {'an image' if kind == 'image' else 'a series'} (kind="
                             f"{kind!r}); nothing was sent")  # fmt: skip
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if found == "image" and not content_type.startswith("image/"):
            content_type = "application/octet-stream"
        return Encoded(file=(found, path.name, data, content_type))
    if isinstance(value, str) and not looks_like_path(value):
        return Encoded(fields={"sample": value})
    raise FileNotFoundError(f"no file {str(value)!r} (and it is not a bundled sample's name)")


def file_kind(data: bytes) -> InputKind:
    """What a file's bytes hold: a series (``.npy``, or numeric comma-separated text as the
    server reads it) or an image (what Pillow can open); ValueError saying why it is neither."""
    if data.startswith(NPY_MAGIC):
        return "series"
    try:
        with Image.open(io.BytesIO(data)):
            return "image"
    except Image.DecompressionBombError:
        return "image"  # an image, too large: the server words its limit
    except (OSError, ValueError, SyntaxError):
        pass
    neither = ("neither an image (Pillow cannot open it) nor a series (a .npy file, or numbers "
               "separated by commas, one time step a line)")  # fmt: skip
    if not data.strip():
        raise ValueError(f"is empty: {neither}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns about text without numbers
            values = np.loadtxt(io.StringIO(data.decode()), delimiter=",", ndmin=2)
    except UnicodeDecodeError:
        raise ValueError(f"is {neither}") from None
    except ValueError as error:
        reason = str(error).rstrip(".")
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ValueError(f"is {neither}; read as comma-separated numbers: {reason}") from None
    if not values.size:
        raise ValueError(f"holds no numbers: {neither}")
    return "series"


def as_array(value: Any) -> np.ndarray:
    """A numpy array from an array, a list, a tensor (``.detach().cpu().numpy()``, without
    importing torch) or a data frame (``.to_numpy()``)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "to_numpy"):
        value = value.to_numpy()
    array = np.asarray(value)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise TypeError(f"cannot send an array of {array.dtype} (need numbers)")
    return array


def encode_array(
    array: np.ndarray, kind: InputKind | None, model_kind: Callable[[], InputKind]
) -> Encoded:
    """A 3-D array is an image (H×W×C, or C×H×W with 1, 3 or 4 channels); a 2-D array is a
    time × features series for a time-series model and a greyscale image otherwise."""
    if kind is None:
        if array.ndim == 3:
            kind = "image"
        elif array.ndim == 2:
            kind = model_kind()
        else:
            raise ValueError(f"cannot tell what an array of shape {array.shape} is: give an "
                             "image H×W×C or H×W, or a series time × features")  # fmt: skip
    if kind == "series":
        if array.ndim != 2:
            raise ValueError(f"a series is time × features (2-D), not {array.shape}")
        buffer = io.BytesIO()
        np.save(buffer, array.astype(np.float64 if array.dtype.kind in "biu" else array.dtype),
                allow_pickle=False)  # fmt: skip
        return Encoded(file=("series", "series.npy", buffer.getvalue(), "application/octet-stream"))
    picture = Image.fromarray(image_pixels(array))
    return Encoded(file=("image", "image.png", png_bytes(picture), "image/png"))


def image_pixels(array: np.ndarray) -> np.ndarray:
    """uint8 H×W or H×W×C pixels: floats are read as [0, 1] (rounded to 8 bits), integers as
    0–255, booleans as black and white."""
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # C×H×W, as torch keeps images
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array is H×W, H×W×3 or H×W×4, not {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("a float image must hold finite values in [0, 1]")
        return np.round(array * 255).astype(np.uint8)
    if array.min() < 0 or array.max() > 255:
        raise ValueError("an integer image must hold values in 0–255")
    return array.astype(np.uint8)


def png_bytes(picture: Image.Image) -> bytes:
    """The picture as lossless PNG (palette and other modes as RGB or RGBA)."""
    if picture.mode not in ("L", "RGB", "RGBA"):
        picture = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
