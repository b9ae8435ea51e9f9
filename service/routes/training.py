"""Training jobs over the API: the pattern sets of PatternNet, PatternAttribution and
Pattern-Guided IG (``POST /patterns``) and GAD's support networks (``POST /support-sets``), run
by the workers like explanations (progress, cancel) and stored in the shared cache, where every
worker finds them; ``GET`` lists what exists."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from engine.data import (
    DEFAULT_MAX_PIXELS,
    InputError,
    decode_image,
    image_files,
    load_image,
    reference_set,
)
from engine.models import MODELS, ModelError, ModelSpec
from engine.models.inspection import WHY_NEEDED
from jobs.records import JobRecord, new_job_id
from jobs.settings import Settings
from jobs.training import as_uint8, images_as_npz, trained_sets
from service.deps import ArtifactsDep, DispatcherDep, ModelsDep, SettingsDep, StoreDep, Tenant
from service.errors import ERRORS, ApiError, clean, short
from service.routes.jobs import job_url
from service.schemas import JobCreated
from service.submission import parse_json

router = APIRouter()
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class PatternsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("efficientnet_lite0", description="An image model from GET /models.")
    images: str = Field("samples", max_length=200, description="'samples' (the bundled "
                        "photographs) or an image folder this server offers by name; "
                        "multipart: the uploaded zip instead")  # fmt: skip
    estimator: Literal["two_component", "linear"] = Field(
        "two_component", description="PatternAttribution's two-component estimator (A+) or "
        "PatternNet's linear one.",
    )  # fmt: skip
    seed: int = Field(0, ge=0, le=2**31 - 1)


class SupportSetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("efficientnet_lite0", description="An image model from GET /models.")
    class_a: int | str = Field(..., description="The class of the images_a file: index or label")
    class_b: int | str = Field(..., description="The class of the images_b file: index or label")
    images_a: str | None = Field(None, max_length=200, description="JSON body: an image folder "
                                 "this server offers by name, for class_a")  # fmt: skip
    images_b: str | None = Field(None, max_length=200, description="The same for class_b")
    epochs: int = Field(5, ge=1, description="Epochs per support network (at most the server's "
                        "EXPLAINER_MAX_TRAINING_EPOCHS)")  # fmt: skip
    learning_rate: float = Field(4e-5, gt=0, le=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)


def training_body(request: type[BaseModel], files: dict[str, str]) -> dict[str, Any]:
    """The OpenAPI request body: the request as JSON, or as multipart with zip files."""
    ref = {"$ref": f"#/components/schemas/{request.__name__}"}
    properties = {name: {"type": "string", "format": "binary", "description": text}
                  for name, text in files.items()}  # fmt: skip
    multipart = {
        "schema": {"type": "object", "additionalProperties": False,
                   "required": ["request", *files], "properties": {"request": ref, **properties}},
        "encoding": {"request": {"contentType": "application/json"}},
    }  # fmt: skip
    content = {"application/json": {"schema": ref}, "multipart/form-data": multipart}
    return {"requestBody": {"required": True, "content": content}}


def read_folder(name: str, size: tuple[int, int], settings: Settings) -> np.ndarray:
    """The images of a folder the operator offers (EXPLAINER_TRAINING_SETS) as uint8."""
    folder = settings.training_sets.get(name)
    if folder is None:
        offered = ", ".join(["samples", *settings.training_sets]) or "none"
        raise ApiError(422, "invalid_images", f"no image set {short(name)!r} on this server; "
                       f"offered: {offered}")  # fmt: skip
    try:
        files = image_files(folder)
    except InputError as error:
        raise ApiError(422, "invalid_images", f"image set {name}: {error}") from None
    if len(files) > settings.max_training_images:
        raise ApiError(413, "too_many_images", f"image set {name} holds {len(files)} images; "
                       f"the limit is {settings.max_training_images}")  # fmt: skip
    return as_uint8(reference_set(str(Path(folder).resolve()), size))  # a path, never "samples"


def image_model(name: str) -> ModelSpec:
    """An image model whose Python modules a training job can use (patterns, support nets)."""
    spec = MODELS.get(name)
    if spec is None or spec.input_kind != "image":
        raise ApiError(422, "unknown_model", f"{name!r} is not an image model of this server")
    if "modules" not in spec.allows:
        raise ApiError(422, "method_not_applicable", f"model {name} cannot be trained for: "
                       f"{WHY_NEEDED['modules']}")  # fmt: skip
    return spec


def read_zip(data: bytes, field: str, size: tuple[int, int], settings: Settings) -> np.ndarray:
    """The images of an uploaded zip, at the model's size, as uint8 (N, H, W, 3); every bound
    (entries, bytes per entry, pixels) is checked before anything is decoded."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ApiError(422, "invalid_images", f"{field} is not a zip archive") from None
    with archive:
        entries = [
            i for i in archive.infolist() if Path(i.filename).suffix.lower() in IMAGE_SUFFIXES
        ]
        if not entries:
            raise ApiError(422, "invalid_images", f"{field} holds no PNG, JPEG or WebP file")
        if len(entries) > settings.max_training_images:
            raise ApiError(413, "too_many_images", f"{field} holds {len(entries)} images; the "
                           f"limit is {settings.max_training_images}")  # fmt: skip
        images = []
        for info in entries:
            if info.file_size > settings.max_upload_bytes:
                raise ApiError(413, "invalid_images", f"{info.filename[:100]} is above "
                               f"{settings.max_upload_bytes} bytes")  # fmt: skip
            try:
                pixels = min(settings.max_pixels, DEFAULT_MAX_PIXELS)
                image = decode_image(archive.read(info), max_bytes=settings.max_upload_bytes,
                                     max_pixels=pixels)  # fmt: skip
            except InputError as error:
                raise ApiError(422, "invalid_images", f"{info.filename[:100]}: {error}") from None
            images.append(load_image(image, size)[0])
    return as_uint8(torch.stack(images))


