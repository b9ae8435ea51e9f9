"""Reading and checking a submitted explain request, before anything is queued: every bound a
worker would hit is a 4xx here (input kind and size, target, server paths, memory per step, the
job's cost in model passes), so an accepted job can run on the server's budget."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from engine.addons import BASE_OPTIONS_ERROR
from engine.catalogue import (
    METHODS,
    METRICS,
    all_methods,
    close_names,
    get_method,
    parse_metrics,
    unknown_name,
)
from engine.data import DEFAULT_MAX_PIXELS, SAMPLES, InputError, decode_image, sha256_bytes
from engine.data.images import ImageTooSmall, check_fits
from engine.data.samples import sample_size
from engine.data.timeseries import DEFAULT_MAX_FEATURES, SERIES_SAMPLES, load_series, read_npy
from engine.method import OptionsError, names_layers, names_server_path, walk_options
from engine.metrics.base import MetricError
from engine.models import MODELS, ModelError, ModelSpec, known_layers
from engine.models.inspection import unknown_layer_message
from engine.plan import working_set_bytes
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
        # base_options that are not the base method's: a rule the document cannot state
        semantic = all(d["type"] == BASE_OPTIONS_ERROR for d in details)
        code = "invalid_option" if semantic else "invalid_request"
        raise ApiError(422, code, summary(details), details) from None


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
    spec = MODELS.get(parsed.model)
    if spec is None:
        raise unknown("model", parsed.model, list(MODELS))
    if (reason := spec.unavailable()) is not None:
        raise ApiError(422, "model_unavailable", reason)
    wants_series = parsed.series is not None or (upload is not None and upload.field == "series")
    if parsed.sample is not None:
        wants_series = parsed.sample in SERIES_SAMPLES
    if wants_series != (spec.input_kind == "timeseries"):
        takes = "time series" if spec.input_kind == "timeseries" else "images"
        raise ApiError(422, "wrong_input_kind", f"model {parsed.model} takes {takes}")
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
    width, height = image.size
    try:  # the scaled copy the worker would make, before it makes it
        check_fits(height, width, target_size(parsed), parsed.resize, settings.max_pixels)
    except InputError as error:
        status = 422 if isinstance(error, ImageTooSmall) else 413
        raise ApiError(status, "invalid_image", str(error)) from error
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


def check_method(parsed, input_info: dict, settings: Settings) -> None:
    """The method applies to the model and is allowed on this server; the target is one of the
    model's classes; no option at any depth names a server file; the job fits the budgets."""
    model = MODELS[parsed.model]
    kind = model.input_kind
    if refusal := get_method(parsed.method).refusal(parsed.options, kind, model.allows):
        raise ApiError(422, "method_not_applicable", refusal)
    allowed = settings.allowed_methods.get(parsed.model)
    if allowed and parsed.method not in allowed:
        raise ApiError(
            422, "method_not_allowed",
            f"method {parsed.method} is not allowed for model {parsed.model}; allowed: "
            + ", ".join(allowed),
        )  # fmt: skip
    check_target(parsed.target, model)
    try:
        parsed.options.check_input_kind(kind)
    except OptionsError as error:
        raise ApiError(422, "invalid_option", str(error)) from None
    # Every option at any depth: nested smoothing and an add-on's base_options included.
    for path, field, value in walk_options(parsed.options):
        if names_server_path(field) and value != field.default:
            raise ApiError(422, "invalid_option",
                           f"over the API, options.{path} cannot name a file or folder on the "
                           f"server; leave it at its default ({field.default!r})")  # fmt: skip
        if (kind := names_layers(field)) and value is not None:
            check_layers(path, [value] if isinstance(value, str) else value, kind, model)
    check_size(parsed, input_info)
    check_memory(parsed, input_info, settings)


def check_layers(option: str, names: list[str], kind: str, model: ModelSpec) -> None:
    """Layer options name modules the model has (its own names: ``layer4``, not a wrapper's);
    a CAM layer (``kind`` 'map') one whose output is a map or tokens."""
    known = known_layers(model)
    if known is None:
        return
    every, maps = known
    for name in names:
        if name not in every:
            message = unknown_layer_message(name, every)
            raise ApiError(422, "invalid_option", f"options.{option}: {message}")
        if kind == "map" and name not in maps:
            message = (f"options.{option}: {short(name)} outputs no spatial map or tokens; "
                       f"layers that do: {', '.join(maps[-5:])}")  # fmt: skip
            raise ApiError(422, "invalid_option", message)


def check_trained_set(parsed, tenant: str | None) -> list[str]:
    """An add-on that needs a trained set for this model (patterns, GAD support networks) is
    refused until a training job has made one that ``tenant`` may use (its own or a shared
    one: jobs.training_jobs.usable_folders). Returns what identifies the sets the job may use (a
    new set is a new job for reuse keys); empty when it needs none."""
    need = parsed.options.trained_set()
    if need is None:
        return []
    classes = getattr(parsed.options, "classes", None)
    found = trained_set_files(parsed.model, need, tuple(classes) if classes else None, tenant)
    if not found:
        endpoint = {"patterns": "POST /patterns", "support_set": "POST /support-sets"}[need]
        what = {"patterns": "a pattern set", "support_set": "GAD support networks"}[need]
        pair = f" for classes {tuple(classes)}" if classes else ""
        yours = " (yours, or shared by an admin)" if tenant is not None else ""
        raise ApiError(422, "needs_training", f"{parsed.method} needs {what}{yours} of model "
                       f"{parsed.model}{pair}; make them first with {endpoint}")  # fmt: skip
    return [f"{path}@{path.stat().st_mtime_ns}" for path in found]


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


def check_size(parsed, input_info: dict) -> None:
    """The model takes images of the size they would be explained at."""
    if refusal := MODELS[parsed.model].size_refusal(*explained_size(parsed, input_info)):
        raise ApiError(422, "invalid_option", refusal)


def check_memory(parsed, input_info: dict, settings: Settings) -> None:
    """Refuse a job whose least working set (the model's pass of one row at the explained size,
    a mask method's obfuscations of a step) would not fit this server's budget."""
    height, width = explained_size(parsed, input_info)
    spec = MODELS[parsed.model]
    needed_mb = working_set_bytes(spec, parsed.options, height, width) / 2**20
    if needed_mb > settings.max_job_memory_mb:
        lower = ("noise_samples or image_size" if parsed.options.rows_per_pass() > 1
                 else "the image size (resize)")  # fmt: skip
        raise ApiError(422, "limit_exceeded",
                       f"{parsed.method} on {spec.name} at {width}×{height} needs about "
                       f"{needed_mb / 1024:.1f} GB at once; this server's limit is "
                       f"{settings.max_job_memory_mb / 1024:.1f} GB: lower {lower}")  # fmt: skip


def job_cost(parsed, input_info: dict, metrics: list[tuple[str, Any]]) -> int:
    """Model passes of one input row at the model's input size: the method's own (its nested
    options included) plus its metrics', scaled by the explained pixels over the model's."""
    height, width = explained_size(parsed, input_info)
    passes = parsed.options.model_passes(height, width)
    passes += sum(options.model_passes(height, width) for _, options in metrics)
    spec = MODELS[parsed.model]
    if spec.input_kind != "image":
        return passes  # a series row is small; its length is bounded by max_series_length
    model_h, model_w = spec.input_size
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
    for item in parsed.metrics:
        name = item if isinstance(item, str) else item.get("name")
        if isinstance(name, str) and name not in METRICS:
            raise unknown("metric", name, list(METRICS), "invalid_metric")
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
