"""Run one job (an explanation, a training job of :mod:`jobs.training_jobs`, or a batch of a
study, :mod:`jobs.studies`): the same code in a Celery worker and in the embedded in-process
worker.

Claims the job record for this run, keeps a heartbeat in it while it runs (so that a live
worker can take over a job whose worker died, :meth:`JobStore.requeue_stale`), calls
``engine.explain`` with a progress callback that writes progress into the record and stops at
the next step when the job is cancelled or over its time limit, writes the artifacts, and
records exactly one terminal state (a redelivered job that already finished is skipped). A run
asked to stop for a graceful shutdown (``shutdown``) stops at its next step and hands the job
back to queued (:meth:`JobStore.release`) instead.
"""

from __future__ import annotations

import io
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from engine.artifacts import write_artifacts
from engine.data import InputError
from engine.data.timeseries import SERIES_SAMPLES, series_sample
from engine.explain import explain
from engine.method import MethodError, OptionsError
from engine.metrics.base import MetricError
from engine.metrics.timeseries import white_box
from engine.models import ModelError
from engine.runtime import (
    is_out_of_memory,
    max_rows_per_pass,
    memory_budget,
    rows_per_pass_at_most,
    stoppable,
)
from jobs.artifact_store import ArtifactStore, is_no_room
from jobs.objects import StoreUnavailable
from jobs.pass_times import PassTimes
from jobs.records import TERMINAL, JobRecord, live_run, new_run_token
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.studies import finish_if_done, run_batch
from jobs.training_jobs import WORK as TRAINING_WORK
from jobs.training_jobs import set_extras

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_ATTEMPTS = 2  # a job whose worker died once is run once more, never a third time
# (runs handed back at a graceful shutdown, JobRecord.released, are not counted as lost)
NO_ROOM_MESSAGE = "the server had no room to store this job's results; submit it again later"
STORE_AWAY_MESSAGE = ("the artifact store was unavailable while this job read its input or "
                      "stored its results; submit it again later")  # fmt: skip
WORK = {**TRAINING_WORK, "study_batch": run_batch}  # the kinds of job besides explanations
USER_ERRORS = (OptionsError, MethodError, ModelError, InputError, MetricError)


class JobStopped(Exception):
    """Raised from the progress callback to stop a run; ``state`` and ``error`` say why."""

    def __init__(self, state: str, error: str | None):
        super().__init__(error)
        self.state, self.error = state, error


class Heartbeat:
    """A thread that writes the run's heartbeat into its record every ``interval`` seconds;
    ``lost`` is set once the record no longer belongs to this run (taken over, or finished by
    a time-limit watchdog)."""

    def __init__(self, store: JobStore, job_id: str, token: str, interval: float):
        self.store, self.job_id, self.token, self.interval = store, job_id, token, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.beat(self.job_id, self.token):
                    self.lost.set()
                    return
            except Exception as error:  # Redis away for a moment: try again next period
                log.warning("heartbeat of job %s failed: %s", self.job_id, error)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class ProgressReporter:
    """Writes (step, total, extra values) into the job record at most every ``interval`` seconds,
    and stops the run (:class:`JobStopped`) once the job is cancelled, past ``deadline``
    (monotonic seconds), no longer this run's, or its server is stopping (``shutdown`` set:
    state "released"). :meth:`check` runs at every model pass of
    every loop (:func:`engine.runtime.stoppable`), so a method that reports seldom still stops.
    A store away for a moment (a stalled Redis) delays a progress write, never fails the job:
    the newest progress is written at the next chance."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        heartbeat: Heartbeat | None = None,
        deadline: float | None = None,
        interval: float = 0.25,
        shutdown: threading.Event | None = None,
    ):
        self.store, self.job_id, self.interval = store, job_id, interval
        self.heartbeat, self.deadline, self.shutdown = heartbeat, deadline, shutdown
        self._last = 0.0
        self._unwritten: dict[str, Any] | None = None

    def __call__(self, done: int, total: int, **values: Any) -> None:
        self._unwritten = {"step": done, "total": total, **values}
        self.check(now=done >= total)

    def check(self, now: bool = False) -> None:
        """Stop the run if it should stop; write the newest progress and read the cancel flag
        at most every ``interval`` seconds (or ``now``)."""
        clock = time.monotonic()
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            raise JobStopped("skipped", None)
        if self.shutdown is not None and self.shutdown.is_set():
            raise JobStopped("released", None)
        overdue = self.deadline is not None and clock > self.deadline
        if now or overdue or clock - self._last >= self.interval:
            self._last = clock
            cancelled = False
            try:
                cancelled = self.store.report(self.job_id, self._unwritten)
                self._unwritten = None
            except self.store.transient_errors as error:
                log.warning("job %s: progress not written (%s); trying again later",
                            self.job_id, error)  # fmt: skip
            if cancelled:
                raise JobStopped("cancelled", "cancelled while running")
        if overdue:
            raise JobStopped("failed", "the job exceeded its time limit")


def persist(store: JobStore, write: Callable[[], T], within_s: float) -> T:
    """``write()`` to the store, tried again for up to ``within_s`` seconds while the store is
    away for a moment (:attr:`JobStore.transient_errors`): a finished job's result is not
    thrown away because Redis stalled as it finished."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return write()
        except store.transient_errors as error:
            if time.monotonic() > deadline:
                raise
            log.warning("job store unavailable (%s); trying again", error)
            time.sleep(0.5)


