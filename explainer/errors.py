"""Typed errors of the client. Every refusal of the API has one shape,
``{"error": {"status", "code", "message", "details"}}``; :func:`api_error` turns it into the
:class:`ApiError` subclass of its status, so callers can catch ``NotFound`` or
``InvalidRequest`` rather than compare numbers."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx


class ExplainerError(Exception):
    """Base of every error the client raises."""


class ApiError(ExplainerError):
    """An error response of the API: its HTTP ``status``, machine-readable ``code``,
    human-readable ``message``, optional ``details`` (validation errors, one per field) and
    the ``Retry-After`` seconds it asked for, if any."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.details, self.retry_after = details, retry_after


class BadRequest(ApiError):
    """400: the body is not valid JSON (malformed, nested too deeply, out of range)."""


class Unauthorized(ApiError):
    """401: the API key (or admin key) is missing or not valid."""


class Forbidden(ApiError):
    """403: the server does not allow this (e.g. model uploads without admin keys)."""


class NotFound(ApiError):
    """404: no such job, artifact, model or sample (or one that belongs to another key)."""


class Conflict(ApiError):
    """409: the resource exists already (e.g. a model name)."""


class PayloadTooLarge(ApiError):
    """413: the input is above one of the server's size limits."""


class UnsupportedMediaType(ApiError):
    """415: the body is neither JSON nor multipart."""


class InvalidRequest(ApiError):
    """422: the request is well-formed but refused (unknown method or model, option out of
    bounds, wrong input kind, job above the server's budgets, ...); ``details`` lists the
    fields where the API names them."""


class ServerError(ApiError):
    """500: the server failed unexpectedly (its log has the details)."""


class Unavailable(ApiError):
    """503: the job store or queue is unreachable for now; the client retries these itself
    (``retries``), so this reaches callers only when the retries are spent."""


class NoRoom(ApiError):
    """507: the server's artifact disk is full; retry after ``retry_after`` seconds."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    500: ServerError,
    503: Unavailable,
    507: NoRoom,
}


class ConnectionFailed(ExplainerError):
    """The server could not be reached (or the connection broke) and retrying did not help,
    or the request was not safe to repeat."""


class JobError(ExplainerError):
    """A job ended without a result; ``job`` is its last view (a :class:`explainer.Job`)."""

    def __init__(self, job: Any, message: str) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The job failed; ``job.error`` says why."""


class JobCancelled(JobError):
    """The job was cancelled."""


class WaitTimeout(ExplainerError, TimeoutError):
    """The job did not finish within the time the caller allowed; ``job`` is its last view."""

    def __init__(self, job: Any, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g} s")
        self.job = job


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (the delay form; an HTTP date is ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def api_error(response: httpx.Response) -> ApiError:
    """The typed error of an error response. A body that is not the API's error shape (a proxy's
    page, say) still gives an error of the status's class, with the start of the body."""
    status, code, message, details = response.status_code, "http_error", "", None
    with contextlib.suppress(ValueError):
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or "")
            details = error.get("details")
    if not message:
        message = response.text[:200] or response.reason_phrase
    cls = BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, code, message, details, retry_after(response))
