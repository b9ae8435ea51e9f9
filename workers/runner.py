"""Run one job: the same code in a Celery worker and in the embedded in-process worker.

Reads the job record and its input, calls ``engine.explain`` with a progress callback that writes
progress into the record and stops at the next step when the job is cancelled, writes the
artifacts, and records exactly one terminal state (a redelivered job that already finished is
skipped).
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from engine.artifacts import write_artifacts
from engine.data import InputError
from engine.explain import cached_model, explain
from engine.method import MethodError, OptionsError
from engine.metrics.base import MetricError
from engine.models import ModelError
from service.artifacts import ArtifactStore
from service.jobstore import JobStore

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
USER_ERRORS = (OptionsError, MethodError, ModelError, InputError, MetricError)


class JobCancelled(Exception):
    """Raised from the progress callback when the job's cancel flag is set."""


class ProgressReporter:
    """Writes (step, total, extra values) into the job record at most every ``interval`` seconds,
    and raises :class:`JobCancelled` once the cancel flag is seen."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.25):
        self.store, self.job_id, self.interval = store, job_id, interval
        self._last = 0.0

    def __call__(self, done: int, total: int, **values: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and done < total:
            return
        self._last = now
        self.store.set_progress(self.job_id, {"step": done, "total": total, **values})
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled


def preload_models(names: tuple[str, ...], device: str) -> None:
    """Load models into this process's cache before the first job; a model that cannot load
    is logged here and fails its jobs later with the reason."""
    for name in names:
        try:
            cached_model(name, None, device)
        except Exception as error:
            log.warning("could not preload %s: %s", name, error)


def job_input(record, artifacts: ArtifactStore, job_id: str):
    kind = record.input["kind"]
    if kind == "sample":
        return record.input["name"]
    return artifacts.load_input(job_id)


def run_job(job_id: str, store: JobStore, artifacts: ArtifactStore, device: str = "cpu") -> str:
    """Run job ``job_id`` to a terminal state; returns that state (or 'skipped')."""
    record = store.start(job_id)
    if record is None:
        return "skipped"  # unknown, cancelled, or already finished (a redelivery)
    if store.cancel_requested(job_id):
        store.finish(job_id, "cancelled", error="cancelled before it started")
        return "cancelled"
    if record.attempts > MAX_ATTEMPTS:
        store.finish(job_id, "failed", error=f"worker lost {MAX_ATTEMPTS} times while running it")
        return "failed"
    reporter = ProgressReporter(store, job_id)
    try:
        result = explain(
            record.model,
            job_input(record, artifacts, job_id),
            record.method,
            record.options,
            target=record.target,
            seed=record.seed,
            device=device,
            resize=record.input.get("resize", "center_crop"),
            progress=reporter,
            metrics=record.metrics,
        )
        staging = artifacts.staging_dir(job_id, record.attempts)
        try:
            paths = write_artifacts(result, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # e.g. a full disk: leave nothing half-made
            raise
        artifacts.publish(job_id, staging)
        summary = result.summary()
        final = store.finish(
            job_id,
            "succeeded",
            prediction=summary["prediction"],
            scores=summary["scores"],
            artifacts=sorted(paths),
            timings=summary["metadata"]["timings"],
        )
        return final.status if final else "skipped"
    except JobCancelled:
        store.finish(job_id, "cancelled", error="cancelled while running")
        return "cancelled"
    except USER_ERRORS as error:
        store.finish(job_id, "failed", error=str(error))
        return "failed"
    except Exception as error:
        if type(error).__name__ == "SoftTimeLimitExceeded":
            store.finish(job_id, "failed", error="the job exceeded its time limit")
            return "failed"
        log.exception("job %s failed", job_id)
        # Library internals (messages, paths) stay in the worker's log, under the job's id.
        message = (f"internal error while running {record.method} on {record.model}; the "
                   f"worker's log has the details for job {job_id}")  # fmt: skip
        store.finish(job_id, "failed", error=message)
        return "failed"