def job_input(record: JobRecord, artifacts: ArtifactStore) -> tuple[Any, np.ndarray | None]:
    """What ``explain`` takes for the job's input (a sample name, image bytes, or a series
    array) and the series' ground truth, if it has one."""
    source = record.input
    if source["kind"] == "sample":
        if source["name"] in SERIES_SAMPLES:
            series, truth = series_sample(source["name"])
            return series.numpy(), truth.numpy()
        return source["name"], None
    data = artifacts.load_input(record.id)
    if source["kind"] == "series":
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return stored["series"], stored.get("truth")
    return data, None


def claim(store: JobStore, job_id: str, token: str, settings: Settings) -> JobRecord | None:
    """Claim the job for this run. A job still running with a live heartbeat elsewhere (a
    redelivery while its first run goes on, or right after that run's process died) is waited
    for until it finishes (None) or its heartbeat stops (then this run takes it over)."""
    deadline = time.monotonic() + settings.heartbeat_timeout_s + 2 * settings.heartbeat_interval_s
    while True:
        record = store.start(job_id, token, settings.heartbeat_timeout_s)
        if record is not None:
            return record
        current = store.get(job_id)
        if current is None or current.status in TERMINAL or time.monotonic() > deadline:
            return None
        time.sleep(min(1.0, settings.heartbeat_interval_s))


def run_job(
    job_id: str,
    store: JobStore,
    artifacts: ArtifactStore,
    settings: Settings,
    device: str = "cpu",
    time_limit_s: float | None = None,
    shutdown: threading.Event | None = None,
    pass_times: PassTimes | None = None,
) -> str:
    """Run job ``job_id`` to a terminal state; returns that state (or 'skipped').
    ``time_limit_s``: stop at the first progress step after this many seconds (the embedded
    worker's soft limit; Celery enforces its own). ``shutdown``: once set, the run stops at its
    next step and hands the job back to queued, not counted as lost (returns 'released').
    ``pass_times``: where a succeeded explanation's seconds per pass on ``device`` go."""
    token = new_run_token()
    with live_run(token):  # this process's reaper must not take it for a dead run
        state = _run_job(job_id, token, store, artifacts, settings, device, time_limit_s,
                         shutdown)  # fmt: skip
    if state in TERMINAL:
        after_study_batch(job_id, store, artifacts)
    if state == "succeeded" and pass_times is not None:
        pass_times.observe(store, job_id, device)
    return state


def after_study_batch(job_id: str, store: JobStore, artifacts: ArtifactStore) -> None:
    """A study's batch finished: build the study's report if it was the last one. A failure
    here is logged, never the job's: the API builds a missing report when the study is read."""
    try:
        record = store.get(job_id)
        if record is not None and record.kind == "study_batch":
            finish_if_done(store, artifacts, record.input["study"])
    except Exception:
        log.exception("the report of the study of batch %s was not built", job_id)


