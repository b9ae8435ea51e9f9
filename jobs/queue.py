"""The Celery app, built from given settings: Redis broker, late acks, no prefetch, the time
limits and visibility timeout of :class:`~jobs.settings.Settings`. The API sends tasks with it
(by name); ``workers`` registers the task and runs them."""

from __future__ import annotations

import contextlib
import json
import time

from celery import Celery

from jobs.settings import Settings

EXPLAIN_TASK = "explainer.explain"
QUEUE = "celery"  # Celery's default queue; its Redis lists hold the waiting jobs
# Kombu keeps one Redis list per priority step and serves step 0 first: new jobs go to step 3,
# a job taken back from a dead worker to step 0, ahead of every waiting job.
NEW_JOB_PRIORITY, FRONT_PRIORITY = 3, 0
PRIORITY_STEPS = (0, 3)
QUEUE_KEYS = tuple(QUEUE if step == 0 else f"{QUEUE}\x06\x16{step}" for step in PRIORITY_STEPS)


WORKERS_KEY = "explainer:workers"  # worker name → time of its last liveness mark


def mark_alive(redis_client, name: str) -> None:
    """Worker ``name`` is alive now (its reaper calls this every heartbeat period)."""
    now = time.time()
    with redis_client.pipeline() as pipe:
        pipe.zadd(WORKERS_KEY, {name: now})
        pipe.zremrangebyscore(WORKERS_KEY, 0, now - 24 * 3600)
        pipe.execute()


def mark_gone(redis_client, name: str) -> None:
    redis_client.zrem(WORKERS_KEY, name)


def live_workers(redis_client, within_s: float) -> int:
    """Workers that marked themselves alive in the last ``within_s`` seconds."""
    return int(redis_client.zcount(WORKERS_KEY, time.time() - within_s, "+inf"))


def waiting_job_ids(broker_client) -> set[str]:
    """The ids of the jobs whose messages wait in the queue's lists (kombu's Redis transport
    keeps each message as JSON with the task id in its headers); not those a worker took."""
    ids: set[str] = set()
    for key in QUEUE_KEYS:
        for raw in broker_client.lrange(key, 0, -1):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                ids.add(json.loads(raw)["headers"]["id"])
    return ids


def send_job(app: Celery, job_id: str, front: bool = False) -> None:
    """Queue job ``job_id`` (task id = job id): behind the waiting jobs, or ``front``."""
    priority = FRONT_PRIORITY if front else NEW_JOB_PRIORITY
    app.send_task(EXPLAIN_TASK, args=[job_id], task_id=job_id, priority=priority)


def make_celery(settings: Settings) -> Celery:
    app = Celery("explainer", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_acks_late=True,  # a job is acknowledged only when it has finished...
        task_reject_on_worker_lost=True,  # ...and goes back to the queue if its process dies
        worker_prefetch_multiplier=1,  # a busy worker holds no second job
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        broker_transport_options={
            # A job is redelivered when unacknowledged for this long: above the hard limit, so
            # a running job is never handed to a second worker. Scan for such jobs every second.
            # (A dead worker's job is usually taken over much sooner, from its heartbeat.)
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "priority_steps": list(PRIORITY_STEPS),
            "queue_order_strategy": "priority",
            # A stalled broker fails a publish in seconds (a 503), instead of holding the
            # API's thread, and with it, once enough submits wait, every other request.
            "socket_timeout": 3,
            "socket_connect_timeout": 2,
        },
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        broker_connection_retry_on_startup=True,
        # A new pool process imports torch and loads the models before it reports ready
        # (4.5–6 s on 2 cores); Celery's default 4 s would kill it and try again, over and over.
        worker_proc_alive_timeout=settings.process_ready_timeout_s,
        worker_max_tasks_per_child=200,
        worker_max_memory_per_child=settings.worker_max_memory_kb,
        task_ignore_result=True,  # results live in our job records and the artifact store
        worker_hijack_root_logger=False,
    )
    return app
