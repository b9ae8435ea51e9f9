"""Models: the built-in ones and those in the shared model store (``jobs.model_store``).
Admins add a model as a multipart upload (``config`` JSON + ``weights`` file) and delete stored
ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from engine.catalogue import applicable_methods
from engine.models import MODELS
from engine.models.spec import ModelSpec
from jobs.model_store import BUILT_IN, CONFIG_RULE, ModelRefused, ModelUpload
from jobs.training_jobs import models_with_trained_sets
from service.deps import ModelsDep, SettingsDep, Tenant, require_admin, require_key
from service.errors import ERRORS, ApiError, clean, short

router = APIRouter(responses={401: ERRORS[401]})
Admin = Annotated[None, Depends(require_admin)]


def describe(spec: ModelSpec, allowed: tuple[str, ...], trained: dict[str, set[str]]) -> dict:
    """The model's description with the methods that will run on it here: those the engine
    finds applicable (input kind, capabilities), allowed on this server, and, for add-ons that
    need a trained set, with one the caller may use (``trained``: models_with_trained_sets of
    the caller's tenant). A model this server cannot build lists none, and says why."""
    if (reason := spec.unavailable()) is not None:
        return spec.describe() | {"stored": False, "methods": [], "unavailable": reason}
    listed = []
    for method in applicable_methods(spec):
        need = method.options().trained_set()
        if need is not None and spec.name not in trained[need]:
            continue
        if not allowed or method.name in allowed:
            listed.append(method.name)
    return spec.describe() | {"stored": spec.name not in BUILT_IN, "methods": listed}


@router.get("/models")
def models(tenant: Tenant, settings: SettingsDep, store: ModelsDep) -> list[dict[str, Any]]:
    """Every model, built in or stored: input kind and size, normalisation, classes, Grad-CAM
    layer, capabilities, and the methods that will run on it on this server for the caller."""
    trained = models_with_trained_sets(tenant)
    return [describe(spec, settings.allowed_methods.get(name, ()), trained)
            for name, spec in MODELS.items()]  # fmt: skip


@router.get("/models/{name}/labels", dependencies=[Depends(require_key)],
            responses={404: ERRORS[404]})  # fmt: skip
def labels(name: str, _: ModelsDep) -> list[str]:
    """The model's class labels, by class index (targets may name them)."""
    if name not in MODELS:
        raise ApiError(404, "not_found", f"no model {short(name)!r}")
    return list(MODELS[name].labels)


@router.post(
    "/models",
    status_code=201,
    responses={**ERRORS, 403: ERRORS[401], 409: ERRORS[422]},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["config", "weights"],
                        "properties": {
                            "config": {"$ref": "#/components/schemas/ModelUpload"},
                            "weights": {"type": "string", "format": "binary"},
                        },
                    },
                    "encoding": {"config": {"contentType": "application/json"}},
                }
            },
        }
    },
)
async def add_model(
    request: Request, _: Admin, settings: SettingsDep, store: ModelsDep
) -> dict[str, Any]:
    """Add a model (admin key): a TorchScript archive, a state dict for a factory importable on
    the server, or a series classifier saved by train-series. It is loaded without pickled
    code and probed with an input of its size before it is stored; refusals are 4xx."""
    form = await request.form(max_files=1, max_fields=2)
    if sorted(form.keys()) != ["config", "weights"] or not hasattr(form["weights"], "read"):
        raise ApiError(422, "invalid_request", "multipart needs a JSON field 'config' and a "
                       "file field 'weights'")  # fmt: skip
    raw = form["config"]
    try:
        upload = ModelUpload.model_validate_json(raw if isinstance(raw, str) else "", strict=True)
    except ValidationError as error:
        details = clean(error.errors())
        if all(d["type"] == CONFIG_RULE for d in details):  # a rule the schema cannot state
            raise ApiError(422, "model_refused", details[0]["msg"], details) from None
        raise ApiError(422, "invalid_config", "the model config is invalid", details) from None
    incoming = store.incoming()
    try:
        limit, target = settings.max_model_bytes, store.weights_path(incoming)
        size = await run_in_threadpool(copy_limited, form["weights"].file, target, limit)
        if size > limit:
            message = f"weights above the limit of {limit} bytes (EXPLAINER_MAX_MODEL_BYTES)"
            raise ApiError(413, "payload_too_large", message)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    try:
        spec = await run_in_threadpool(store.add, upload, incoming)
    except ModelRefused as refusal:
        raise ApiError(refusal.status, "model_refused", str(refusal)) from None
    shared = models_with_trained_sets(None)  # an admin's view: the shared sets
    return describe(spec, settings.allowed_methods.get(spec.name, ()), shared)


def copy_limited(source: BinaryIO, target: Path, limit: int, chunk: int = 1 << 20) -> int:
    """Copy an uploaded file (spooled to disk by the multipart parser) in chunks, stopping past
    ``limit`` bytes; the number of bytes copied (limit + 1 or more when it is too large)."""
    copied = 0
    source.seek(0)
    with open(target, "wb") as out:
        while copied <= limit and (block := source.read(chunk)):
            out.write(block)
            copied += len(block)
    return copied


@router.delete("/models/{name}", status_code=204, responses={**ERRORS, 409: ERRORS[422]})
def delete_model(name: str, _: Admin, store: ModelsDep) -> None:
    """Delete a stored model (admin key); built-in models stay."""
    try:
        store.remove(name)
    except ModelRefused as refusal:
        raise ApiError(refusal.status, "model_refused", str(refusal)) from None
