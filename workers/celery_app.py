"""The Celery worker: ``celery -A workers worker``. One process per GPU, models loaded once per
process after the fork (CUDA is never touched in the parent); the parent process runs a reaper
that hands a job whose worker died (its heartbeat stopped) to a live worker."""

from __future__ import annotations

import logging
import threading

from celery import signals

from jobs.artifacts import ArtifactStore
from jobs.models import ModelStore
from jobs.queue import EXPLAIN_TASK, make_celery
from jobs.runner import preload_models, run_job
from jobs.settings import Settings
from jobs.store import RedisJobStore

# Our modules' log records (Celery configures only its own loggers here).
logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(processName)s] "
                    "%(name)s: %(message)s")  # fmt: skip
log = logging.getLogger(__name__)
settings = Settings()
settings.share_cache()
app = make_celery(settings)
_process: dict[str, object] = {}
_reaper_stop = threading.Event()


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
            models=ModelStore(settings.models_path),
            device=device,
        )
    _process["models"].refresh()  # models added or removed since the last job
    return _process["store"], _process["artifacts"], _process["device"]


@signals.worker_process_init.connect
def _load_models(**_: object) -> None:
    from engine.runtime import keep_freed_memory

    keep_freed_memory()
    store, _, device = process_runtime()
    store.redis.sadd("explainer:devices", device)
    store.redis.expire("explainer:devices", 24 * 3600)
    preload_models(settings.preload_models, device)


def reap(store: RedisJobStore) -> list[str]:
    """Requeue the jobs whose heartbeat stopped and send each to the queue again."""
    requeued = store.requeue_stale(settings.heartbeat_timeout_s)
    for job_id in requeued:
        log.warning("job %s lost its worker; queued again", job_id)
        app.send_task(EXPLAIN_TASK, args=[job_id], task_id=job_id)
    return requeued


def _reaper() -> None:
    store = RedisJobStore(settings.store_url, settings.job_ttl_s)
    while not _reaper_stop.wait(settings.heartbeat_interval_s):
        try:
            reap(store)
        except Exception as error:  # Redis away for a moment: try again next period
            log.warning("reaper: %s", error)


@signals.worker_ready.connect
def _start_reaper(**_: object) -> None:
    threading.Thread(target=_reaper, name="explainer-reaper", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    _reaper_stop.set()


@app.task(name=EXPLAIN_TASK)
def explain_job(job_id: str) -> str:
    store, artifacts, device = process_runtime()
    state = run_job(job_id, store, artifacts, settings, device)
    artifacts.sweep(settings.job_ttl_s)
    return state
