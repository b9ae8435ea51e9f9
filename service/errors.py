"""The one error shape of every response, ``{"error": {status, code, message, details}}``, and
the handlers that put every failure into it: our own refusals, validation errors, Starlette's
404/405 (with ``Allow``), a full artifact disk (507), Redis, the broker or the object store
away (503 with ``Retry-After``) and anything unexpected (500). Inputs are never echoed beyond a
short prefix."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from jobs.artifact_store import ArtifactStoreFull
from jobs.objects import StoreUnavailable
from service.schemas import ErrorResponse

RETRY_AFTER_S = 5  # what a 503 asks clients to wait while Redis or the broker is away
NO_ROOM_RETRY_AFTER_S = 60  # a full disk frees up as expired jobs are swept
MAX_ERRORS = 20  # validation errors listed in one response
QUOTED = re.compile(r"'([^']{40})[^']+'")  # a long quoted value in a message, cut to 40 characters
ERROR_STATUSES = (400, 401, 404, 413, 415, 422, 431, 503, 507)
ERRORS = {status: {"model": ErrorResponse} for status in ERROR_STATUSES}
log = logging.getLogger("service")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_response(
    status: int, code: str, message: str, details: list | None = None
) -> JSONResponse:
    body = {"error": {"status": status, "code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status)


def short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def clean(errors: list) -> list:
    """Validation errors without the echoed input (it may be a large base64 image), with each
    message and location part cut short (a message may quote a huge value, e.g. the method)."""
    return [
        {"loc": [short(part) if isinstance(part, str) else part for part in e["loc"]],
         "msg": short(QUOTED.sub(r"'\1…'", e["msg"]), 300), "type": e["type"]}
        for e in errors[:MAX_ERRORS]
    ]  # fmt: skip


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods some route of the app answers on the request's path."""

    # As the app saw the request: HEAD as GET (HeadAsGet), the path from the app's root (a
    # mount's request carries the mount in its root_path).
    root = request.scope.get("app_root_path", "")

    def answers(method: str) -> bool:
        routed = "GET" if method == "HEAD" else method
        scope = {**request.scope, "method": routed, "root_path": root}
        for route in app.router.routes:
            if route.matches(scope)[0] == Match.FULL:
                # a Mount matches any method; this app mounts static files only (GET, HEAD)
                return not isinstance(route, Mount) or method in ("GET", "HEAD")
        return False

    return [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE") if answers(m)]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error_response(error.status, error.code, error.message, error.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        return error_response(
            422, "invalid_request", "the request is invalid", clean(error.errors())
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        response = error_response(error.status_code, "http_error", str(error.detail))
        response.headers.update(error.headers or {})
        if error.status_code == 405:  # every method of the path, not only the first route's
            response.headers["Allow"] = ", ".join(allowed_methods(app, request))
        return response

    @app.exception_handler(ArtifactStoreFull)
    async def _full(request: Request, error: ArtifactStoreFull):
        log.error("artifact store full: %s", error.__cause__)
        response = error_response(507, "insufficient_storage", "the server has no room to "
                                  "store this input now; retry later")  # fmt: skip
        response.headers["Retry-After"] = str(NO_ROOM_RETRY_AFTER_S)
        return response

    def retry_later(code: str, what: str, error: Exception) -> JSONResponse:
        log.warning("%s unavailable: %s", what, error)
        response = error_response(503, code, f"the {what} is unavailable; retry shortly")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.exception_handler(RedisError)
    @app.exception_handler(OperationalError)
    async def _unavailable(request: Request, error: Exception):
        return retry_later("unavailable", "job store or queue", error)

    @app.exception_handler(StoreUnavailable)
    async def _store_away(request: Request, error: StoreUnavailable):
        return retry_later("store_unavailable", "artifact and model store", error)

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the server log has details")
