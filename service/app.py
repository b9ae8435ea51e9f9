"""The FastAPI application: submit explanations, follow jobs, download artifacts."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.catalogue import all_methods, all_metrics, get_method, parse_metrics
from engine.data import DEFAULT_MAX_PIXELS, SAMPLES, InputError, decode_image, sha256_bytes
from engine.data.images import check_fits
from engine.method import names_server_path, walk_options
from engine.metrics.base import MetricError
from engine.models import MODELS, ModelError, ModelSpec
from service.artifacts import MEDIA_TYPES, ArtifactStore, ArtifactStoreFull
from service.dispatch import CeleryDispatcher, Dispatcher, EmbeddedDispatcher
from service.jobstore import (
    DURATION_BUCKETS,
    TERMINAL,
    JobRecord,
    JobStore,
    MemoryJobStore,
    RedisJobStore,
    new_job_id,
)
from service.schemas import (
    ErrorResponse,
    Health,
    JobCreated,
    JobView,
    explain_request_adapter,
)
from service.settings import Settings

ITERATION_FIELDS = ("steps", "samples", "iterations")
RETRY_AFTER_S = 5  # what a 503 asks clients to wait while Redis or the broker is away
MAX_ERRORS = 20  # validation errors listed in one response
QUOTED = re.compile(r"'([^']{40})[^']+'")  # a long quoted value in a message, cut to 40 characters
log = logging.getLogger("service")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
BEARER = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")
VIEW_FIELDS = set(JobView.model_fields) - {"progress", "artifacts"}  # copied from the record
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503, 507)}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(status: int, code: str, message: str, details: list | None = None):
    body = {"error": {"status": status, "code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies above ``limit`` bytes with 413, streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, "payload_too_large", f"request body above {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited_receive, send)
        except ApiError:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        message = f"request body above the limit of {self.limit} bytes"
        await error_response(413, "payload_too_large", message)(scope, receive, send)


def require_key(
    request: Request,
    header: Annotated[str | None, Security(API_KEY_HEADER)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> str | None:
    """The caller's tenant: a digest of its API key (None when the server has no keys).
    Each job belongs to the tenant that made it; other tenants cannot see it."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return None
    supplied = header or (bearer.credentials if bearer else None)
    if supplied is None:
        raise ApiError(401, "missing_api_key", "an API key is required (X-API-Key header)")
    # Compare with every key, in constant time, so timing tells nothing about any key.
    given = supplied.encode()
    if not any([hmac.compare_digest(given, key.encode()) for key in keys]):
        raise ApiError(401, "invalid_api_key", "the API key is not valid")
    return hashlib.sha256(given).hexdigest()[:32]


Tenant = Annotated[str | None, Depends(require_key)]


