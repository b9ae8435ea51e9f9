"""Reading and checking a submitted explain request, before anything is queued: every bound a
worker would hit is a 4xx here (input kind and size, target, server paths, memory per step, the
job's cost in model passes), so an accepted job can run on the server's budget.

This module reads HTTP (JSON or multipart), decodes the input, and asks the engine's pre-flight
plan (:func:`engine.plan.plan`) for every rule a job has, turning its refusals into the API's
errors; the rules only a server has (methods allowed per model, options naming its files, the
trained sets a tenant has) are checked here."""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from engine.addons import BASE_OPTIONS_ERROR
from engine.catalogue import METHODS, all_methods, close_names, unknown_name
from engine.data import (
    DEFAULT_MAX_PIXELS,
    SAMPLES,
    InputError,
    decode_image,
    image_files,
    sha256_bytes,
)
from engine.data.samples import sample_size
from engine.data.timeseries import DEFAULT_MAX_FEATURES, SERIES_SAMPLES, load_series, read_npy
from engine.method import names_server_path, walk_options
from engine.metrics.base import MetricRequest
from engine.models import ModelSpec
from engine.plan import Plan, PlanError, check_input_kind, model_spec, plan
from jobs.settings import Settings
from jobs.training_jobs import trained_set_files
from service.errors import ApiError, clean, short
from service.schemas import explain_request_adapter


@dataclass
class Upload:
    """A file of a multipart submission: ``field`` is 'image' or 'series'; ``filename`` the
    name the client gave it (kept in the job record, shown by the page), if any."""

    field: str
    data: bytes
    filename: str | None = None


FILE_FIELDS = ("image", "series")


async def read_submission(request: Request, settings: Settings) -> tuple[dict, Upload | None]:
    """(JSON payload, the uploaded image or series file, if any) of a JSON or multipart
    submission."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        if unknown := sorted(set(form.keys()) - {"request", *FILE_FIELDS}):
            raise ApiError(422, "invalid_request", "multipart takes the fields 'request' and "
                           f"'image' or 'series', not {short(', '.join(unknown))}")  # fmt: skip
        raw = form.get("request")
        if raw is None or isinstance(raw, bytes | bytearray) or hasattr(raw, "read"):
            raise ApiError(422, "invalid_request", "multipart needs a JSON text field 'request'")
        payload = await read_json(raw)
        files = [(name, form[name]) for name in FILE_FIELDS if hasattr(form.get(name), "read")]
        if len(files) != 1:
            raise ApiError(422, "invalid_input", "multipart needs one file field, 'image' or "
                           "'series' (.npy or .csv)")  # fmt: skip
        (field, upload), limit = files[0], settings.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "payload_too_large", f"{field} file above {limit} bytes")
        if any(payload.get(name) is not None for name in ("image", "sample", "series")):
            raise ApiError(422, "invalid_input", f"give the {field} as the file field only")
        return payload, Upload(field, data, file_label(upload.filename))
    if content_type.startswith("application/json") or not content_type:
        return await read_json(await request.body()), None
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


def file_label(filename: str | None) -> str | None:
    """The last part of an uploaded file's name, without control characters, at most 200
    characters: a label for people, never a path."""
    if not filename:
        return None
    name = "".join(c for c in filename.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())
    return name.strip()[:200] or None


def integral_float(text: str) -> int | float:
    """A JSON number with a fractional part of zero is an integer, as JSON Schema says (1.0
    is a valid ``integer``); float fields accept integers."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


LARGE_JSON_BYTES = 64 * 1024


async def read_json(raw: str | bytes) -> dict:
    """:func:`parse_json`, on a worker thread for a large body (a 13 MB series takes seconds
    to parse, and the event loop serves every other request meanwhile)."""
    if len(raw) > LARGE_JSON_BYTES:
        return await run_in_threadpool(parse_json, raw)
    return parse_json(raw)


