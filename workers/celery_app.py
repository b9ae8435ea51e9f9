"""The Celery worker: ``celery -A workers worker``. One process per GPU, models loaded and warmed
(:mod:`jobs.warmup`) once per process after the fork, before it takes a job (CUDA is never
touched in the parent); the parent process runs a reaper that marks the worker alive, puts a
job whose worker died (its heartbeat stopped, or its pool process on this host is gone) at the
front of the queue, and sends the jobs whose submitter died before it could queue them, or
whose message a vanished worker took."""

from __future__ import annotations

import logging
import threading

from celery import signals

from jobs.artifact_store import ArtifactStore
from jobs.model_store import ModelStore
from jobs.objects import StoreUnavailable, open_object_store
from jobs.pass_times import RedisPassTimes
from jobs.queue import (
    EXPLAIN_TASK,
    make_celery,
    mark_alive,
    mark_gone,
    send_job,
    waiting_job_ids,
)
from jobs.runner import run_job
from jobs.settings import Settings
from jobs.store import RedisJobStore
from jobs.training_jobs import share_trained_sets
from jobs.warmup import warm_up

# Our modules' log records (Celery configures only its own loggers here).
logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(processName)s] "
                    "%(name)s: %(message)s")  # fmt: skip
log = logging.getLogger(__name__)
settings = Settings()
settings.share_cache()
app = make_celery(settings)
_process: dict[str, object] = {}
_reaper_stop = threading.Event()
_reapers: list[threading.Thread] = []  # the parent process's reaper thread


def process_runtime() -> tuple[RedisJobStore, ArtifactStore, str]:
    """Job store, artifact store and device of this worker process (created after the fork);
    ``_process["pass_times"]`` holds its measured seconds per pass."""
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
        objects = open_object_store(settings)  # artifacts, models and trained sets
        share_trained_sets(objects)
        _process.update(
            store=RedisJobStore(settings.store_url, settings.job_ttl_s),
            artifacts=ArtifactStore(settings.artifact_dir, objects),
            models=ModelStore(settings.models_path, objects=objects),
            device=device,
            pass_times=RedisPassTimes(settings.store_url),
        )
    try:
        _process["models"].refresh()  # models added or removed since the last job
    except StoreUnavailable as error:  # the job runs with the models this process has
        log.warning("model store not refreshed: %s", error)
    return _process["store"], _process["artifacts"], _process["device"]


_parent: dict[str, object] = {}  # the parent's WorkController, inherited by its pool processes


@signals.worker_init.connect
def _remember_worker(sender: object, **_: object) -> None:
    _parent["worker"] = sender  # its concurrency is an int ("auto" resolved) when the pool forks


@signals.worker_process_init.connect
def _load_models(**_: object) -> None:
    from engine.runtime import keep_freed_memory, share_cores

    keep_freed_memory()
    worker = _parent.get("worker")
    threads = share_cores(worker.concurrency if worker else 1, settings.threads_per_job)
    log.info("%s thread(s) per job", threads)
    store, _, device = process_runtime()
    store.redis.sadd("explainer:devices", device)
    store.redis.expire("explainer:devices", 24 * 3600)
    warm_up(settings.preload_models, device, _process["pass_times"])


UNDISPATCHED_AFTER_S = 10.0  # a submitter queues its job within milliseconds of the record


class LostMessages:
    """Jobs whose queue message a worker took and then vanished with, before it claimed the job:
    an idle worker's blocking pop can be served on the connection of a host that just died, and
    the message leaves the queue without reaching kombu's unacked set (or reaches it and comes
    back only after the visibility timeout). A live worker claims a job within milliseconds of
    taking its message, so a job queued for over ``UNDISPATCHED_AFTER_S``, unclaimed, and absent
    from the queue's lists in two scans a reaper period apart is lost. Sending it again is safe:
    a job runs once whatever its messages (``JobStore.start`` claims it once)."""

    def __init__(self) -> None:
        self.absent: set[str] = set()  # unclaimed and not in the queue at the last scan

    def scan(self, store: RedisJobStore, broker) -> list[str]:
        unclaimed = set(store.unclaimed(UNDISPATCHED_AFTER_S))
        absent = unclaimed - waiting_job_ids(broker) if unclaimed else set()
        lost = sorted(absent & self.absent)
        self.absent = absent - set(lost)
        return lost


def reap(store: RedisJobStore, broker, lost_messages: LostMessages) -> list[str]:
    """Requeue the jobs whose worker died, at the front of the queue, send the queued jobs that
    never got their message, and again those whose message was lost; returns the ids sent."""
    requeued = store.requeue_stale(settings.heartbeat_timeout_s)
    for job_id in requeued:
        log.warning("job %s lost its worker; queued again at the front", job_id)
        send_job(app, job_id, front=True)
    orphans = store.undispatched(UNDISPATCHED_AFTER_S)
    for job_id in orphans:
        log.warning("job %s was recorded but never queued; queuing it now", job_id)
        send_job(app, job_id)
        store.dispatched(job_id)
    lost = [job_id for job_id in lost_messages.scan(store, broker) if job_id not in orphans]
    for job_id in lost:
        log.warning("job %s: its message was taken and never run; queued again at the front",
                    job_id)  # fmt: skip
        send_job(app, job_id, front=True)
    return requeued + orphans + lost


def _reaper(name: str) -> None:
    import redis

    store = RedisJobStore(settings.store_url, settings.job_ttl_s)
    broker = redis.Redis.from_url(settings.broker_url, socket_timeout=3, socket_connect_timeout=2)
    lost_messages = LostMessages()
    while True:
        try:
            mark_alive(store.redis, name)
            reap(store, broker, lost_messages)
        except Exception as error:  # Redis away for a moment: try again next period
            log.warning("reaper: %s", error)
        if _reaper_stop.wait(settings.heartbeat_interval_s):
            break
    try:
        mark_gone(store.redis, name)
    except Exception as error:
        log.warning("could not mark worker %s gone: %s", name, error)


@signals.worker_ready.connect
def _start_reaper(sender: object = None, **_: object) -> None:
    name = getattr(sender, "hostname", None) or "worker"
    reaper = threading.Thread(target=_reaper, args=(name,), name="explainer-reaper", daemon=True)
    _reapers.append(reaper)
    reaper.start()


@signals.worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    _reaper_stop.set()
    for reaper in _reapers:
        reaper.join(timeout=5)  # it marks this worker gone


@app.task(name=EXPLAIN_TASK)
def explain_job(job_id: str) -> str:
    store, artifacts, device = process_runtime()
    state = run_job(job_id, store, artifacts, settings, device, pass_times=_process["pass_times"])
    artifacts.sweep(settings.job_ttl_s)
    return state
