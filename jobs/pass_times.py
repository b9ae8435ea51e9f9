"""Measured seconds per model pass, kept per (device, model, explained size), and the models each
device has warm: what turns the cost model's passes (:attr:`engine.plan.Plan.passes`) into
seconds for the 202 answer, the job view's ETA and the page.

After each explanation the runner records ``total_s / passes`` of the job
(:meth:`PassTimes.observe`); the stored value is an exponential moving average,

    t ← t + α · (t_job − t),   α = ``SMOOTHING``,

so one slow job on a busy machine moves it by a third of the difference. It is kept for the
model and size, and also per method: a method that batches its passes (integrated gradients)
runs each faster than a method of a single pass (saliency, whose time also holds the forward
pass of the prediction); a method's own time is used once it has run there, the model's until
then. The warm-up of a
worker (:mod:`jobs.warmup`) seeds it for the default models. Embedded mode keeps the times in
SQLite beside the job records (``pass_times.sqlite3``) and its warm models in memory (they are
this process's); distributed mode keeps both in the job store's Redis, shared by every worker.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from engine.plan import Plan, plan
from jobs.records import JobRecord
from jobs.settings import Settings
from jobs.store import JobStore

log = logging.getLogger(__name__)
SMOOTHING = 1 / 3  # α: the weight of the newest job in the average
TIMES_KEY, WARM_KEY = "explainer:pass_times", "explainer:warm"  # Redis hashes
WARM_TTL_S = 24 * 3600  # as the workers' devices (explainer:devices)


def time_key(device: str, model: str, size: tuple[int, int], method: str = "") -> str:
    return f"{device}|{model}|{size[0]}x{size[1]}|{method}"


def work_of(job: Plan) -> str:
    """What a job's passes are, for its own average: the method with its metrics (a metric's
    rows are batched forward passes, cheaper than the method's, so a job with metrics keeps
    an average of its own and does not move the method's)."""
    return "+".join([job.method.name, *sorted(request.spec.name for request in job.metrics)])


def timed_size(job: Plan, input_info: dict[str, Any]) -> tuple[int, int]:
    """The size a job's pass times are kept under: the explained size; for an uploaded series
    its own length × features (its passes grow with its length; the plan explains a series
    at the model's nominal size)."""
    shape = input_info.get("shape")
    if job.input_kind != "image" and shape:
        return int(shape[0]), int(shape[1])
    return job.size


class PassTimes(ABC):
    """Seconds per model pass by (device, model, explained size), and the warm models by device."""

    @abstractmethod
    def _read(self, keys: list[str]) -> list[float | None]: ...

    @abstractmethod
    def _write(self, key: str, seconds: float) -> None: ...

    @abstractmethod
    def mark_warm(self, device: str, models: list[str]) -> None:
        """Record the models ``device`` has loaded and run once (replacing its earlier list)."""

    @abstractmethod
    def warm(self) -> dict[str, list[str]]:
        """Device → the models warm on it."""

    def record(
        self, device: str, model: str, size: tuple[int, int], method: str, seconds: float
    ) -> None:
        """Fold one measurement of seconds per pass into the moving averages of the model and
        of the method on it."""
        if not (math.isfinite(seconds) and seconds > 0):
            return
        keys = [time_key(device, model, size), time_key(device, model, size, method)]
        for key, old in zip(keys, self._read(keys), strict=True):
            self._write(key, seconds if old is None else old + SMOOTHING * (seconds - old))

    def seconds_per_pass(
        self, devices: list[str], model: str, size: tuple[int, int], method: str
    ) -> float | None:
        """The slowest measured time over ``devices`` (a job may go to any of them) of
        ``method`` on ``model`` at ``size``, or of any method where this one has not run on a
        device; None where none of them has run the model at that size yet."""
        times = self._read([time_key(d, model, size, m) for m in (method, "") for d in devices])
        own, any_method = times[: len(devices)], times[len(devices) :]
        known = [a or b for a, b in zip(own, any_method, strict=True) if a or b]
        return max(known) if known else None

    def per_pass(self, job: Plan, devices: list[str], input_info: dict[str, Any]) -> float | None:
        size = timed_size(job, input_info)
        return self.seconds_per_pass(devices, job.model.name, size, work_of(job))

    def estimate(
        self, job: Plan, devices: list[str], input_info: dict[str, Any]
    ) -> tuple[float | None, str | None]:
        """(seconds the job's explanation takes, None) or (None, why there is no estimate)."""
        try:
            per_pass = self.per_pass(job, devices, input_info)
        except Exception as error:  # Redis away for a moment: the job is queued all the same
            log.warning("pass times not read: %s", error)
            return None, "the measured pass times could not be read just now"
        if per_pass is None:
            first, second = timed_size(job, input_info)
            size = f"{second}×{first}" if job.input_kind == "image" else f"{first} steps"
            return None, (f"no job of {job.model.name} at {size} has run on this server's "
                          "workers yet")  # fmt: skip
        return round(job.seconds(per_pass), 3), None

    def observe(self, store: JobStore, job_id: str, device: str) -> None:
        """Record a finished explanation's seconds per pass (its ``total_s`` over its passes);
        never fails the job."""
        try:
            record = store.get(job_id)
            job = record_plan(record) if record is not None else None
            total = record.timings.get("total_s") if record is not None else None
            if job is not None and total is not None and job.passes > 0:
                self.record(device, job.model.name, timed_size(job, record.input), work_of(job),
                            total / job.passes)  # fmt: skip
        except Exception as error:  # a store away for a moment: this measurement is skipped
            log.warning("pass time of job %s not recorded: %s", job_id, error)


