"""Reading the entries of an uploaded zip, with every way an entry can be unreadable (corrupt,
encrypted, an unsupported compression method) an :class:`InputError` that names the entry and
the problem."""

from __future__ import annotations

import lzma
import zipfile
import zlib

from engine.data.images import InputError

# zipfile reads these; any other method (Deflate64 = 9, PKWARE implode = 6, AES = 99, ...) is
# refused before reading.
READABLE_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
METHOD_NAMES = {1: "shrink", 6: "implode", 9: "Deflate64", 10: "PKWARE DCL implode",
                93: "Zstandard", 95: "xz", 98: "PPMd", 99: "AES encryption"}  # fmt: skip
ENCRYPTED_FLAG = 0x1


def entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's name as messages quote it (at most 100 characters)."""
    return repr(info.filename[:100])


def read_zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The bytes of one entry of ``archive``. An encrypted entry, one compressed with a method
    zipfile cannot read, and one whose data is corrupt (bad CRC-32, a broken stream, a local
    header that disagrees with the directory) raise :class:`InputError` naming the entry."""
    name = entry_name(info)
    if info.flag_bits & ENCRYPTED_FLAG:
        raise InputError(f"zip entry {name} is encrypted; password-protected zips are not "
                         "supported")  # fmt: skip
    if info.compress_type not in READABLE_METHODS:
        method = METHOD_NAMES.get(info.compress_type, "unknown")
        raise InputError(f"zip entry {name} uses compression method {info.compress_type} "
                         f"({method}), which is not supported; re-zip it with "
                         f"{' or '.join(READABLE_METHODS.values())}")  # fmt: skip
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as error:
        raise InputError(f"zip entry {name} is corrupt: {error}") from None
    except (NotImplementedError, RuntimeError) as error:  # a method or flag zipfile refuses
        raise InputError(f"zip entry {name} cannot be read: {error}") from None
