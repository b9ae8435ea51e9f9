"""Reading and checking a submitted explain request, before anything is queued: every bound a
worker would hit is a 4xx here (input kind and size, target, server paths, memory per step, the
job's cost in model passes), so an accepted job can run on the server's budget."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from engine.addons import BASE_OPTIONS_ERROR
from engine.catalogue import all_methods, get_method, parse_metrics
from engine.data import DEFAULT_MAX_PIXELS, SAMPLES, InputError, decode_image, sha256_bytes
from engine.data.images import ImageTooSmall, check_fits
from engine.method import names_server_path, walk_options
from engine.metrics.base import MetricError
from engine.models import MODELS, ModelError, ModelSpec
from jobs.settings import Settings
from service.errors import ApiError, clean, short
from service.schemas import explain_request_adapter


async def read_submission(request: Request, settings: Settings) -> tuple[dict, bytes | None]:
    """(JSON payload, uploaded image bytes or None) of a JSON or multipart submission."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        if unknown := sorted(set(form.keys()) - {"request", "image"}):
            raise ApiError(422, "invalid_request", "multipart takes only the fields 'request' "
                           f"and 'image', not {short(', '.join(unknown))}")  # fmt: skip
        raw, upload = form.get("request"), form.get("image")
        if raw is None or isinstance(raw, bytes | bytearray) or hasattr(raw, "read"):
            raise ApiError(422, "invalid_request", "multipart needs a JSON text field 'request'")
        payload = parse_json(raw)
        if upload is None or not hasattr(upload, "read"):
            raise ApiError(422, "invalid_request", "multipart needs a file field 'image'")
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(
                413, "payload_too_large", f"image above {settings.max_upload_bytes} bytes"
            )
        if payload.get("image") or payload.get("sample") or payload.get("series"):
            raise ApiError(422, "invalid_input", "give the image as the file field only")
        return payload, data
    if content_type.startswith("application/json") or not content_type:
        return parse_json(await request.body()), None
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


def parse_json(raw: str | bytes) -> dict:
    try:
        payload = json.loads(raw)
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
    integer."""
    try:
        return explain_request_adapter().validate_json(json.dumps(payload), strict=True)
    except ValidationError as error:
        details = clean(error.errors())
        # base_options that are not the base method's: a rule the document cannot state
        semantic = all(d["type"] == BASE_OPTIONS_ERROR for d in details)
        code = "invalid_option" if semantic else "invalid_request"
        raise ApiError(422, code, summary(details), details) from None


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


def check_input(parsed, upload: bytes | None, settings: Settings) -> tuple[dict, bytes | None]:
    """Exactly one input; decoded and validated here so bad input fails fast with a 4xx.
    Returns the record's input description and the bytes to store (None for a sample)."""
    given = [name for name in ("image", "sample", "series") if getattr(parsed, name) is not None]
    if upload is not None:
        given.append("image file")
    if len(given) != 1:
        raise ApiError(422, "invalid_input", "give exactly one of image, sample or series")
    spec = MODELS.get(parsed.model)
    if spec is None:
        known = ", ".join(MODELS)
        raise ApiError(422, "unknown_model", f"unknown model {parsed.model!r}; known: {known}")
    if parsed.series is not None:
        check_series(parsed.series, settings)
        if spec.input_kind != "timeseries":
            raise ApiError(
                422, "wrong_input_kind", f"model {parsed.model} takes images, not series"
            )
        data = json.dumps(parsed.series).encode()
        return {"kind": "series", "sha256": sha256_bytes(data)}, data
    if spec.input_kind != "image":
        raise ApiError(422, "wrong_input_kind", f"model {parsed.model} takes time series")
    if parsed.sample is not None:
        if parsed.sample not in SAMPLES:
            raise ApiError(422, "unknown_sample", f"unknown sample {parsed.sample!r}")
        return {"kind": "sample", "name": parsed.sample, "sha256": "sample:" + parsed.sample}, None
    data = upload
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
    width, height = image.size
    try:  # the scaled copy the worker would make, before it makes it
        check_fits(height, width, target_size(parsed), parsed.resize, settings.max_pixels)
    except InputError as error:
        status = 422 if isinstance(error, ImageTooSmall) else 413
        raise ApiError(status, "invalid_image", str(error)) from error
    return {"kind": "image", "sha256": sha256_bytes(data), "size": [width, height]}, data


def check_series(series: list[list[float]], settings: Settings) -> None:
    if not series or not series[0]:
        raise ApiError(422, "invalid_series", "series must be a non-empty time × features array")
    width = len(series[0])
    if any(len(row) != width for row in series):
        raise ApiError(422, "invalid_series", "every time step must have the same feature count")
    if len(series) > settings.max_series_length or width > settings.max_series_features:
        raise ApiError(
            413, "series_too_large",
            f"series is {len(series)}×{width}; limits are {settings.max_series_length} steps and "
            f"{settings.max_series_features} features",
        )  # fmt: skip
    if not all(math.isfinite(v) for row in series for v in row):
        raise ApiError(422, "invalid_series", "series values must be finite (no NaN or inf)")


