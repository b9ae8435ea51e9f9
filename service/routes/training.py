"""Training jobs over the API: the pattern sets of PatternNet, PatternAttribution and
Pattern-Guided IG (``POST /patterns``) and GAD's support networks (``POST /support-sets``), run
by the workers like explanations (progress, cancel) and stored in the shared cache, where every
worker finds them; ``GET`` lists those the caller may use. A set belongs to the API key that
made it, or, made with an admin key (X-Admin-Key), is shared with every key, read-only
(jobs.training_jobs.usable_folders)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Security
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from engine.data import (
    DEFAULT_MAX_PIXELS,
    InputError,
    reference_set,
)
from engine.models import MODELS, ModelError, ModelSpec
from engine.models.inspection import WHY_NEEDED
from jobs.records import JobRecord, new_job_id
from jobs.settings import Settings
from jobs.training_jobs import (
    TooLarge,
    ZipLimits,
    as_uint8,
    check_zip,
    images_as_npz,
    trained_sets,
    zips_as_npz,
)
from service.deps import (
    ADMIN_KEY_HEADER,
    ArtifactsDep,
    DispatcherDep,
    ModelsDep,
    SettingsDep,
    StoreDep,
    Tenant,
    matches,
)
from service.errors import ERRORS, ApiError, clean
from service.routes.jobs import enqueue, job_url
from service.schemas import JobCreated
from service.submission import offered_image_set, parse_json

router = APIRouter()


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
    folder, files = offered_image_set(name, settings, also_offered=("samples",))
    if len(files) > settings.max_training_images:
        raise ApiError(413, "too_many_images", f"image set {name} holds {len(files)} images; "
                       f"the limit is {settings.max_training_images}")  # fmt: skip
    return as_uint8(reference_set(str(Path(folder).resolve()), size))  # a path, never "samples"


def image_model(name: str) -> ModelSpec:
    """An image model whose Python modules a training job can use (patterns, support nets)."""
    spec = MODELS.get(name)
    if spec is None or spec.input_kind != "image":
        raise ApiError(422, "unknown_model", f"{name!r} is not an image model of this server")
    if (reason := spec.unavailable()) is not None:
        raise ApiError(422, "model_unavailable", reason)
    if "modules" not in spec.allows:
        raise ApiError(422, "method_not_applicable", f"model {name} cannot be trained for: "
                       f"{WHY_NEEDED['modules']}")  # fmt: skip
    return spec


def uploaded_zips(uploads: dict[str, bytes], settings: Settings) -> tuple[bytes, dict]:
    """(stored input, record input) of a training job's uploaded zips, checked here without
    decoding a pixel (jobs.training_jobs.check_zip); the worker decodes them."""
    limits = ZipLimits(images=settings.max_training_images,
                       entry_bytes=settings.max_upload_bytes,
                       total_bytes=settings.max_training_upload_bytes,
                       pixels=min(settings.max_pixels, DEFAULT_MAX_PIXELS))  # fmt: skip
    try:
        count = sum(check_zip(data, field, limits) for field, data in uploads.items())
    except TooLarge as error:
        raise ApiError(413, error.code, str(error)) from None
    except InputError as error:
        raise ApiError(422, "invalid_images", str(error)) from None
    source = {"kind": "zips", "fields": list(uploads), "count": count, "limits": asdict(limits)}
    return zips_as_npz(uploads), source


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
    enqueue(store, dispatcher, record.id)
    return JobCreated(id=record.id, url=job_url(request, record.id), status="queued")


def shared_by_admin(
    settings: SettingsDep, supplied: Annotated[str | None, Security(ADMIN_KEY_HEADER)]
) -> bool:
    """Whether the set this request makes is shared with every API key (read-only to them): it
    carries a valid admin key. Without one the set is the caller's own."""
    if supplied is None:
        return False
    if not matches(supplied, settings.admin_keys):
        raise ApiError(401, "invalid_admin_key", "the admin key is not valid")
    return True


