"""Input kinds as strategies: everything that differs between images and time series lives in
one object per kind (:class:`~engine.kinds.base.InputKind`); a new kind is one module and one
entry here."""

from __future__ import annotations

from engine.kinds.base import InputKind
from engine.kinds.image import ImageKind, reduce_channels
from engine.kinds.series import SeriesKind

KINDS: dict[str, InputKind] = {kind.name: kind for kind in (ImageKind(), SeriesKind())}


def input_kind(name: str) -> InputKind:
    if name not in KINDS:
        raise ValueError(f"unknown input kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


__all__ = ["KINDS", "InputKind", "input_kind", "reduce_channels"]