def parse_json(raw: str | bytes) -> dict:
    try:
        payload = json.loads(raw, parse_float=integral_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"request is not valid JSON: {error}") from error
    except RecursionError:
        raise ApiError(400, "invalid_json", "request JSON is nested too deeply") from None
    except ValueError as error:  # an integer above Python's digit limit
        raise ApiError(400, "invalid_json", f"request JSON has a value out of range: "
                       f"{short(str(error))}") from None  # fmt: skip
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", "the request must be a JSON object")
    return payload


def parse_request(payload: dict):
    """The typed request (one variant per method), or a 422 listing what is wrong. Strict JSON
    types, as the OpenAPI document states them: no ``true`` for a number, no "3" for an
    integer. An unknown method is named with the closest ones (pydantic's union tag error lists
    every method, cut short)."""
    method = payload.get("method")
    if isinstance(method, str) and method not in METHODS:
        raise unknown("method", method, list(METHODS))
    try:
        return explain_request_adapter().validate_json(json.dumps(payload), strict=True)
    except ValidationError as error:
        details = clean(error.errors())
        raise ApiError(422, refusal_code(details), summary(details), details) from None


def refusal_code(details: list[dict]) -> str:
    """The code of a request's validation errors: ``invalid_option`` where every one is an
    add-on's base_options that are not its base method's (a rule the document cannot state),
    else ``invalid_request``."""
    semantic = all(d["type"] == BASE_OPTIONS_ERROR for d in details)
    return "invalid_option" if semantic else "invalid_request"


def unknown(kind: str, name: str, known: list[str], code: str | None = None) -> ApiError:
    """The 422 for a name the server does not have: the message with the closest names (the
    engine's rule, shared with the CLI), and in ``details`` the field and the suggestions."""
    detail = {"loc": [kind], "msg": unknown_name(kind, name, known), "type": f"unknown_{kind}",
              "suggestions": close_names(name, known)}  # fmt: skip
    return ApiError(422, code or f"unknown_{kind}", detail["msg"], [detail])


