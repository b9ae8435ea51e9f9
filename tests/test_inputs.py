"""Image decoding and validation, samples, and the recorded resize policy."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, PngImagePlugin

from engine.data import (
    SAMPLES,
    InputError,
    decode_image,
    fit_to_size,
    load_image,
    load_sample,
    read_zip_entry,
)


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


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb's shape)."""
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


# Hostile and unusual files (issue 25): built here, byte by byte where Pillow would not write them.
BOMB_BYTES = 50 * 1024 * 1024  # what the probe's metadata chunks decompressed to


def sixteen_bit_grey_png(level: int = 20_000, size: int = 48) -> bytes:
    """A 16-bit greyscale PNG (Pillow mode I;16) with values around ``level`` of 65535."""
    rng = np.random.default_rng(0)
    values = rng.integers(level - 2000, level + 2000, (size, size)).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


def mpo(first: tuple[int, int, int], second: tuple[int, int, int], size: int = 48) -> bytes:
    """A two-frame MPO (what phone cameras write: a JPEG plus more pictures)."""
    frames = [Image.new("RGB", (size, size), colour) for colour in (first, second)]
    return encode(frames[0], "MPO", save_all=True, append_images=frames[1:], quality=95)


def png_metadata_bomb(kind: str, size: int = BOMB_BYTES) -> bytes:
    """A small PNG with a metadata chunk that decompresses to ``size`` bytes: ``zTXt``,
    ``iTXt`` or ``iCCP`` before the pixels (as Pillow writes them), or ``zTXt-late`` after
    them (read only when the pixels are)."""
    image, info = Image.new("RGB", (40, 40), (30, 60, 90)), PngImagePlugin.PngInfo()
    if kind == "zTXt":
        info.add_text("comment", "a" * size, zip=True)
    elif kind == "iTXt":
        info.add_itxt("comment", "a" * size, zip=True)
    elif kind == "iCCP":
        return encode(image, "PNG", icc_profile=b"\0" * size)
    else:
        plain = encode(image, "PNG")
        late = chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * size))
        end = plain.rindex(b"IEND") - 4
        return plain[:end] + late + plain[end:]
    return encode(image, "PNG", pnginfo=info)


def image_zip(names: list[str]) -> bytes:
    """A zip of small stored PNGs."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i, name in enumerate(names):
            archive.writestr(name, encode(Image.new("RGB", (40, 40), (i * 40, 90, 160)), "PNG"))
    return buffer.getvalue()


def damaged_zip(names: list[str], entry: str, damage: str) -> bytes:
    """``image_zip(names)`` with ``entry`` damaged: ``crc`` (a byte of its stored data flipped),
    ``encrypted`` (the encryption flag set in both headers) or ``deflate64`` (compression
    method 9 in both headers)."""
    data = bytearray(image_zip(names))
    headers = ((b"PK\x03\x04", 26, 6, 8, 30), (b"PK\x01\x02", 28, 8, 10, 46))  # local, central
    for signature, name_at, flags_at, method_at, header in headers:
        at = data.find(signature)
        while at >= 0:
            length, extra = struct.unpack_from("<HH", data, at + name_at)
            if data[at + header : at + header + length] == entry.encode():
                if damage == "encrypted":
                    data[at + flags_at] |= 0x1
                elif damage == "deflate64":
                    struct.pack_into("<H", data, at + method_at, 9)
                elif damage == "crc" and signature == b"PK\x03\x04":
                    data[at + header + length + extra + 40] ^= 0xFF
            at = data.find(signature, at + 4)
    return bytes(data)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    """Pillow converts I;16 to RGB by clipping at 255: a mid-grey 16-bit PNG became white
    (mean 255). Scaled, its mean is 20000/257 ≈ 78 in every channel."""
    decoded = np.asarray(decode_image(sixteen_bit_grey_png(20_000)), dtype=float)
    assert decoded.shape == (48, 48, 3)
    assert abs(decoded.mean() - 20_000 / 257) < 1, decoded.mean()
    assert (decoded[..., 0] == decoded[..., 2]).all()
    bright = np.asarray(decode_image(sixteen_bit_grey_png(60_000)), dtype=float).mean()
    assert abs(bright - 60_000 / 257) < 1  # the scale keeps the order of grey levels


def test_mpo_is_read_as_its_first_frame():
    decoded = np.asarray(decode_image(mpo((200, 40, 10), (0, 0, 0))), dtype=float)
    assert np.abs(decoded.reshape(-1, 3).mean(0) - (200, 40, 10)).max() < 3


@pytest.mark.parametrize("kind", ["zTXt", "iTXt", "iCCP", "zTXt-late"])
def test_png_metadata_bombs_are_refused_before_pillow_inflates_them(kind):
    """A 50 KB PNG whose text or ICC chunk inflates to 50 MB: Pillow raised a bare ValueError
    (a 500 in the API) or, after the pixels, called it a truncated image."""
    data = png_metadata_bomb(kind)
    assert len(data) < 100_000
    name = kind.split("-")[0]
    with pytest.raises(InputError, match=rf"PNG {name} chunk .* more than 1048576 bytes; the lim"):
        decode_image(data)


def test_png_metadata_is_bounded_in_total_and_ordinary_metadata_passes():
    info = PngImagePlugin.PngInfo()
    for i in range(5):  # 5 × 0.9 MB: each under the chunk limit, together over 4 MB
        info.add_text(f"part{i}", "a" * 900_000, zip=True)
    with pytest.raises(InputError, match=r"metadata .* the limit is 4194304 bytes"):
        decode_image(encode(Image.new("RGB", (40, 40)), "PNG", pnginfo=info))
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a photo", zip=True)
    info.add_itxt("title", "ein Foto", lang="de", zip=True)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = encode(Image.new("RGB", (40, 40), (1, 2, 3)), "PNG", pnginfo=info,
                   icc_profile=profile)  # fmt: skip
    assert decode_image(photo).getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("crc", ["'b.png' is corrupt", "Bad CRC-32"]),
        ("encrypted", ["'b.png' is encrypted"]),
        ("deflate64", ["'b.png' uses compression method 9 (Deflate64)", "not supported"]),
    ],
)
def test_unreadable_zip_entries_are_input_errors_naming_the_entry(damage, words):
    """zipfile raised BadZipFile, RuntimeError and NotImplementedError (500s in the API)."""
    archive = zipfile.ZipFile(io.BytesIO(damaged_zip(["a.png", "b.png"], "b.png", damage)))
    first, second = archive.infolist()
    assert decode_image(read_zip_entry(archive, first)).size == (40, 40)  # the others still read
    with pytest.raises(InputError) as refused:
        read_zip_entry(archive, second)
    for word in words:
        assert word in str(refused.value)
