"""Write an explanation's files: arrays, pictures, and the summary with its record. Which files
an input kind has is the kind's (``engine.kinds``). The pictures can be drawn later, from the
arrays saved beside the files (:func:`render_pictures`): a service marks a job done once its
data is written and draws its PNGs when they are first asked for."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from engine.kinds import input_kind
from engine.kinds.base import PICTURE_SOURCES
from engine.render import png_bytes
from engine.result import Explanation

__all__ = ["PICTURE_SOURCES", "render_pictures", "write_artifacts"]


def write_artifacts(
    explanation: Explanation, out_dir: str | Path, index: int = 0, pictures: bool = True
) -> dict[str, Path]:
    """Write input ``index`` of ``explanation`` into ``out_dir``; returns name → path. With
    ``pictures`` False the PNGs are named but not drawn; ``PICTURE_SOURCES`` holds what
    :func:`render_pictures` draws them from."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return input_kind(explanation.input_kind).write(explanation, out, index, pictures)


def render_pictures(sources: bytes) -> dict[str, bytes]:
    """The PNG files (name → bytes) drawn from the content of a ``PICTURE_SOURCES`` file: the
    same bytes :func:`write_artifacts` writes with ``pictures`` True."""
    with np.load(io.BytesIO(sources), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    kind = input_kind(str(arrays.pop("kind")))
    return {name: png_bytes(picture) for name, picture in kind.render(arrays).items()}
