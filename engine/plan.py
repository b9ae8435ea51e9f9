"""What a request will need before it runs: the checks that the API (at submit) and
:func:`engine.explain` (at run time) share."""

from __future__ import annotations

from engine.method import MethodOptions
from engine.models import ModelSpec, row_bytes


def working_set_bytes(spec: ModelSpec, options: MethodOptions, height: int, width: int) -> int:
    """Memory one image explained at height × width needs at once, at the least: the method's
    own tensors plus the passes of the rows it cannot split (one row for methods that chunk
    them). 0 where the model's pass memory is unknown and the method holds nothing itself."""
    per_row = row_bytes(spec, height, width) or 0
    return options.working_set_bytes(height, width) + options.rows_per_pass() * per_row


def rows_within(
    spec: ModelSpec, options: MethodOptions, height: int, width: int, budget: int
) -> int | None:
    """Rows per model pass that keep a job within ``budget`` bytes (at least one), or None
    where the model's pass memory is unknown."""
    per_row = row_bytes(spec, height, width)
    if not per_row:
        return None
    return max(1, (budget - options.working_set_bytes(height, width)) // per_row)