def training_record(kind: str, method: str, model: str, options: dict, seed: int,
                    source: dict, tenant: str | None, shared: bool) -> JobRecord:  # fmt: skip
    """The job record of a training request: owned by the caller; ``options['shared']`` puts
    its set in the shared scope (jobs.training_jobs.training_scope)."""
    return JobRecord(id=new_job_id(), kind=kind, created_at=time.time(), model=model,
                     method=method, options=options | {"shared": shared}, seed=seed,
                     input=source, content_hash="", owner=tenant)  # fmt: skip


SharedByAdmin = Annotated[bool, Depends(shared_by_admin)]


@router.post(
    "/patterns",
    status_code=202,
    response_model=JobCreated,
    responses=ERRORS,
    openapi_extra=training_body(PatternsRequest, {"images": "A zip of PNG/JPEG/WebP images"}),
)
async def make_patterns(
    request: Request, tenant: Tenant, shared: SharedByAdmin, settings: SettingsDep,
    store: StoreDep, artifacts: ArtifactsDep, dispatcher: DispatcherDep, _: ModelsDep,
):  # fmt: skip
    """Estimate a model's pattern set (for pattern_net, pattern_attribution,
    pattern_guided_ig) from the bundled photographs or an image folder this server offers (JSON
    body, 'images' by name) or from an uploaded zip of images (multipart: 'request' +
    'images'). A job: follow it at GET /jobs/{id}. The set is the caller's own (it replaces
    the caller's earlier set of this model); with an admin key (X-Admin-Key) it is shared with
    every API key, which uses it where it has no own set."""
    payload, uploads = await read_training(request, ("images",), settings)
    parsed = validated(PatternsRequest, payload)
    spec = image_model(parsed.model)

    def accept():
        data, source = None, {"kind": "samples"}
        if uploads:
            data, source = uploaded_zips(uploads, settings)
        elif parsed.images != "samples":
            images = read_folder(parsed.images, spec.input_size, settings)
            data, source = images_as_npz(images), {"kind": "images", "count": len(images)}
        options = {"estimator": parsed.estimator}
        record = training_record("patterns", "estimate_patterns", parsed.model, options,
                                 parsed.seed, source, tenant, shared)  # fmt: skip
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
    request: Request, tenant: Tenant, shared: SharedByAdmin, settings: SettingsDep,
    store: StoreDep, artifacts: ArtifactsDep, dispatcher: DispatcherDep, _: ModelsDep,
):  # fmt: skip
    """Train GAD's support networks for a class pair from two uploaded zips of images
    (multipart: 'request' + 'images_a' + 'images_b') or two image folders this server offers
    (JSON: images_a, images_b by name). A job: follow it at GET /jobs/{id}. The networks are
    the caller's own, or shared with every API key when made with an admin key (X-Admin-Key),
    as for POST /patterns."""
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
        if uploads:  # images_a is class_a's, images_b class_b's
            data, source = uploaded_zips(uploads, settings)
            source["labels"] = classes
        else:
            sets = [read_folder(getattr(parsed, f), spec.input_size, settings)
                    for f in ("images_a", "images_b")]  # fmt: skip
            labels = np.concatenate(
                [np.full(len(s), c, dtype=np.int64) for s, c in zip(sets, classes, strict=True)]
            )
            data = images_as_npz(np.concatenate(sets), labels)
            source = {"kind": "images", "count": len(labels)}
        options = {"class_a": classes[0], "class_b": classes[1], "epochs": parsed.epochs,
                   "learning_rate": parsed.learning_rate}  # fmt: skip
        record = training_record("support_set", "train_support_set", parsed.model, options,
                                 parsed.seed, source, tenant, shared)  # fmt: skip
        return queue(request, record, data, store, artifacts, dispatcher)

    return await run_in_threadpool(accept)


@router.get("/patterns", responses=ERRORS)
def list_patterns(tenant: Tenant) -> list[dict[str, Any]]:
    """The pattern sets the caller's jobs may use: model, images, layers, estimator, when; its
    own first, then those an admin shared ('shared': true, without the job that made them)."""
    return trained_sets("patterns", tenant)


@router.get("/support-sets", responses=ERRORS)
def list_support_sets(tenant: Tenant) -> list[dict[str, Any]]:
    """The GAD support sets the caller's jobs may use: model, class pair, images, epochs, when;
    its own first, then those an admin shared, as for GET /patterns."""
    return trained_sets("support_set", tenant)
