"""The Python client of the explanation service: ``from explainer.client import Client``.

It talks to the REST API over HTTP only and imports nothing of the server (engine, jobs,
service, workers), so it installs and runs wherever httpx, numpy and Pillow do."""

from explainer.client import Client
from explainer.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    ExplainerError,
    Forbidden,
    InvalidRequest,
    JobCancelled,
    JobError,
    JobFailed,
    NoRoom,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    WaitTimeout,
)
from explainer.result import Result
from explainer.types import Job, MethodInfo, ModelInfo, Prediction, ScoreMeaning

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "ExplainerError",
    "Forbidden",
    "InvalidRequest",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "MethodInfo",
    "ModelInfo",
    "NoRoom",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "Result",
    "ScoreMeaning",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "WaitTimeout",
]