def record_plan(record: JobRecord) -> Plan | None:
    """The plan of a recorded explanation (passes, explained size), as the API made it at
    submit; None for other kinds of job and for a model no longer registered."""
    if record.kind != "explain":
        return None
    return _plan(record.model, record.method, json.dumps(record.options, sort_keys=True),
                 json.dumps(record.metrics, sort_keys=True),
                 tuple(record.input.get("size") or ()),
                 record.input.get("resize", "center_crop"))  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _plan(model: str, method: str, options: str, metrics: str, size: tuple[int, ...],
          resize: str) -> Plan | None:  # fmt: skip
    try:
        return plan(model, method, json.loads(options), metrics=json.loads(metrics),
                    image_size=size if len(size) == 2 else None, resize=resize)  # fmt: skip
    except Exception as error:  # a model since deleted or changed: no estimate, never a 500
        log.debug("no plan of a %s job on %s: %s", method, model, error)
        return None


def job_times(
    pass_times: PassTimes, record: JobRecord, progress: dict[str, Any] | None, devices: list[str]
) -> tuple[float | None, float | None]:
    """(estimate_s, eta_s) of an unfinished explanation: the seconds it takes in all, and, while
    it runs, the seconds it has left (:func:`eta_s`); None where not known, and once finished."""
    job = record_plan(record) if record.status in ("queued", "running") else None
    if job is None:
        return None, None
    try:
        per_pass = pass_times.per_pass(job, devices, record.input)
    except Exception as error:  # Redis away for a moment: the view goes without
        log.warning("pass times not read: %s", error)
        per_pass = None
    estimate = round(job.seconds(per_pass), 3) if per_pass is not None else None
    return estimate, eta_s(record, progress, estimate)


def eta_s(record: JobRecord, progress: dict[str, Any] | None, estimate: float | None,
          now: float | None = None) -> float | None:  # fmt: skip
    """Seconds a running job has left: the share of its passes not yet done (1 − step / total)
    × its estimate, where the model's time per pass is known; else elapsed × (total − step) /
    step from its progress; None before either is known, and while it is not running."""
    if record.status != "running" or record.started_at is None:
        return None
    step, total = (progress or {}).get("step", 0), (progress or {}).get("total", 0)
    if estimate is not None:
        done = min(1.0, step / total) if total > 0 else 0.0
        return round(estimate * (1 - done), 3)
    if step > 0 and total > 0:
        elapsed = max(0.0, (now or time.time()) - record.started_at)
        return round(elapsed * (total - step) / step, 3)
    return None


class SqlitePassTimes(PassTimes):
    """Embedded mode: times in a SQLite file, warm models in this process's memory."""

    def __init__(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        self._lock = threading.Lock()
        self._warm: dict[str, list[str]] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # Measurements, not records: no fsync per job (one was 5.7 % of a saliency job's
            # thread); a crash may lose the latest average, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS pass_times "
                             "(key TEXT PRIMARY KEY, seconds REAL NOT NULL)")  # fmt: skip

    def _read(self, keys: list[str]) -> list[float | None]:
        with self._lock:
            found = dict(self._db.execute(
                f"SELECT key, seconds FROM pass_times WHERE key IN ({','.join('?' * len(keys))})",
                keys).fetchall())  # fmt: skip
        return [found.get(key) for key in keys]

    def _write(self, key: str, seconds: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pass_times VALUES (?, ?)", (key, seconds))

    def mark_warm(self, device: str, models: list[str]) -> None:
        self._warm[device] = sorted(models)

    def warm(self) -> dict[str, list[str]]:
        return {device: models for device, models in self._warm.items() if models}


class RedisPassTimes(PassTimes):
    """Distributed mode: both in hashes of the job store's Redis, shared by every worker."""

    def __init__(self, url: str):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)

    def _read(self, keys: list[str]) -> list[float | None]:
        return [float(v) if v is not None else None for v in self.redis.hmget(TIMES_KEY, keys)]

    def _write(self, key: str, seconds: float) -> None:
        self.redis.hset(TIMES_KEY, key, seconds)

    def mark_warm(self, device: str, models: list[str]) -> None:
        self.redis.hset(WARM_KEY, device, json.dumps(sorted(models)))
        self.redis.expire(WARM_KEY, WARM_TTL_S)

    def warm(self) -> dict[str, list[str]]:
        try:
            marks = self.redis.hgetall(WARM_KEY)
        except Exception as error:  # Redis away for a moment: health lists none warm
            log.warning("warm models not read: %s", error)
            return {}
        return {d.decode(): json.loads(m) for d, m in sorted(marks.items()) if json.loads(m)}


def open_pass_times(settings: Settings) -> PassTimes:
    """This server's pass times: SQLite beside the job records, or the job store's Redis."""
    if settings.embedded:
        return SqlitePassTimes(settings.artifact_dir / "pass_times.sqlite3")
    return RedisPassTimes(settings.store_url)