def build_store(settings: Settings) -> JobStore:
    if settings.embedded:
        return MemoryJobStore(settings.job_ttl_s)
    return RedisJobStore(settings.store_url, settings.job_ttl_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    store = build_store(settings)
    artifacts = ArtifactStore(settings.artifact_dir)
    dispatcher: Dispatcher = (
        EmbeddedDispatcher(settings, store, artifacts)
        if settings.embedded
        else CeleryDispatcher(settings)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        artifacts.sweep(settings.job_ttl_s)
        dispatcher.start()
        yield
        dispatcher.close()

    app = FastAPI(
        title="Explainer",
        version="0.1.0",
        description="Explanations for PyTorch classifiers: submit an image and a method, follow "
        "the job, download the attribution tensor, heat map, overlay and scores.",
        lifespan=lifespan,
        responses={500: {"model": ErrorResponse}},
    )
    app.state.settings, app.state.store, app.state.dispatcher = settings, store, dispatcher
    app.add_middleware(BodyLimit, limit=int(settings.max_upload_bytes * 4 / 3) + 65536)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error_response(error.status, error.code, error.message, error.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        return error_response(
            422, "invalid_request", "the request is invalid", _clean(error.errors())
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        response = error_response(error.status_code, "http_error", str(error.detail))
        response.headers.update(error.headers or {})  # 405's Allow
        return response

    @app.exception_handler(ArtifactStoreFull)
    async def _full(request: Request, error: ArtifactStoreFull):
        log.error("artifact store full: %s", error.__cause__)
        return error_response(507, "insufficient_storage", "the server has no room to store "
                              "this input now; retry later")  # fmt: skip

    @app.exception_handler(RedisError)
    @app.exception_handler(OperationalError)
    async def _unavailable(request: Request, error: Exception):
        log.warning("job store or broker unavailable: %s", error)
        response = error_response(503, "unavailable", "the job store or queue is unavailable; "
                                  "retry shortly")  # fmt: skip
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the server log has details")

    guarded = [Depends(require_key)]

    def find(job_id: str, tenant: str | None) -> JobRecord:
        """The tenant's job, or 404: another tenant's job is as unknown as a missing one."""
        record = store.get(job_id)
        if record is None or record.owner != tenant:
            raise ApiError(404, "not_found", f"no job {_short(job_id, 64)}")
        return record

    def job_view(record: JobRecord, request: Request) -> JobView:
        base = str(request.url_for("get_artifact", job_id=record.id, name="NAME"))
        return JobView(
            **record.model_dump(include=VIEW_FIELDS),
            progress=store.progress(record.id),
            artifacts={name: base.replace("NAME", name) for name in record.artifacts},
        )

    @app.post(
        "/explain",
        status_code=202,
        response_model=JobCreated,
        dependencies=guarded,
        responses={200: {"model": JobCreated, "description": "An identical job exists"}, **ERRORS},
        openapi_extra={"requestBody": _request_body_schema()},
    )
    async def submit(request: Request, tenant: Tenant):
        """Queue an explanation. JSON body, or multipart with a file field ``image`` and a JSON
        field ``request``. Answers 202 with the job id (200 when an identical job is returned)."""
        payload, upload = await _read_submission(request, settings)
        # Decoding the image and the store's Redis calls block: run them off the event loop,
        # so that a slow upload or a stalled Redis never holds up other requests.
        return await run_in_threadpool(accept, request, tenant, payload, upload)

    def accept(request: Request, tenant: str | None, payload: dict, upload: bytes | None):
        """Validate a read submission, then return an identical job or queue a new one."""
        try:
            parsed = explain_request_adapter().validate_python(payload)
        except ValidationError as error:
            details = _clean(error.errors())
            raise ApiError(422, "invalid_request", _summary(details), details) from None
        input_info, data = _check_input(parsed, upload, settings)
        _check_limits(parsed, settings)
        metrics = _check_metrics(parsed)
        options = parsed.options.model_dump(mode="json")
        content_hash = hashlib.sha256(
            json.dumps(
                {"model": parsed.model, "method": parsed.method, "options": options,
                 "target": parsed.target, "seed": parsed.seed, "resize": parsed.resize,
                 "input": input_info["sha256"], "metrics": metrics},
                sort_keys=True,
            ).encode()
        ).hexdigest()  # fmt: skip

        def existing(job_id: str | None) -> JSONResponse | None:
            record = store.get(job_id) if job_id else None
            if record is None or record.status in ("failed", "cancelled"):
                return None
            body = JobCreated(id=record.id, url=_job_url(request, record.id),
                              status=record.status, reused=True)  # fmt: skip
            return JSONResponse(body.model_dump(), status_code=200)

        # Idempotency keys and identical content are looked up within the tenant only.
        idempotency = parsed.idempotency_key and f"{tenant}:{parsed.idempotency_key}"
        content = f"{tenant}:{content_hash}"
        if idempotency and (found := existing(store.lookup_key("idempotency", idempotency))):
            return found
        if parsed.reuse and (found := existing(store.lookup_key("content", content))):
            return found
        job_id = new_job_id()
        record = JobRecord(
            id=job_id,
            created_at=time.time(),
            model=parsed.model,
            method=parsed.method,
            options=options,
            target=parsed.target,
            seed=parsed.seed,
            metrics=metrics,
            input=input_info | {"resize": parsed.resize},
            content_hash=content_hash,
            idempotency_key=parsed.idempotency_key,
            owner=tenant,
        )
        if data is not None:
            artifacts.save_input(job_id, data)
        store.create(record)
        if idempotency:
            holder = store.claim_key("idempotency", idempotency, job_id)
            if holder != job_id and (found := existing(holder)):
                store.finish(job_id, "cancelled", error="duplicate of " + holder)
                return found
            store.rebind_key("idempotency", idempotency, job_id)
        store.rebind_key("content", content, job_id)
        dispatcher.submit(job_id)
        return JobCreated(id=job_id, url=_job_url(request, job_id), status="queued")

    @app.get("/jobs/{job_id}", response_model=JobView, responses=ERRORS)
    async def get_job(
        job_id: str,
        request: Request,
        tenant: Tenant,
        wait: float = Query(0, ge=0, le=60, description="Wait up to this many seconds for the "
                            "job to finish before answering (long poll)."),
    ):  # fmt: skip
        """Status, progress, prediction, scores, artifact links and error of a job."""
        record = await run_in_threadpool(find, job_id, tenant)
        deadline = time.monotonic() + wait
        while record.status not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            record = await run_in_threadpool(find, job_id, tenant)
        return await run_in_threadpool(job_view, record, request)

    @app.delete("/jobs/{job_id}", response_model=JobView, responses=ERRORS)
    def cancel_job(job_id: str, request: Request, tenant: Tenant):
        """Cancel: a queued job never runs; a running one stops at its next step."""
        record = find(job_id, tenant)
        if record.status not in ("succeeded", "failed", "cancelled"):
            store.cancel(job_id)
            dispatcher.revoke(job_id)
        return job_view(find(job_id, tenant), request)

    @app.get(
        "/jobs/{job_id}/artifacts/{name}",
        responses={**ERRORS, 200: {"content": {t: {} for t in set(MEDIA_TYPES.values())}}},
    )
    def get_artifact(job_id: str, name: str, tenant: Tenant):
        """Download an artifact: attribution.npy, heatmap.npy, overlay.png, heatmap.png,
        summary.json (mask methods add mask.npz, explanation.png, history.json)."""
        record = find(job_id, tenant)
        path = artifacts.path(job_id, name) if name in record.artifacts else None
        if path is None:
            raise ApiError(404, "not_found", f"job {job_id} has no artifact {name!r}")
        return FileResponse(
            path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        )

    @app.get("/methods", dependencies=guarded)
    def methods() -> list[dict[str, Any]]:
        """Every method: family, input kinds, and its options with defaults and bounds."""
        return [m.describe() for m in all_methods()]

    @app.get("/quality-metrics", dependencies=guarded)
    def quality_metrics() -> list[dict[str, Any]]:
        """Every quality metric: its definition, the score keys it writes and its parameters."""
        return [m.describe() for m in all_metrics()]

    @app.get("/models", dependencies=guarded)
    def models() -> list[dict[str, Any]]:
        """Every model: input kind and size, normalisation, classes, Grad-CAM layer."""
        return [
            spec.describe() | {"methods": list(settings.allowed_methods.get(name, ())) or None}
            for name, spec in MODELS.items()
        ]

    @app.get("/health", response_model=Health)
    def health():
        """Redis reachable, workers alive, device. No API key needed."""
        redis_ok = None if settings.embedded else store.ping()
        workers = dispatcher.workers()
        ok = workers > 0 and redis_ok is not False
        return Health(
            status="ok" if ok else "degraded",
            mode="embedded" if settings.embedded else "distributed",
            redis=redis_ok,
            workers=workers,
            device=dispatcher.device(),
        )

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=guarded)
    def metrics():
        """Prometheus text format: jobs by state, job durations, queue length."""
        return _prometheus(store, dispatcher)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes,
            )  # fmt: skip
            request_schema = explain_request_adapter().json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["ExplainRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _job_url(request: Request, job_id: str) -> str:
    return str(request.url_for("get_job", job_id=job_id))


def _summary(details: list) -> str:
    """'invalid request: options.steps: Input should be greater than or equal to 1; ...'."""
    parts = []
    for detail in details[:5]:
        # Drop the union tag (the method name) that pydantic puts first in the location.
        loc = [str(p) for p in detail.get("loc", [])]
        if len(loc) > 1 and loc[0] in {m.name for m in all_methods()}:
            loc = loc[1:]
        parts.append(f"{'.'.join(loc) or 'request'}: {detail.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def _clean(errors: list) -> list:
    """Validation errors without the echoed input (it may be a large base64 image), with each
    message and location part cut short (a message may quote a huge value, e.g. the method)."""
    return [
        {"loc": [_short(part) if isinstance(part, str) else part for part in e["loc"]],
         "msg": _short(QUOTED.sub(r"'\1…'", e["msg"]), 300), "type": e["type"]}
        for e in errors[:MAX_ERRORS]
    ]  # fmt: skip


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


async def _read_submission(request: Request, settings: Settings) -> tuple[dict, bytes | None]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        raw, upload = form.get("request"), form.get("image")
        if raw is None or isinstance(raw, bytes | bytearray) or hasattr(raw, "read"):
            raise ApiError(422, "invalid_request", "multipart needs a JSON text field 'request'")
        payload = _json(raw)
        if upload is None or not hasattr(upload, "read"):
            raise ApiError(422, "invalid_request", "multipart needs a file field 'image'")
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(
                413, "payload_too_large", f"image above {settings.max_upload_bytes} bytes"
            )
        if payload.get("image") or payload.get("sample") or payload.get("series"):
            raise ApiError(422, "invalid_request", "give the image as the file field only")
        return payload, data
    if content_type.startswith("application/json") or not content_type:
        return _json(await request.body()), None
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


def _json(raw: str | bytes) -> dict:
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"request is not valid JSON: {error}") from error
    except RecursionError:
        raise ApiError(400, "invalid_json", "request JSON is nested too deeply") from None
    except ValueError as error:  # an integer above Python's digit limit
        raise ApiError(400, "invalid_json", f"request JSON has a value out of range: "
                       f"{_short(str(error))}") from None  # fmt: skip
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", "the request must be a JSON object")
    return payload


def _check_input(parsed, upload: bytes | None, settings: Settings) -> tuple[dict, bytes | None]:
    """Exactly one input; decoded and validated here so bad input fails fast with a 4xx."""
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
        _check_series(parsed.series, settings)
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
    try:  # the scaled copy the worker would make, before it makes it
        check_fits(image.size[1], image.size[0], _explained_size(parsed), parsed.resize,
                   settings.max_pixels)  # fmt: skip
    except InputError as error:
        raise ApiError(413, "invalid_image", str(error)) from error
    return {"kind": "image", "sha256": sha256_bytes(data), "size": list(image.size)}, data


def _check_series(series: list[list[float]], settings: Settings) -> None:
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


def _check_limits(parsed, settings: Settings) -> None:
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
    _check_target(parsed.target, MODELS[parsed.model])
    _check_memory(parsed, settings)
    # Every option at any depth: nested smoothing and an add-on's base_options included.
    for path, field, value in walk_options(parsed.options):
        name = path.rsplit(".", 1)[-1]
        if name in ITERATION_FIELDS and isinstance(value, int) and value > settings.max_iterations:
            raise ApiError(422, "limit_exceeded",
                           f"options.{path}={value} is above this server's limit "
                           f"{settings.max_iterations}")  # fmt: skip
        if names_server_path(field) and value != field.default:
            raise ApiError(422, "invalid_option",
                           f"over the API, options.{path} cannot name a file or folder on the "
                           f"server; leave it at its default ({field.default!r})")  # fmt: skip


def _explained_size(parsed) -> tuple[int, int]:
    """(h, w) the worker explains an image at: the mask methods' image_size, else the model's."""
    side = getattr(parsed.options, "image_size", None)
    return (side, side) if side else MODELS[parsed.model].input_size


def _check_memory(parsed, settings: Settings) -> None:
    """Mask methods hold every obfuscation of a step at once: refuse what would not fit."""
    estimate = getattr(parsed.options, "working_set_bytes", None)
    if estimate is None:
        return
    height, width = _explained_size(parsed)
    needed_mb = estimate(height, width) / 2**20
    if needed_mb > settings.max_job_memory_mb:
        raise ApiError(422, "limit_exceeded",
                       f"{parsed.method} with noise_samples={parsed.options.noise_samples} at "
                       f"{width}×{height} needs about {needed_mb / 1024:.1f} GB per step; this "
                       f"server's limit is {settings.max_job_memory_mb / 1024:.1f} GB: lower "
                       "noise_samples or image_size")  # fmt: skip


def _check_target(target: int | str | None, spec: ModelSpec) -> None:
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


def _check_metrics(parsed) -> list[dict[str, Any]]:
    """Validate the requested metrics against the metric registry; canonical, sorted records."""
    try:
        requests = parse_metrics(parsed.metrics)
    except MetricError as error:
        raise ApiError(422, "invalid_metric", str(error)) from None
    family = get_method(parsed.method).family
    for request in requests:
        if request.spec.needs_history and family != "mask":
            message = f"metric {request.spec.name} needs a mask method, not {parsed.method}"
            raise ApiError(422, "invalid_metric", message)
    records = [{"name": r.spec.name, **r.options.model_dump(mode="json")} for r in requests]
    return sorted(records, key=lambda r: r["name"])


def _prometheus(store: JobStore, dispatcher: Dispatcher) -> str:
    stats, durations = store.stats(), store.durations()
    lines = [
        "# HELP explainer_jobs_total Jobs submitted, and jobs by terminal state.",
        "# TYPE explainer_jobs_total counter",
    ]
    for state in ("submitted", "succeeded", "failed", "cancelled"):
        lines.append(f'explainer_jobs_total{{state="{state}"}} {stats.get(state, 0):g}')
    lines += [
        "# HELP explainer_job_duration_seconds Run time of finished jobs.",
        "# TYPE explainer_job_duration_seconds histogram",
    ]
    for bound in DURATION_BUCKETS:
        label = "+Inf" if math.isinf(bound) else f"{bound:g}"
        count = durations.get(f"le_{bound}", 0)
        lines.append(f'explainer_job_duration_seconds_bucket{{le="{label}"}} {count:g}')
    lines.append(f"explainer_job_duration_seconds_sum {durations.get('sum', 0):g}")
    lines.append(f"explainer_job_duration_seconds_count {durations.get('count', 0):g}")
    lines += [
        "# HELP explainer_queue_length Jobs waiting for a worker.",
        "# TYPE explainer_queue_length gauge",
        f"explainer_queue_length {dispatcher.queue_length()}",
        "# HELP explainer_workers Workers that answered a ping.",
        "# TYPE explainer_workers gauge",
        f"explainer_workers {dispatcher.workers()}",
    ]
    return "\n".join(lines) + "\n"


def _request_body_schema() -> dict:
    ref = {"$ref": "#/components/schemas/ExplainRequest"}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": ref},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request", "image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "request": {
                            "type": "string",
                            "description": "JSON of ExplainRequest without image/sample/series",
                        },
                    },
                }
            },
        },
    }
