"""Job records: our own source of truth for a job's state (Celery alone reports unknown ids as
PENDING). Redis in distributed mode, memory in embedded mode; same interface, same transitions.

States: queued → running → succeeded | failed | cancelled (queued → cancelled directly).
Only small JSON summaries live here; tensors and pictures go to the artifact store.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))


class JobRecord(BaseModel):
    id: str
    status: JobStatus = "queued"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    model: str
    method: str
    options: dict[str, Any]
    target: int | str | None = None
    seed: int = 0
    metrics: list[str | dict[str, Any]] = []
    input: dict[str, Any]  # kind, sha256, name; the bytes are in the artifact store
    content_hash: str
    idempotency_key: str | None = None
    owner: str | None = None  # the submitting API key's tenant id (see service.app); None: no keys
    attempts: int = 0
    prediction: dict[str, Any] | None = None
    scores: dict[str, Any] | None = None
    artifacts: list[str] = []
    timings: dict[str, float] = {}
    error: str | None = None


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore(ABC):
    """Atomic transitions over job records, plus progress, cancel flags and counters."""

    def __init__(self, ttl_s: int):
        self.ttl_s = ttl_s

    # --- primitives a backend provides -------------------------------------------------------
    @abstractmethod
    def _update(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> JobRecord | None:
        """Atomically apply ``change`` to a record (None from change: leave it as it is)."""

    @abstractmethod
    def _put(self, record: JobRecord) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def _set(self, key: str, value: str, only_if_new: bool = False) -> bool: ...

    @abstractmethod
    def _get(self, key: str) -> str | None: ...

    @abstractmethod
    def _incr(self, key: str, field: str, amount: float = 1) -> None: ...

    @abstractmethod
    def _counters(self, key: str) -> dict[str, float]: ...

    @abstractmethod
    def ping(self) -> bool: ...

    # --- the job life cycle ------------------------------------------------------------------
    def create(self, record: JobRecord) -> JobRecord:
        self._put(record)
        self._incr("stats", "submitted")
        return record

    def claim_key(self, kind: str, key: str, job_id: str) -> str:
        """Bind an idempotency key or content hash to a job; returns the job that holds it."""
        if self._set(f"{kind}:{key}", job_id, only_if_new=True):
            return job_id
        return self._get(f"{kind}:{key}") or job_id

    def rebind_key(self, kind: str, key: str, job_id: str) -> None:
        self._set(f"{kind}:{key}", job_id)

    def lookup_key(self, kind: str, key: str) -> str | None:
        return self._get(f"{kind}:{key}")

    def start(self, job_id: str) -> JobRecord | None:
        """queued (or running, after a lost worker) → running. None if the job must not run."""

        def change(record: JobRecord) -> JobRecord | None:
            if record.status not in ("queued", "running"):
                return None
            record.status = "running"
            record.attempts += 1
            record.started_at = time.time()
            return record

        record = self._update(job_id, change)
        return record if record is not None and record.status == "running" else None

    def finish(self, job_id: str, status: JobStatus, **fields: Any) -> JobRecord | None:
        """running/queued → a terminal state, once; later calls change nothing."""
        assert status in TERMINAL
        finished = time.time()
        transitioned = False

        def change(record: JobRecord) -> JobRecord | None:
            nonlocal transitioned
            transitioned = record.status not in TERMINAL
            if not transitioned:
                return None
            record.status = status
            record.finished_at = finished
            for name, value in fields.items():
                setattr(record, name, value)
            return record

        record = self._update(job_id, change)
        if transitioned:
            self._incr("stats", status)
            if record.started_at is not None:
                self._observe_duration(finished - record.started_at)
        return record

    def cancel(self, job_id: str) -> JobRecord | None:
        """A queued job is cancelled now; a running one is flagged and stops at its next step."""
        self._set(f"cancel:{job_id}", "1")
        record = self.get(job_id)
        if record is not None and record.status == "queued":
            return self.finish(job_id, "cancelled", error="cancelled before it started")
        return record

    def cancel_requested(self, job_id: str) -> bool:
        return self._get(f"cancel:{job_id}") is not None

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._set(f"progress:{job_id}", json.dumps(progress))

    def progress(self, job_id: str) -> dict[str, Any] | None:
        raw = self._get(f"progress:{job_id}")
        return json.loads(raw) if raw else None

    # --- counters for /metrics ---------------------------------------------------------------
    def _observe_duration(self, seconds: float) -> None:
        changes = {f"le_{bound}": 1.0 for bound in DURATION_BUCKETS if seconds <= bound}
        self._incr_many("durations", changes | {"sum": seconds, "count": 1.0})

    def _incr_many(self, key: str, changes: dict[str, float]) -> None:
        for field, amount in changes.items():
            self._incr(key, field, amount)

    def stats(self) -> dict[str, float]:
        return self._counters("stats")

    def durations(self) -> dict[str, float]:
        return self._counters("durations")


class MemoryJobStore(JobStore):
    """Embedded mode: one process, records in a dict guarded by a lock (expired lazily)."""

    def __init__(self, ttl_s: int):
        super().__init__(ttl_s)
        self._lock = threading.Lock()
        self._records: dict[str, tuple[float, JobRecord]] = {}
        self._values: dict[str, tuple[float, str]] = {}
        self._hashes: dict[str, dict[str, float]] = {}

    def _alive(self, entry):
        return entry is not None and entry[0] > time.time()

    def _update(self, job_id, change):
        with self._lock:
            entry = self._records.get(job_id)
            if not self._alive(entry):
                return None
            changed = change(entry[1].model_copy(deep=True))
            if changed is None:
                return entry[1].model_copy(deep=True)
            self._records[job_id] = (time.time() + self.ttl_s, changed)
            return changed.model_copy(deep=True)

    def _put(self, record):
        with self._lock:
            self._records[record.id] = (time.time() + self.ttl_s, record.model_copy(deep=True))

    def get(self, job_id):
        with self._lock:
            entry = self._records.get(job_id)
            return entry[1].model_copy(deep=True) if self._alive(entry) else None

    def _set(self, key, value, only_if_new=False):
        with self._lock:
            if only_if_new and self._alive(self._values.get(key)):
                return False
            self._values[key] = (time.time() + self.ttl_s, value)
            return True

    def _get(self, key):
        with self._lock:
            entry = self._values.get(key)
            return entry[1] if self._alive(entry) else None

    def _incr(self, key, field, amount=1):
        with self._lock:
            counters = self._hashes.setdefault(key, {})
            counters[field] = counters.get(field, 0) + amount

    def _counters(self, key):
        with self._lock:
            return dict(self._hashes.get(key, {}))

    def ping(self):
        return True


class RedisJobStore(JobStore):
    """Distributed mode: records as JSON strings with a TTL; transitions under WATCH/MULTI."""

    prefix = "explainer:"

    def __init__(self, url: str, ttl_s: int):
        import redis

        super().__init__(ttl_s)
        self.redis = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _update(self, job_id, change):
        import redis

        key = self._key(f"job:{job_id}")
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.reset()
                        return None
                    record = JobRecord.model_validate_json(raw)
                    changed = change(record.model_copy(deep=True))
                    if changed is None:
                        pipe.reset()
                        return record
                    pipe.multi()
                    pipe.set(key, changed.model_dump_json(), ex=self.ttl_s)
                    pipe.execute()
                    return changed
                except redis.WatchError:
                    continue

    def _put(self, record):
        self.redis.set(self._key(f"job:{record.id}"), record.model_dump_json(), ex=self.ttl_s)

    def get(self, job_id):
        raw = self.redis.get(self._key(f"job:{job_id}"))
        return JobRecord.model_validate_json(raw) if raw else None

    def _set(self, key, value, only_if_new=False):
        return bool(self.redis.set(self._key(key), value, ex=self.ttl_s, nx=only_if_new))

    def _get(self, key):
        raw = self.redis.get(self._key(key))
        return raw.decode() if raw is not None else None

    def _incr(self, key, field, amount=1):
        self.redis.hincrbyfloat(self._key(key), field, amount)

    def _incr_many(self, key, changes):
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            for field, amount in changes.items():
                pipe.hincrbyfloat(self._key(key), field, amount)
            pipe.execute()

    def _counters(self, key):
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self._key(key)).items()}

    def ping(self):
        try:
            return bool(self.redis.ping())
        except Exception:
            return False
