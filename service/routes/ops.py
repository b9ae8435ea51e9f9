"""Operations: health for load balancers, Prometheus metrics for monitoring."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import (
    ArtifactsDep,
    DispatcherDep,
    PassTimesDep,
    SettingsDep,
    StoreDep,
    require_key,
)
from service.errors import ERRORS
from service.prometheus import registry
from service.schemas import Health

router = APIRouter()


@router.get("/health", response_model=Health)
def health(
    settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep, artifacts: ArtifactsDep,
    pass_times: PassTimesDep,
):  # fmt: skip
    """Redis and the broker reachable, the artifact store answering, workers alive, device, the
    models the workers have warm. No API key needed. A store that does not answer its ping is
    not asked for the workers' marks (each read would wait out its timeout)."""
    redis_ok = None if settings.embedded else store.ping()
    reachable = redis_ok is not False
    workers = dispatcher.workers() if reachable else 0
    queue_ok = dispatcher.queue_reachable()
    objects_ok = artifacts.objects.reachable()
    warm = pass_times.warm() if reachable else {}
    return Health(
        status="ok" if workers > 0 and reachable and queue_ok and objects_ok else "degraded",
        mode="embedded" if settings.embedded else "distributed",
        redis=redis_ok,
        store=objects_ok,
        workers=workers,
        device=dispatcher.device() if reachable else "unknown",
        warm_models=sorted({model for models in warm.values() for model in models}),
        warm_by_device=warm,
    )


@router.get(
    "/metrics",
    dependencies=[Depends(require_key)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 401: ERRORS[401], 503: ERRORS[503]},
)
def metrics(store: StoreDep, dispatcher: DispatcherDep):
    """Prometheus text format: jobs by state, job durations, queue length, workers."""
    return Response(generate_latest(registry(store, dispatcher)), media_type=CONTENT_TYPE_LATEST)
