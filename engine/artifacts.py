"""Write an explanation's files: arrays, pictures, and the summary with its record. Which files
an input kind has is the kind's (``engine.kinds``)."""

from __future__ import annotations

from pathlib import Path

from engine.kinds import input_kind
from engine.result import Explanation


def write_artifacts(
    explanation: Explanation, out_dir: str | Path, index: int = 0
) -> dict[str, Path]:
    """Write input ``index`` of ``explanation`` into ``out_dir``; returns name → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return input_kind(explanation.input_kind).write(explanation, out, index)
