"""What the server offers: methods (from the method registry), quality metrics, the meaning of
every score, and the bundled samples (with thumbnails of the photographs)."""

from __future__ import annotations

import functools
import io
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field

from engine.catalogue import all_methods, all_metrics
from engine.data import SAMPLES, load_sample
from engine.data.timeseries import SERIES_SAMPLES
from engine.metrics.glossary import describe_scores
from service.deps import require_key
from service.errors import ERRORS, ApiError, short

router = APIRouter(dependencies=[Depends(require_key)], responses={401: ERRORS[401]})
THUMBNAIL_SIDE = 160  # pixels, the longer side


class Sample(BaseModel):
    name: str
    kind: Literal["image", "timeseries"]
    thumbnail: str | None  # URL of a small PNG (photographs only)


class ScoreMeaning(BaseModel):
    meaning: str
    better: Literal["higher", "lower"] | None
    baseline: str | None = Field(
        None, description="The key of the score's random-baseline counterpart, written by the "
        "same metric (null: none).",
    )  # fmt: skip


@router.get("/methods")
def methods() -> list[dict[str, Any]]:
    """Every method: family, input kinds, and its options with defaults and bounds."""
    return [m.describe() for m in all_methods()]


@router.get("/quality-metrics")
def quality_metrics() -> list[dict[str, Any]]:
    """Every quality metric: its definition, the score keys it writes, its parameters and its
    cost, ``model_passes_224``: the input rows it puts through the model per 224² image at its
    defaults (run in batches; compare a method's ``model_passes``)."""
    return [m.describe() for m in all_metrics()]


@router.get("/scores")
def scores() -> dict[str, ScoreMeaning]:
    """Every score key a result can hold: its meaning in one line, which direction is better
    (null: a property of the explanation, not a grade), and its random baseline's key."""
    return {key: ScoreMeaning(**value) for key, value in describe_scores().items()}


@router.get("/samples")
def samples() -> list[Sample]:
    """The bundled inputs: photographs (for image models) and series with their ground truth
    (for time-series models), usable as ``sample`` in POST /explain."""
    return [
        *(Sample(name=n, kind="image", thumbnail=f"/samples/{n}/thumbnail.png") for n in SAMPLES),
        *(Sample(name=n, kind="timeseries", thumbnail=None) for n in SERIES_SAMPLES),
    ]


@functools.cache
def _thumbnail(name: str) -> bytes:
    picture = Image.fromarray(load_sample(name))
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@router.get(
    "/samples/{name}/thumbnail.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: ERRORS[404]},
)
def sample_thumbnail(name: str) -> Response:
    """A bundled photograph, at most 160 pixels on its longer side."""
    if name not in SAMPLES:
        raise ApiError(404, "not_found", f"no bundled photograph {short(name)!r}")
    return Response(_thumbnail(name), media_type="image/png",
                    headers={"Cache-Control": "max-age=86400"})  # fmt: skip
