"""Where the engine keeps what it computes once and reuses: shearlet systems, pattern sets, GAD
support sets. ``EXPLAINER_CACHE_DIR`` (default ``~/.cache/explainer``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("EXPLAINER_CACHE_DIR", Path.home() / ".cache" / "explainer"))
    return root.joinpath(*parts)


def save_record(path: str | Path, fmt: str, record: dict) -> Path:
    """Write a dict of tensors and plain values, tagged with its format name."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": fmt, **record}, path)
    return path


def load_record(path: str | Path, fmt: str, error: type[Exception], what: str) -> dict:
    """Read a file written by :func:`save_record` with format ``fmt`` (tensors only, no code)."""
    import torch

    try:
        record = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as missing:
        raise error(f"no {what} at {path}") from missing
    except Exception as failure:  # a truncated or foreign file
        raise error(f"{path} is not a {what}: {failure}") from failure
    if not isinstance(record, dict) or record.pop("format", None) != fmt:
        raise error(f"{path} is not a {what} ({fmt})")
    return record


STAGING_PREFIX = ".writing-"


def holds_files(folder: Path) -> bool:
    """``folder`` holds something besides staging folders that a killed writer left behind."""
    return folder.is_dir() and any(not e.name.startswith(STAGING_PREFIX) for e in folder.iterdir())


def write_staged(out: Path, write: Callable[[Path], Any]) -> dict[str, Path]:
    """What ``write(staging)`` writes, moved into ``out`` all or none: written into a hidden
    staging folder inside ``out`` and moved in only once everything is written (a folder of the
    same name already in ``out`` is replaced). On a failure the staging
    folder goes, and so do the folders this call created; files already in ``out`` are left as
    they were. Returns each moved entry's name → its path in ``out``."""
    created = next((folder for folder in reversed([out, *out.parents]) if not folder.exists()),
                   None)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        write(staging)
        paths = {}
        for entry in sorted(staging.iterdir()):
            paths[entry.name] = out / entry.name
            if paths[entry.name].is_dir():
                shutil.rmtree(paths[entry.name])
            entry.replace(paths[entry.name])
        return paths
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
