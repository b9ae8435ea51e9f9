"""The Celery app, built from given settings: Redis broker, late acks, no prefetch, the time
limits and visibility timeout of :class:`~jobs.settings.Settings`. The API sends tasks with it
(by name); ``workers`` registers the task and runs them."""

from __future__ import annotations

from celery import Celery

from jobs.settings import Settings

EXPLAIN_TASK = "explainer.explain"
QUEUE = "celery"  # Celery's default queue; its Redis list holds the waiting jobs


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
