"""Where the engine keeps what it computes once and reuses: shearlet systems, pattern sets, GAD
support sets. ``EXPLAINER_CACHE_DIR`` (default ``~/.cache/explainer``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("EXPLAINER_CACHE_DIR", Path.home() / ".cache" / "explainer"))
    return root.joinpath(*parts)