async def read_training(request: Request, files: tuple[str, ...], settings: Settings):
    """(JSON request, {file field: bytes}) of a training request: JSON, or multipart with the
    request as the field 'request' and the zip files."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return parse_json(await request.body()), {}
    form = await request.form(max_files=len(files), max_fields=len(files) + 1)
    if sorted(form.keys()) != sorted(["request", *files]) or not all(
        hasattr(form[name], "read") for name in files
    ):
        raise ApiError(422, "invalid_request", "multipart needs a JSON field 'request' and the "
                       f"file fields {', '.join(files)}")  # fmt: skip
    payload = parse_json(form["request"] if isinstance(form["request"], str) else b"")
    uploads = {}
    for name in files:
        limit = settings.max_training_upload_bytes
        uploads[name] = await form[name].read(limit + 1)
        if len(uploads[name]) > limit:
            raise ApiError(413, "payload_too_large", f"{name} above {limit} bytes")
    return payload, uploads


def validated(model: type[BaseModel], payload: dict) -> Any:
    """Strict JSON types, as for explain requests (service.submission.parse_request)."""
    try:
        return model.model_validate_json(json.dumps(payload), strict=True)
    except ValidationError as error:
        details = clean(error.errors())
        raise ApiError(422, "invalid_request", "the request is invalid", details) from None


def queue(request: Request, record: JobRecord, data: bytes | None, store, artifacts,
          dispatcher) -> JobCreated:  # fmt: skip
    if data is not None:
        artifacts.save_input(record.id, data)
    store.create(record)
    dispatcher.submit(record.id)
    return JobCreated(id=record.id, url=job_url(request, record.id), status="queued")


def training_record(kind: str, method: str, model: str, options: dict, seed: int,
                    source: dict, tenant: str | None) -> JobRecord:  # fmt: skip
    return JobRecord(id=new_job_id(), kind=kind, created_at=time.time(), model=model,
                     method=method, options=options, seed=seed, input=source,
                     content_hash="", owner=tenant)  # fmt: skip


@router.post(
    "/patterns",
    status_code=202,
    response_model=JobCreated,
    responses=ERRORS,
    openapi_extra=training_body(PatternsRequest, {"images": "A zip of PNG/JPEG/WebP images"}),
)
async def make_patterns(
    request: Request, tenant: Tenant, settings: SettingsDep, store: StoreDep,
    artifacts: ArtifactsDep, dispatcher: DispatcherDep, _: ModelsDep,
):  # fmt: skip
    """Estimate a model's pattern set (for pattern_net, pattern_attribution,
    pattern_guided_ig) from the bundled photographs or an image folder this server offers (JSON
    body, 'images' by name) or from an uploaded zip of images (multipart: 'request' +
    'images'). A job: follow it at GET /jobs/{id}."""
    payload, uploads = await read_training(request, ("images",), settings)
    parsed = validated(PatternsRequest, payload)
    spec = image_model(parsed.model)

    def accept():
        data, source = None, {"kind": "samples"}
        if uploads or parsed.images != "samples":
            images = (read_zip(uploads["images"], "images", spec.input_size, settings) if uploads
                      else read_folder(parsed.images, spec.input_size, settings))  # fmt: skip
            data, source = images_as_npz(images), {"kind": "images", "count": len(images)}
        options = {"estimator": parsed.estimator}
        record = training_record("patterns", "estimate_patterns", parsed.model, options,
                                 parsed.seed, source, tenant)  # fmt: skip
        return queue(request, record, data, store, artifacts, dispatcher)

    return await run_in_threadpool(accept)


@router.post(
    "/support-sets",
    status_code=202,
    response_model=JobCreated,
    responses=ERRORS,
    openapi_extra=training_body(SupportSetRequest, {"images_a": "A zip of images of class_a",
                                                    "images_b": "A zip of images of class_b"}),
)  # fmt: skip
async def make_support_set(
    request: Request, tenant: Tenant, settings: SettingsDep, store: StoreDep,
    artifacts: ArtifactsDep, dispatcher: DispatcherDep, _: ModelsDep,
):  # fmt: skip
    """Train GAD's support networks for a class pair from two uploaded zips of images
    (multipart: 'request' + 'images_a' + 'images_b') or two image folders this server offers
    (JSON: images_a, images_b by name). A job: follow it at GET /jobs/{id}."""
    payload, uploads = await read_training(request, ("images_a", "images_b"), settings)
    parsed = validated(SupportSetRequest, payload)
    if not uploads and (parsed.images_a is None or parsed.images_b is None):
        raise ApiError(422, "invalid_images", "give images_a and images_b: two zip files "
                       "(multipart) or two image sets this server offers (JSON)")  # fmt: skip
    spec = image_model(parsed.model)
    if parsed.epochs > settings.max_training_epochs:
        raise ApiError(422, "limit_exceeded", f"epochs={parsed.epochs} is above this server's "
                       f"limit {settings.max_training_epochs}")  # fmt: skip
    try:
        classes = [spec.class_index(c) if isinstance(c, str) else c
                   for c in (parsed.class_a, parsed.class_b)]  # fmt: skip
    except ModelError as error:
        raise ApiError(422, "invalid_target", str(error)) from None
    if len(set(classes)) != 2 or not all(0 <= c < len(spec.labels) for c in classes):
        raise ApiError(422, "invalid_target", f"class_a and class_b must be two different "
                       f"classes of {spec.name}")  # fmt: skip

    def accept():
        sets = [read_zip(uploads[f], f, spec.input_size, settings) if uploads
                else read_folder(getattr(parsed, f), spec.input_size, settings)
                for f in ("images_a", "images_b")]  # fmt: skip
        labels = np.concatenate(
            [np.full(len(s), c, dtype=np.int64) for s, c in zip(sets, classes, strict=True)]
        )
        data = images_as_npz(np.concatenate(sets), labels)
        options = {"class_a": classes[0], "class_b": classes[1], "epochs": parsed.epochs,
                   "learning_rate": parsed.learning_rate}  # fmt: skip
        source = {"kind": "images", "count": len(labels)}
        record = training_record("support_set", "train_support_set", parsed.model, options,
                                 parsed.seed, source, tenant)  # fmt: skip
        return queue(request, record, data, store, artifacts, dispatcher)

    return await run_in_threadpool(accept)


@router.get("/patterns", responses=ERRORS)
def list_patterns(_: Tenant) -> list[dict[str, Any]]:
    """The pattern sets in the shared cache: model, images, layers, estimator, when."""
    return trained_sets("patterns")


@router.get("/support-sets", responses=ERRORS)
def list_support_sets(_: Tenant) -> list[dict[str, Any]]:
    """The GAD support sets in the shared cache: model, class pair, images, epochs, when."""
    return trained_sets("gad")
