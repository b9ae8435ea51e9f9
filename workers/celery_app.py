"""The Celery app: Redis broker, late acks, no prefetch, one process per GPU, models loaded once
per process after the fork (CUDA is never touched in the parent)."""

from __future__ import annotations

import os

from celery import Celery, signals

from service.artifacts import ArtifactStore
from service.jobstore import RedisJobStore
from service.settings import Settings

settings = Settings.from_env()

app = Celery("explainer", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
app.conf.update(
    task_acks_late=True,  # a job is acknowledged only when it has finished...
    task_reject_on_worker_lost=True,  # ...and goes back to the queue if its process dies
    worker_prefetch_multiplier=1,  # a busy worker holds no second job
    task_soft_time_limit=settings.soft_time_limit_s,
    task_time_limit=settings.hard_time_limit_s,
    broker_transport_options={
        # A job is redelivered when unacknowledged for this long: above the hard limit, so a
        # running job is never handed to a second worker. Scan for such jobs every second.
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    # A new pool process imports torch and loads the models before it reports ready (4.5–6 s on
    # 2 cores); Celery's default 4 s would kill it and try again, over and over.
    worker_proc_alive_timeout=settings.process_ready_timeout_s,
    worker_max_tasks_per_child=200,
    worker_max_memory_per_child=int(os.environ.get("EXPLAINER_WORKER_MAX_MEMORY_KB", 8_000_000)),
    task_ignore_result=True,  # results live in our job records and the artifact store
    worker_hijack_root_logger=False,
)

_process: dict[str, object] = {}


def process_runtime() -> tuple[RedisJobStore, ArtifactStore, str]:
    """Job store, artifact store and device of this worker process (created after the fork)."""
    if not _process:
        import torch

        index = 0
        try:
            from billiard.process import current_process

            index = max(0, (current_process().index or 0))
        except Exception:  # the solo pool has no index
            pass
        device = settings.device or (
            f"cuda:{index % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )
        _process.update(
            store=RedisJobStore(settings.store_url, settings.job_ttl_s),
            artifacts=ArtifactStore(settings.artifact_dir),
            device=device,
        )
    return _process["store"], _process["artifacts"], _process["device"]


@signals.worker_process_init.connect
def _load_models(**_: object) -> None:
    from engine.runtime import keep_freed_memory
    from workers.runner import preload_models

    keep_freed_memory()

    store, _, device = process_runtime()
    store.redis.sadd("explainer:devices", device)
    store.redis.expire("explainer:devices", 24 * 3600)
    preload_models(settings.preload_models, device)


@app.task(name="explainer.explain")
def explain_job(job_id: str) -> str:
    from workers.runner import run_job

    store, artifacts, device = process_runtime()
    state = run_job(job_id, store, artifacts, device)
    artifacts.sweep(settings.job_ttl_s)
    return state
