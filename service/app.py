"""The FastAPI application: submit explanations, follow jobs, download artifacts.

``create_app`` builds the server's parts from :class:`~jobs.settings.Settings` and keeps them on
``app.state``; the routes (``service.routes``) reach them through the dependencies of
``service.deps``.
"""

from __future__ import annotations

import base64
import io
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from jobs.artifact_store import ArtifactStore
from jobs.model_store import ModelStore, ModelUpload
from jobs.objects import open_object_store
from jobs.pass_times import open_pass_times
from jobs.settings import Settings
from jobs.sqlite_store import SqliteJobStore
from jobs.store import JobStore, RedisJobStore
from jobs.training_jobs import share_trained_sets
from jobs.warmup import WARM_METHOD
from service.dispatch import CeleryDispatcher, Dispatcher, EmbeddedDispatcher
from service.errors import ApiError, error_response, install_error_handlers
from service.routes import jobs, listings, model_registry, ops, studies, training, web
from service.schemas import ErrorResponse, explain_request_adapter, study_request_model
from service.submission import check_input, parse_request, plan_job

log = logging.getLogger(__name__)

Limit = tuple[int, str]  # bytes, and the setting that sets them
MAX_HEADER_BYTES = 64 * 1024  # all header lines of a request together
READ_HEADER_BYTES = 2 * 1024 * 1024  # what the HTTP parser reads before it gives up unanswered


class RequestLimits:
    """Pure ASGI middleware: refuse headers above MAX_HEADER_BYTES with 431, and request bodies
    above ``limit`` bytes with 413, streaming; ``by_path`` gives some paths their own (model
    weights, training zips). The 413 names the setting that raises the limit."""

    def __init__(self, app, limit: Limit, by_path: dict[str, Limit]):
        self.app, self.limit, self.by_path = app, limit, by_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            message = f"request headers above {MAX_HEADER_BYTES} bytes"
            response = error_response(431, "headers_too_large", message)
            return await response(scope, receive, send)
        limit = self.by_path.get(scope["path"], self.limit)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit[0]:
            return await self._refuse(limit, scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit[0]:
                raise ApiError(413, "payload_too_large", "request body above the limit")
            return message

        try:
            await self.app(scope, limited_receive, send)
        except ApiError:
            await self._refuse(limit, scope, receive, send)

    async def _refuse(self, limit: Limit, scope, receive, send):
        message = f"request body above the limit of {limit[0]} bytes (set by {limit[1]})"
        await error_response(413, "payload_too_large", message)(scope, receive, send)


class HeadAsGet:
    """Pure ASGI middleware: HEAD is answered as GET is, without the body (RFC 9110 §9.3.2).
    FastAPI routes only the methods a route declares, so HEAD was a 405 everywhere."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def warm_submissions(settings: Settings) -> None:
    """Check a submission of each default model once, a sample and an uploaded PNG, as POST
    /explain does: the first one in a process builds the request model (a union over every
    method's options), imports the image readers and surveys the model for its plan."""
    from PIL import Image

    upload = io.BytesIO()
    Image.new("RGB", (32, 32)).save(upload, format="PNG")
    image = base64.b64encode(upload.getvalue()).decode()
    for model in settings.preload_models:
        for given in ({"sample": "chelsea"}, {"image": image}):
            try:
                parsed = parse_request({"model": model, "method": WARM_METHOD, **given})
                plan_job(parsed, check_input(parsed, None, settings)[0], settings)
            except Exception as error:  # not an image model: its jobs say why
                log.debug("no submission of %s checked ahead: %s", model, error)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.share_cache()
    objects = open_object_store(settings)  # artifacts, models and trained sets
    share_trained_sets(objects)
    artifacts = ArtifactStore(settings.artifact_dir, objects)
    model_store = ModelStore(settings.models_path, allowed_factories=settings.allowed_factories,
                             objects=objects)  # fmt: skip
    pass_times = open_pass_times(settings)
    store: JobStore
    dispatcher: Dispatcher
    if settings.embedded:
        store = SqliteJobStore(settings.job_db_path, settings.job_ttl_s)
        dispatcher = EmbeddedDispatcher(settings, store, artifacts, model_store, pass_times)
    else:
        store = RedisJobStore(settings.store_url, settings.job_ttl_s)
        dispatcher = CeleryDispatcher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """Serve once the models are warm: in the in-process worker, and in this process's
        check of a submission."""
        artifacts.sweep(settings.job_ttl_s)
        dispatcher.start()
        await run_in_threadpool(dispatcher.wait_ready, settings.process_ready_timeout_s)
        await run_in_threadpool(warm_submissions, settings)
        yield
        dispatcher.close()

    app = FastAPI(
        title="Explainer",
        version="0.1.0",
        description="Explanations for PyTorch classifiers: submit an image and a method, follow "
        "the job, download the attribution tensor, heat map, overlay and scores.",
        lifespan=lifespan,
        responses={500: {"model": ErrorResponse}},
        docs_url=None,  # /docs: service/routes/web.py, Swagger UI from the package's own files
        redoc_url=None,  # ReDoc would come from a CDN
    )
    app.state.settings, app.state.store = settings, store
    app.state.artifacts, app.state.dispatcher = artifacts, dispatcher
    app.state.models, app.state.pass_times = model_store, pass_times
    zips = (2 * settings.max_training_upload_bytes + 65536,  # a support set's two zips
            "EXPLAINER_MAX_TRAINING_UPLOAD_BYTES")  # fmt: skip
    app.add_middleware(
        RequestLimits,
        limit=(int(settings.max_upload_bytes * 4 / 3) + 65536,  # base64 in JSON
               "EXPLAINER_MAX_UPLOAD_BYTES"),
        by_path={"/models": (settings.max_model_bytes + 65536, "EXPLAINER_MAX_MODEL_BYTES"),
                 "/patterns": zips, "/support-sets": zips, "/studies": zips},
    )  # fmt: skip
    app.add_middleware(HeadAsGet)
    install_error_handlers(app)
    for module in (jobs, studies, training, listings, model_registry, ops, web):
        app.include_router(module.router)
    app.mount("/ui", web.static_files, name="ui")
    app.mount("/ui-swagger", web.swagger_files, name="ui-swagger")

    def openapi() -> dict:
        """FastAPI's document plus the explain request: a union over the method registry."""
        if app.openapi_schema is None:
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
            for extra in (ModelUpload, training.PatternsRequest, training.SupportSetRequest):
                components[extra.__name__] = extra.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            study = study_request_model().model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(study.pop("$defs", {}))
            components["StudyRequest"] = study
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
