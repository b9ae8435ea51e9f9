"""Where the engine keeps what it computes once and reuses: shearlet systems, pattern sets, GAD
support sets. ``EXPLAINER_CACHE_DIR`` (default ``~/.cache/explainer``)."""

from __future__ import annotations

import os
from pathlib import Path


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
