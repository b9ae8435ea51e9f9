"""Dependencies of the routes: the server's parts (kept on ``app.state`` by ``create_app``; tests
may override any of these functions) and the caller's tenant from its API key."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from jobs.artifact_store import ArtifactStore
from jobs.model_store import ModelStore
from jobs.pass_times import PassTimes
from jobs.settings import Settings
from jobs.store import JobStore
from service.dispatch import Dispatcher
from service.errors import ApiError

# Each scheme is named: FastAPI names them by class, so the admin key's would be listed as
# 'APIKeyHeader' (X-API-Key) and the document would say that model uploads take an API key.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", scheme_name="APIKeyHeader", auto_error=False,
                              description="An API key.")  # fmt: skip
BEARER = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_models(request: Request) -> ModelStore:
    """The model store, read again if another process changed it."""
    models = request.app.state.models
    models.refresh()
    return models


def get_pass_times(request: Request) -> PassTimes:
    return request.app.state.pass_times


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
ModelsDep = Annotated[ModelStore, Depends(get_models)]
PassTimesDep = Annotated[PassTimes, Depends(get_pass_times)]
ADMIN_KEY_HEADER = APIKeyHeader(name="X-Admin-Key", scheme_name="AdminKeyHeader", auto_error=False,
                                description="An admin key: adds and deletes models.")  # fmt: skip


def matches(supplied: str, keys: tuple[str, ...]) -> bool:
    """Compare with every key, in constant time, so timing tells nothing about any key."""
    given = supplied.encode()
    return any([hmac.compare_digest(given, key.encode()) for key in keys])


def require_key(
    settings: SettingsDep,
    header: Annotated[str | None, Security(API_KEY_HEADER)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> str | None:
    """The caller's tenant: a digest of its API key (None when the server has no keys).
    Each job belongs to the tenant that made it; other tenants cannot see it."""
    if not settings.api_keys:
        return None
    supplied = header or (bearer.credentials if bearer else None)
    if supplied is None:
        raise ApiError(401, "missing_api_key", "an API key is required (X-API-Key header)")
    if not matches(supplied, settings.api_keys):
        raise ApiError(401, "invalid_api_key", "the API key is not valid")
    return hashlib.sha256(supplied.encode()).hexdigest()[:32]


def require_admin(
    settings: SettingsDep, supplied: Annotated[str | None, Security(ADMIN_KEY_HEADER)]
) -> None:
    """An admin key, distinct from the API keys: only admins change the model store."""
    if not settings.admin_keys:
        raise ApiError(403, "models_read_only", "this server takes no models over the API "
                       "(no EXPLAINER_ADMIN_KEYS)")  # fmt: skip
    if supplied is None:
        raise ApiError(401, "missing_admin_key", "an admin key is required (X-Admin-Key)")
    if not matches(supplied, settings.admin_keys):
        raise ApiError(401, "invalid_admin_key", "the admin key is not valid")


Tenant = Annotated[str | None, Depends(require_key)]