def summary(details: list) -> str:
    """'invalid request: options.steps: Input should be greater than or equal to 1; ...'."""
    parts = []
    for detail in details[:5]:
        # Drop the union tag (the method name) that pydantic puts first in the location.
        loc = [str(p) for p in detail.get("loc", [])]
        if len(loc) > 1 and loc[0] in {m.name for m in all_methods()}:
            loc = loc[1:]
        parts.append(f"{'.'.join(loc) or 'request'}: {detail.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def check_input(parsed, upload: Upload | None, settings: Settings) -> tuple[dict, bytes | None]:
    """Exactly one input, of the model's kind; decoded and validated here so that bad input
    fails fast with a 4xx. Returns the record's input description and the bytes to store
    (None for a bundled sample)."""
    given = [name for name in ("image", "sample", "series") if getattr(parsed, name) is not None]
    if upload is not None:
        given.append(f"{upload.field} file")
    if len(given) != 1:
        raise ApiError(422, "invalid_input", "give exactly one of image, sample or series")
    wants_series = parsed.series is not None or (upload is not None and upload.field == "series")
    if parsed.sample is not None:
        wants_series = parsed.sample in SERIES_SAMPLES
    try:
        spec = model_spec(parsed.model)
        check_input_kind(spec, "timeseries" if wants_series else "image")
    except PlanError as error:
        raise api_error(error) from None
    if parsed.truth is not None and not wants_series:
        raise ApiError(422, "invalid_input", "truth is for time series")
    if wants_series:
        return check_series(parsed, upload, spec, settings)
    return check_image(parsed, upload, settings)


def check_image(parsed, upload: Upload | None, settings: Settings) -> tuple[dict, bytes | None]:
    if parsed.sample is not None:
        if parsed.sample not in SAMPLES:
            known = ", ".join([*SAMPLES, *SERIES_SAMPLES])
            raise ApiError(422, "unknown_sample", f"unknown sample {short(parsed.sample)!r}; "
                           f"known: {known}")  # fmt: skip
        size = list(sample_size(parsed.sample))  # the size resize='none' explains it at
        return {"kind": "sample", "name": parsed.sample, "sha256": "sample:" + parsed.sample,
                "size": size}, None  # fmt: skip
    data = upload.data if upload is not None else None
    if data is None:
        try:
            data = base64.b64decode(parsed.image, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ApiError(422, "invalid_input", f"image is not valid base64: {error}") from error
    try:
        image = decode_image(
            data,
            max_pixels=min(settings.max_pixels, DEFAULT_MAX_PIXELS),
            max_bytes=settings.max_upload_bytes,
        )
    except InputError as error:
        status = 413 if "limit" in str(error) else 422
        raise ApiError(status, "invalid_image", str(error)) from error
    width, height = image.size  # plan_job checks the scaled copy the worker would make
    info = {"kind": "image", "sha256": sha256_bytes(data), "size": [width, height]}
    return info | ({"name": upload.filename} if upload and upload.filename else {}), data


def check_series(
    parsed, upload: Upload | None, spec: ModelSpec, settings: Settings
) -> tuple[dict, bytes | None]:
    """A series (JSON, an uploaded .npy/.csv, or a bundled sample) and its optional ground
    truth, checked against the limits and the model's feature count. Stored as one .npz."""
    if parsed.sample is not None:
        record = {"kind": "sample", "name": parsed.sample, "sha256": "sample:" + parsed.sample}
        return record | {"truth": True}, None
    limits = {"max_length": settings.max_series_length,
              "max_features": min(settings.max_series_features, DEFAULT_MAX_FEATURES)}  # fmt: skip
    try:
        raw = read_series_file(upload.data, **limits) if upload else as_array(parsed.series)
        series = load_series(raw, **limits)
    except InputError as error:
        status = 413 if "limits" in str(error) else 422
        raise ApiError(status, "invalid_series", str(error)) from None
    features = spec.input_size[1]
    if series.shape[1] != features:
        raise ApiError(422, "invalid_series", f"model {spec.name} takes {features} features per "
                       f"time step, the series has {series.shape[1]}")  # fmt: skip
    arrays = {"series": series.numpy()}
    if parsed.truth is not None:
        truth = np.asarray(parsed.truth)
        if truth.shape != arrays["series"].shape or not np.isin(truth, (0, 1)).all():
            raise ApiError(422, "invalid_truth", "truth must be 0/1 of the series' shape "
                           f"{tuple(series.shape)}, got {truth.shape}")  # fmt: skip
        arrays["truth"] = truth.astype(np.int8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    info = {"kind": "series", "sha256": sha256_bytes(data), "shape": list(series.shape)}
    if upload and upload.filename:
        info["name"] = upload.filename
    return info | {"truth": "truth" in arrays}, data


def as_array(series: list[list[float]]) -> np.ndarray:
    if len({len(row) for row in series}) > 1:
        raise InputError("a series is time × features: every time step needs the same number "
                         "of features")  # fmt: skip
    return np.asarray(series, dtype=np.float64)


def read_series_file(data: bytes, **limits: int) -> np.ndarray:
    """An uploaded series: .npy (known by its magic bytes; its header checked before anything
    is allocated, no pickles) or comma-separated text without a header."""
    if data.startswith(b"\x93NUMPY"):
        return read_npy(data, **limits)
    try:
        return np.loadtxt(io.StringIO(data.decode()), delimiter=",", ndmin=2)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"the series file is neither .npy nor numeric CSV: "
                         f"{short(str(error))}") from None  # fmt: skip


def api_error(error: PlanError) -> ApiError:
    """The engine's refusal as the API's error: its status, code, message and details."""
    return ApiError(error.status, error.code, error.message, error.details)


def plan_job(parsed, input_info: dict, settings: Settings) -> Plan:
    """The engine's pre-flight plan of a parsed request (every check a job needs, the limits
    of this server passed in: model passes and memory per job, pixels of a scaled image),
    then the rules only the server has: the methods it allows per model, and no option at
    any depth naming one of its files. The trained sets a tenant has: :func:`check_trained_set`."""
    width_height = tuple(input_info["size"]) if "size" in input_info else None
    try:
        job = plan(
            parsed.model, parsed.method, parsed.options, metrics=parsed.metrics,
            image_size=width_height, resize=parsed.resize, target=parsed.target,
            max_passes=settings.max_model_passes,
            max_memory_bytes=settings.max_job_memory_mb * 2**20,
            max_pixels=settings.max_pixels,
        )  # fmt: skip
    except PlanError as error:
        raise api_error(error) from None
    allowed = settings.allowed_methods.get(parsed.model)
    if allowed and parsed.method not in allowed:
        raise ApiError(
            422, "method_not_allowed",
            f"method {parsed.method} is not allowed for model {parsed.model}; allowed: "
            + ", ".join(allowed),
        )  # fmt: skip
    # Every option at any depth: nested smoothing and an add-on's base_options included.
    for path, field, value in walk_options(parsed.options):
        if names_server_path(field) and value != field.default:
            raise ApiError(422, "invalid_option",
                           f"over the API, options.{path} cannot name a file or folder on the "
                           f"server; leave it at its default ({field.default!r})")  # fmt: skip
    return job


def check_trained_set(parsed, tenant: str | None) -> list[str]:
    """An add-on that needs a trained set for this model (patterns, GAD support networks) is
    refused until a training job has made one that ``tenant`` may use (its own or a shared
    one: jobs.training_jobs.usable_folders). Returns what identifies the sets the job may use (a
    new set is a new job for reuse keys); empty when it needs none."""
    need = parsed.options.trained_set()
    if need is None:
        return []
    classes = parsed.options.trained_set_classes()
    found = trained_set_files(parsed.model, need, classes, tenant)
    if not found:
        endpoint = {"patterns": "POST /patterns", "support_set": "POST /support-sets"}[need]
        what = {"patterns": "a pattern set", "support_set": "GAD support networks"}[need]
        pair = f" for classes {tuple(classes)}" if classes else ""
        yours = " (yours, or shared by an admin)" if tenant is not None else ""
        raise ApiError(422, "needs_training", f"{parsed.method} needs {what}{yours} of model "
                       f"{parsed.model}{pair}; make them first with {endpoint}")  # fmt: skip
    return [f"{path}@{path.stat().st_mtime_ns}" for path in found]


def metric_records(
    metrics: Sequence[MetricRequest] | list[tuple[str, Any]],
) -> list[dict[str, Any]]:
    """Canonical, sorted metric records for the job record and its content hash, from a
    plan's metric requests (or (name, options) pairs)."""
    pairs = [(m.spec.name, m.options) if isinstance(m, MetricRequest) else m for m in metrics]
    records = [{"name": name, **options.model_dump(mode="json")} for name, options in pairs]
    return sorted(records, key=lambda r: r["name"])


def offered_image_set(
    name: str, settings: Settings, also_offered: tuple[str, ...] = ()
) -> tuple[Path, list[Path]]:
    """(folder, its image files) of an image set the operator offers by name
    (``EXPLAINER_TRAINING_SETS``); ``also_offered`` names the caller's other choices."""
    folder = settings.training_sets.get(name)
    if folder is None:
        offered = ", ".join([*also_offered, *settings.training_sets]) or "none"
        raise ApiError(422, "invalid_images", f"no image set {short(name)!r} on this server; "
                       f"offered: {offered}")  # fmt: skip
    try:
        return Path(folder), image_files(folder)
    except InputError as error:
        raise ApiError(422, "invalid_images", f"image set {name}: {error}") from None