def check_method(parsed, input_info: dict, settings: Settings) -> None:
    """The method applies to the model and is allowed on this server; the target is one of the
    model's classes; no option at any depth names a server file; the job fits the budgets."""
    kind = MODELS[parsed.model].input_kind
    if kind not in get_method(parsed.method).input_kinds:
        raise ApiError(422, "method_not_applicable",
                       f"method {parsed.method} does not explain {kind} models")  # fmt: skip
    allowed = settings.allowed_methods.get(parsed.model)
    if allowed and parsed.method not in allowed:
        raise ApiError(
            422, "method_not_allowed",
            f"method {parsed.method} is not allowed for model {parsed.model}; allowed: "
            + ", ".join(allowed),
        )  # fmt: skip
    check_target(parsed.target, MODELS[parsed.model])
    # Every option at any depth: nested smoothing and an add-on's base_options included.
    for path, field, value in walk_options(parsed.options):
        if names_server_path(field) and value != field.default:
            raise ApiError(422, "invalid_option",
                           f"over the API, options.{path} cannot name a file or folder on the "
                           f"server; leave it at its default ({field.default!r})")  # fmt: skip
    check_memory(parsed, input_info, settings)


def target_size(parsed) -> tuple[int, int]:
    """(h, w) an image is brought to: the mask methods' image_size, else the model's."""
    side = getattr(parsed.options, "image_size", None)
    return (side, side) if side else MODELS[parsed.model].input_size


def explained_size(parsed, input_info: dict) -> tuple[int, int]:
    """(h, w) the worker explains at: the target size, or the image's own with resize='none'."""
    if parsed.resize == "none" and "size" in input_info:
        width, height = input_info["size"]
        return height, width
    return target_size(parsed)


def check_memory(parsed, input_info: dict, settings: Settings) -> None:
    """Mask methods hold every obfuscation of a step at once: refuse what would not fit."""
    estimate = getattr(parsed.options, "working_set_bytes", None)
    if estimate is None:
        return
    height, width = explained_size(parsed, input_info)
    needed_mb = estimate(height, width) / 2**20
    if needed_mb > settings.max_job_memory_mb:
        raise ApiError(422, "limit_exceeded",
                       f"{parsed.method} with noise_samples={parsed.options.noise_samples} at "
                       f"{width}×{height} needs about {needed_mb / 1024:.1f} GB per step; this "
                       f"server's limit is {settings.max_job_memory_mb / 1024:.1f} GB: lower "
                       "noise_samples or image_size")  # fmt: skip


def job_cost(parsed, input_info: dict, metrics: list[tuple[str, Any]]) -> int:
    """Model passes of one input row at the model's input size: the method's own (its nested
    options included) plus its metrics', scaled by the explained pixels over the model's."""
    height, width = explained_size(parsed, input_info)
    passes = parsed.options.model_passes(height, width)
    passes += sum(options.model_passes(height, width) for _, options in metrics)
    model_h, model_w = MODELS[parsed.model].input_size
    return math.ceil(passes * max(1.0, height * width / (model_h * model_w)))


def check_cost(
    parsed, input_info: dict, metrics: list[tuple[str, Any]], settings: Settings
) -> None:
    cost = job_cost(parsed, input_info, metrics)
    if cost > settings.max_model_passes:
        raise ApiError(422, "limit_exceeded",
                       f"this job needs about {cost} model passes ({parsed.method} with these "
                       f"options and metrics); this server's limit is {settings.max_model_passes} "
                       "per job: lower steps, samples, iterations or image_size")  # fmt: skip


def check_target(target: int | str | None, spec: ModelSpec) -> None:
    """A class the model has, by index or label (the worker would fail on any other)."""
    if target is None or target == "predicted":
        return
    try:
        index = spec.class_index(target) if isinstance(target, str) else target
    except ModelError as error:
        raise ApiError(422, "invalid_target", str(error)) from None
    classes = len(spec.labels)
    if index < 0 or (classes and index >= classes):
        shown = str(index) if len(str(index)) <= 20 else f"{str(index)[:20]}…"
        raise ApiError(422, "invalid_target",
                       f"target {shown} is not a class of model {spec.name} "
                       f"(classes 0–{classes - 1})")  # fmt: skip


def check_metrics(parsed) -> list[tuple[str, Any]]:
    """(name, parsed options) of each requested metric, checked against the metric registry."""
    try:
        requests = parse_metrics(parsed.metrics)
    except MetricError as error:
        raise ApiError(422, "invalid_metric", str(error)) from None
    family = get_method(parsed.method).family
    for request in requests:
        if request.spec.needs_history and family != "mask":
            message = f"metric {request.spec.name} needs a mask method, not {parsed.method}"
            raise ApiError(422, "invalid_metric", message)
    return [(r.spec.name, r.options) for r in requests]


def metric_records(metrics: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Canonical, sorted metric records for the job record and its content hash."""
    records = [{"name": name, **options.model_dump(mode="json")} for name, options in metrics]
    return sorted(records, key=lambda r: r["name"])