def _run_job(
    job_id: str,
    token: str,
    store: JobStore,
    artifacts: ArtifactStore,
    settings: Settings,
    device: str,
    time_limit_s: float | None,
    shutdown: threading.Event | None,
) -> str:
    patience = settings.heartbeat_timeout_s  # a stalled store, before this run gives up
    record = persist(store, lambda: claim(store, job_id, token, settings), patience)
    if record is None:
        return "skipped"  # unknown, cancelled, finished, or running elsewhere
    if store.cancel_requested(job_id):
        store.finish(job_id, "cancelled", error="cancelled before it started")
        return "cancelled"
    lost = record.attempts - record.released - 1  # earlier runs neither finished nor handed back
    if lost >= MAX_ATTEMPTS:
        store.finish(job_id, "failed", error=f"its worker was lost {lost} times while "
                     "running it (out of memory or killed); it is not run again")  # fmt: skip
        return "failed"
    if shutdown is not None and shutdown.is_set():
        state, fields = "released", {}
    else:
        with Heartbeat(store, job_id, token, settings.heartbeat_interval_s) as heartbeat:
            deadline = time.monotonic() + time_limit_s if time_limit_s else None
            reporter = ProgressReporter(store, job_id, heartbeat, deadline, shutdown=shutdown)
            with stoppable(reporter.check), memory_budget(settings.max_job_memory_mb * 2**20):
                state, fields = _outcome(record, artifacts, device, reporter)
    if state == "released":
        log.warning("job %s stopped for the server's shutdown; queued again for its next "
                    "start", job_id)  # fmt: skip
        persist(store, lambda: store.release(job_id, token), patience)
        return state
    if state == "skipped":
        return state
    if fields.get("error") == NO_ROOM_MESSAGE:
        artifacts.remove_input(job_id)  # frees room; the job is submitted anew, not rerun
    final = persist(store, lambda: store.finish(job_id, state, **fields), patience)
    return final.status if final is not None else "skipped"


def _outcome(
    record: JobRecord, artifacts: ArtifactStore, device: str, reporter: ProgressReporter
) -> tuple[str, dict[str, Any]]:
    """(terminal state, record fields) of running the job; an out-of-memory error is retried
    once with half the rows per forward/backward pass."""
    rows, work = max_rows_per_pass(), WORK.get(record.kind, _explain)
    try:
        try:
            return "succeeded", work(record, artifacts, device, reporter)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            log.warning("job %s ran out of memory at %d rows per pass; retrying at %d",
                        record.id, rows, max(1, rows // 2))  # fmt: skip
            with rows_per_pass_at_most(rows // 2):
                return "succeeded", work(record, artifacts, device, reporter)
    except JobStopped as stop:
        return stop.state, {"error": stop.error}
    except USER_ERRORS as error:
        return "failed", {"error": str(error)}
    except Exception as error:
        if isinstance(error, OSError) and is_no_room(error):
            log.error("job %s: no room for its artifacts: %s", record.id, error)
            return "failed", {"error": NO_ROOM_MESSAGE}
        if isinstance(error, StoreUnavailable):
            log.error("job %s: object store unavailable: %s", record.id, error)
            return "failed", {"error": STORE_AWAY_MESSAGE}
        if type(error).__name__ == "SoftTimeLimitExceeded":
            return "failed", {"error": "the job exceeded its time limit"}
        if is_out_of_memory(error):
            return "failed", {"error": f"{record.method} on {record.model} ran out of memory, "
                              f"also with {max(1, rows // 2)} rows per pass; lower its image "
                              "size, samples or steps"}  # fmt: skip
        log.exception("job %s failed", record.id)
        # Library internals (messages, paths) stay in the worker's log, under the job's id.
        return "failed", {"error": f"internal error while running {record.method} on "
                          f"{record.model}; the worker's log has the details for job "
                          f"{record.id}"}  # fmt: skip


def _explain(
    record: JobRecord, artifacts: ArtifactStore, device: str, reporter: ProgressReporter
) -> dict[str, Any]:
    """Explain, write the artifacts, publish them; the record fields of a success. The PNG
    pictures are drawn when first asked for (:meth:`ArtifactStore.draw_pictures`), so the job
    is done once its arrays and summary are stored."""
    inputs, truth = job_input(record, artifacts)
    result = explain(
        record.model,
        inputs,
        record.method,
        record.options,
        target=record.target,
        seed=record.seed,
        device=device,
        resize=record.input.get("resize", "center_crop"),
        progress=reporter,
        metrics=record.metrics,
        extras=set_extras(record.owner),  # the trained sets its owner may use
    )
    if truth is not None:  # a series with its ground truth: the white-box scores too
        result.truth = torch.as_tensor(truth)[None]
        result.scores[0].update(white_box(result.attribution, result.truth))
    staging = artifacts.staging_dir(record.id, record.attempts)
    try:
        paths = write_artifacts(result, staging, pictures=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # e.g. a full disk: leave nothing half-made
        raise
    artifacts.publish(record.id, staging)
    summary = result.summary()
    return {
        "prediction": summary["prediction"],
        "scores": summary["scores"],
        "artifacts": sorted(paths),
        "timings": summary["metadata"]["timings"],
    }
