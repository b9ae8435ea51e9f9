"""Image decoding and validation, samples, and the recorded resize policy."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import SAMPLES, InputError, decode_image, fit_to_size, load_image, load_sample


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(load_sample("coffee"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_accepted_formats(photo, fmt):
    decoded = decode_image(encode(photo, fmt))
    assert decoded.mode == "RGB" and decoded.size == photo.size
    error = np.abs(np.asarray(decoded, float) - np.asarray(photo, float)).mean()
    assert error < (0.5 if fmt == "PNG" else 8)


def test_refusals(photo):
    with pytest.raises(InputError, match="empty"):
        decode_image(b"")
    with pytest.raises(InputError, match="not a readable image"):
        decode_image(b"this is text, not an image")
    with pytest.raises(InputError, match="format GIF not accepted"):
        decode_image(encode(photo, "GIF"))
    jpeg = encode(photo, "JPEG")
    with pytest.raises(InputError, match="truncated or corrupt"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(InputError, match="limit is 1000 bytes"):
        decode_image(jpeg, max_bytes=1000)
    with pytest.raises(InputError, match="pixels"):
        decode_image(encode(photo, "PNG"), max_pixels=1000)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(InputError, match=r"pixels|too large"):
        decode_image(png_header_only(100_000, 100_000))
    with pytest.raises(InputError, match="pixels"):
        decode_image(png_header_only(8000, 6000))  # 48 MP > the 40 MP default


def test_alpha_and_greyscale_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    grey = Image.new("L", (4, 4), 100)
    assert decode_image(encode(grey, "PNG")).getpixel((1, 1)) == (100, 100, 100)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 40)
    array = np.asarray(decoded)
    assert array[:10].mean() > 200 and array[-10:].mean() < 60  # the band is now at the top


def test_resize_policies_are_recorded():
    image = torch.rand(3, 300, 450)
    cropped, how = fit_to_size(image, (224, 224), "center_crop")
    assert cropped.shape == (3, 224, 224)
    assert how["crop_box"] == (0, (336 - 224) // 2, 224, 224)
    stretched, how = fit_to_size(image, (224, 224), "resize")
    assert stretched.shape == (3, 224, 224) and how["crop_box"] is None
    kept, how = fit_to_size(image, (224, 224), "none")
    assert kept.shape == (3, 300, 450)


def test_load_image_sources_agree(tmp_path):
    array = load_sample("chelsea")
    path = tmp_path / "chelsea.png"
    Image.fromarray(array).save(path)
    from_sample, record = load_image("chelsea", (224, 224))
    from_file, file_record = load_image(str(path), (224, 224))
    from_bytes, _ = load_image(path.read_bytes(), (224, 224))
    assert torch.equal(from_sample, from_file) and torch.equal(from_file, from_bytes)
    assert record.source == "sample:chelsea" and file_record.source == "file:chelsea.png"
    assert record.original_size == (300, 451) and record.size == (224, 224)
    with pytest.raises(InputError, match="no sample or file"):
        load_image("no-such-thing")


def test_all_samples_load_as_rgb():
    for name in SAMPLES:
        array = load_sample(name)
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, name


def test_extreme_aspect_ratios_are_refused_before_scaling():
    """Centre-cropping a 10000×1 strip to 224² would scale it to 2 240 000×224 first: refused
    with the size it would have had; 'resize' (straight to 224²) is fine."""
    strip = torch.rand(3, 1, 10_000)
    with pytest.raises(InputError, match="scaled to 2240000×224"):
        fit_to_size(strip, (224, 224), "center_crop")
    assert fit_to_size(strip, (224, 224), "resize")[0].shape == (3, 224, 224)
    wide = torch.rand(3, 100, 1000)  # an ordinary panorama still fits
    assert fit_to_size(wide, (224, 224), "center_crop")[0].shape == (3, 224, 224)
