"""What the server offers: methods (from the method registry) and quality metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from engine.catalogue import all_methods, all_metrics
from service.deps import require_key
from service.errors import ERRORS

router = APIRouter(dependencies=[Depends(require_key)], responses={401: ERRORS[401]})


@router.get("/methods")
def methods() -> list[dict[str, Any]]:
    """Every method: family, input kinds, and its options with defaults and bounds."""
    return [m.describe() for m in all_methods()]


@router.get("/quality-metrics")
def quality_metrics() -> list[dict[str, Any]]:
    """Every quality metric: its definition, the score keys it writes and its parameters."""
    return [m.describe() for m in all_metrics()]
