"""Job stores: atomic transitions over job records (:mod:`jobs.records`), progress, cancel flags,
idempotency keys and counters. Redis in distributed mode, SQLite in embedded mode
(:mod:`jobs.sqlite_store`), memory for code that runs jobs in one process and keeps nothing;
same interface, same transitions (tests/test_jobs.py runs one contract suite over all three).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from jobs.records import TERMINAL, JobRecord, JobStatus, run_is_dead

log = logging.getLogger(__name__)
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf"))
MAX_INDEXED = 1000  # newest jobs per owner kept in the index of GET /jobs
UNDISPATCHED = "undispatched"  # the index of records whose queue message is not confirmed sent
UNCLAIMED = "unclaimed"  # the index of queued jobs no run has claimed since they were queued


def owner_key(owner: str | None) -> str:
    """The index key of a tenant's jobs (one shared index when the server has no API keys)."""
    return f"owner:{owner or '-'}"


def progress_json(progress: dict[str, Any]) -> str:
    """Progress as strict JSON: a value that is not a finite number (a NaN loss) is null."""
    finite = {key: None if isinstance(value, float) and not math.isfinite(value) else value
              for key, value in progress.items()}  # fmt: skip
    return json.dumps(finite, allow_nan=False)


class Changes:
    """Wakes those who wait for news of a job (the long poll of GET /jobs/{id}): a store calls
    :meth:`notify` whenever it changes a job's record or progress (Redis: for the changes
    every process makes, :class:`RedisJobStore`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Callable[[], None]]] = {}

    @contextlib.contextmanager
    def watch(self, job_id: str, wake: Callable[[], None]) -> Iterator[None]:
        """Call ``wake()`` (from any thread) at each change of the job during the block."""
        with self._lock:
            self._waiters.setdefault(job_id, []).append(wake)
        try:
            yield
        finally:
            with self._lock:
                waiters = self._waiters[job_id]
                waiters.remove(wake)
                if not waiters:
                    del self._waiters[job_id]

    def notify(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for wake in waiters:
            try:
                wake()
            except Exception:  # a watcher's failure is never the writer's
                log.exception("a watcher of job %s failed", job_id)


class JobStore(ABC):
    """Atomic transitions over job records, plus progress, cancel flags and counters. Every
    change of a job's record or progress wakes its watchers (:meth:`watch`)."""

    #: Errors of a store that is away for a moment (a stalled or restarting Redis): a write
    #: that fails with one of them is worth retrying.
    transient_errors: tuple[type[Exception], ...] = ()
    #: Newest jobs kept per index (an owner's list in GET /jobs, the undispatched list).
    max_indexed: int = MAX_INDEXED

    def __init__(self, ttl_s: int):
        self.ttl_s = ttl_s
        self.changes = Changes()

    def watch(self, job_id: str, wake: Callable[[], None]) -> contextlib.AbstractContextManager:
        """Call ``wake()`` at each change of the job's record or progress during the block."""
        return self.changes.watch(job_id, wake)

    def close(self) -> None:
        """Release what the store holds (connections, threads)."""
        return None

    def _batch(self) -> contextlib.AbstractContextManager:
        """The writes of the block (``_put``, ``_index``, ``_incr``) may be sent together
        (Redis: one transaction, one round trip); by default each is written as it comes."""
        return contextlib.nullcontext()

    def _changed(self, job_id: str) -> None:
        """The job's record or progress changed (backends that notify within their own write
        override it with nothing)."""
        self.changes.notify(job_id)

    # --- primitives a backend provides -------------------------------------------------------
    @abstractmethod
    def _update(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None]
    ) -> JobRecord | None:
        """Atomically apply ``change`` to a record (None from change: leave it as it is); a
        written change notifies the job's watchers."""

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
    def _mark_running(self, job_id: str, running: bool) -> None:
        """Keep the index of running jobs that :meth:`requeue_stale` scans."""

    @abstractmethod
    def running(self) -> list[str]:
        """Ids of the jobs marked running."""

    @abstractmethod
    def _index(self, owner: str, job_id: str, created_at: float) -> None:
        """Add a job to its owner's index of recent jobs (the newest ``max_indexed`` are kept)."""

    @abstractmethod
    def _indexed(self, owner: str, limit: int) -> list[str]:
        """The owner's newest ``limit`` job ids, newest first."""

    @abstractmethod
    def _unindex(self, owner: str, job_ids: list[str]) -> None: ...

    @abstractmethod
    def ping(self) -> bool: ...

    # --- the job life cycle ------------------------------------------------------------------
    def create(self, record: JobRecord) -> JobRecord:
        """Store a new queued record, marked undispatched until :meth:`dispatched` says its
        queue message is sent: a record whose submitter died in between is sent again by
        :meth:`undispatched` (no record stays queued without a message)."""
        with self._batch():
            self._index(UNDISPATCHED, record.id, record.created_at)
            self._index(UNCLAIMED, record.id, record.created_at)
            self._put(record)
            if record.kind != "study_batch":  # a study's batches are listed by their study
                self._index(owner_key(record.owner), record.id, record.created_at)
            self._incr("stats", "submitted")
        return record

    def dispatched(self, job_id: str) -> None:
        """The job's queue message is sent."""
        self._unindex(UNDISPATCHED, [job_id])

    def undispatched(self, older_than_s: float) -> list[str]:
        """Queued jobs created over ``older_than_s`` ago whose message was never confirmed
        sent, for the caller to send (once more: a job runs once whatever its messages)."""
        return self._queued_in(UNDISPATCHED, older_than_s)

    def unclaimed(self, older_than_s: float) -> list[str]:
        """Jobs queued over ``older_than_s`` ago (created or requeued) that no run has claimed:
        waiting their turn, or with a message a worker took and lost (see workers.reap)."""
        return self._queued_in(UNCLAIMED, older_than_s)

    def _queued_in(self, index: str, older_than_s: float) -> list[str]:
        """The jobs of ``index`` still queued for over ``older_than_s``; the others leave it."""
        ids = list(dict.fromkeys(self._indexed(index, self.max_indexed)))
        records = [self.get(job_id) for job_id in ids]
        settled = [job_id for job_id, record in zip(ids, records, strict=True)
                   if record is None or record.status != "queued"]  # fmt: skip
        if settled:
            self._unindex(index, settled)
        cutoff = time.time() - older_than_s
        return [r.id for r in records if r is not None and r.status == "queued"
                and (r.queued_at or r.created_at) < cutoff]  # fmt: skip

    def recent(self, owner: str | None, limit: int) -> list[JobRecord]:
        """The owner's (tenant's) newest jobs that have not expired, newest first."""
        key = owner_key(owner)
        ids = self._indexed(key, limit)
        records = [self.get(job_id) for job_id in ids]
        gone = [job_id for job_id, record in zip(ids, records, strict=True) if record is None]
        if gone:
            self._unindex(key, gone)
        return [record for record in records if record is not None]

    def claim_key(self, kind: str, key: str, job_id: str) -> str:
        """Bind an idempotency key or content hash to a job; returns the job that holds it."""
        if self._set(f"{kind}:{key}", job_id, only_if_new=True):
            return job_id
        return self._get(f"{kind}:{key}") or job_id

    def rebind_key(self, kind: str, key: str, job_id: str) -> None:
        self._set(f"{kind}:{key}", job_id)

    def lookup_key(self, kind: str, key: str) -> str | None:
        return self._get(f"{kind}:{key}")

    def start(self, job_id: str, token: str, stale_after_s: float) -> JobRecord | None:
        """Claim a job for the run ``token``: queued → running, or take over a running job
        whose heartbeat is older than ``stale_after_s`` (its worker died). None if the job must
        not run now (finished, cancelled, unknown, or alive elsewhere)."""

        def change(record: JobRecord) -> JobRecord | None:
            now = time.time()
            alive = record.heartbeat_at is not None and now - record.heartbeat_at <= stale_after_s
            if record.status not in ("queued", "running") or (record.status == "running" and alive):
                return None
            record.status, record.run_token = "running", token
            record.attempts += 1
            record.started_at = record.heartbeat_at = now
            return record

        record = self._update(job_id, change)
        if record is None or record.run_token != token or record.status != "running":
            return None
        self._mark_running(job_id, True)
        return record

    def beat(self, job_id: str, token: str) -> bool:
        """The run ``token`` is alive; False once the job is no longer that run's."""

        def change(record: JobRecord) -> JobRecord | None:
            if record.status != "running" or record.run_token != token:
                return None
            record.heartbeat_at = time.time()
            return record

        record = self._update(job_id, change)
        return record is not None and record.status == "running" and record.run_token == token

    def requeue_stale(self, stale_after_s: float) -> list[str]:
        """Running jobs whose heartbeat stopped (their worker died), or whose process on this
        host is gone, go back to queued; returns their ids, for the caller to hand to a live
        worker."""

        def change(record: JobRecord) -> JobRecord | None:
            beat = record.heartbeat_at or 0.0
            stale = time.time() - beat > stale_after_s or run_is_dead(record.run_token)
            if record.status != "running" or not stale:
                return None
            record.status, record.run_token, record.heartbeat_at = "queued", None, None
            record.queued_at = time.time()
            return record

        requeued = []
        for job_id in self.running():
            record = self._update(job_id, change)
            if record is not None and record.status == "queued":
                requeued.append(job_id)
                self._index(UNCLAIMED, job_id, record.queued_at)
            if record is None or record.status != "running":  # requeued, finished or expired
                self._mark_running(job_id, False)
        return requeued

    def release(self, job_id: str, token: str) -> JobRecord | None:
        """The run ``token`` hands its job back unfinished (its embedded server is stopping
        gracefully): running → queued, for the next start to run from the beginning. The run
        stays counted in ``attempts`` (runs that started) and is counted in ``released``, so
        it is not a lost run (the runner's MAX_ATTEMPTS counts ``attempts - released``).
        Returns the queued record, or None when the job was no longer that run's."""
        released = False

        def change(record: JobRecord) -> JobRecord | None:
            nonlocal released
            released = record.status == "running" and record.run_token == token
            if not released:
                return None
            record.status, record.run_token, record.heartbeat_at = "queued", None, None
            record.queued_at = time.time()
            record.released += 1
            return record

        record = self._update(job_id, change)
        if not released or record is None:
            return None
        self._mark_running(job_id, False)
        self._index(UNCLAIMED, job_id, record.queued_at)
        return record

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
            started = record.started_at
            self._count_finish(job_id, status, None if started is None else finished - started)
        return record

    def _count_finish(self, job_id: str, status: JobStatus, duration_s: float | None) -> None:
        """A job reached ``status``: off the running index, into the counters of /metrics."""
        self._mark_running(job_id, False)
        self._incr("stats", status)
        if duration_s is not None:
            self._incr_many("durations", self._duration_changes(duration_s))

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
        """Progress as strict JSON: a value that is not a finite number (a NaN loss) is null."""
        self._set(f"progress:{job_id}", progress_json(progress))
        self._changed(job_id)

    def report(self, job_id: str, progress: dict[str, Any] | None) -> bool:
        """A run's check: write its newest ``progress`` (if any), and whether the job's cancel
        is requested (Redis: one round trip)."""
        if progress is not None:
            self.set_progress(job_id, progress)
        return self.cancel_requested(job_id)

    def progress(self, job_id: str) -> dict[str, Any] | None:
        raw = self._get(f"progress:{job_id}")
        return json.loads(raw) if raw else None

    def snapshot(self, job_id: str) -> tuple[JobRecord | None, dict[str, Any] | None]:
        """The job's record and progress (Redis: one round trip)."""
        return self.get(job_id), self.progress(job_id)

    # --- documents kept beside the jobs, with the same expiry (studies: jobs.studies) -------
    def put_document(self, key: str, text: str) -> None:
        """Store (or replace) the text ``key``; it expires ``ttl_s`` after this write."""
        self._set(f"doc:{key}", text)

    def document(self, key: str) -> str | None:
        return self._get(f"doc:{key}")

    def list_add(self, name: str, item_id: str, created_at: float) -> None:
        """Add an id to the list ``name`` (the newest ``max_indexed`` are kept)."""
        self._index(f"list:{name}", item_id, created_at)

    def list_newest(self, name: str, limit: int) -> list[str]:
        return self._indexed(f"list:{name}", limit)

    def list_remove(self, name: str, item_ids: list[str]) -> None:
        self._unindex(f"list:{name}", item_ids)

    # --- counters for /metrics ---------------------------------------------------------------
    @staticmethod
    def _duration_changes(seconds: float) -> dict[str, float]:
        """The histogram's increments for one job of ``seconds``."""
        changes = {f"le_{bound}": 1.0 for bound in DURATION_BUCKETS if seconds <= bound}
        return changes | {"sum": seconds, "count": 1.0}

    def _incr_many(self, key: str, changes: dict[str, float]) -> None:
        for field, amount in changes.items():
            self._incr(key, field, amount)

    def stats(self) -> dict[str, float]:
        return self._counters("stats")

    def durations(self) -> dict[str, float]:
        return self._counters("durations")


class MemoryJobStore(JobStore):
    """One process, records in dicts guarded by a lock, nothing kept after it ends (code that
    runs jobs in process; the embedded server keeps its records in SQLite). Expired entries
    are invisible at once and deleted by :meth:`purge`."""

    def __init__(self, ttl_s: int):
        super().__init__(ttl_s)
        self._lock = threading.Lock()
        self._records: dict[str, tuple[float, JobRecord]] = {}
        self._values: dict[str, tuple[float, str]] = {}
        self._hashes: dict[str, dict[str, float]] = {}
        self._running_ids: set[str] = set()
        self._owned: dict[str, list[tuple[float, str]]] = {}  # owner → (created, id), oldest first

    def _alive(self, entry):
        return entry is not None and entry[0] > time.time()

    def purge(self) -> int:
        """Delete expired records and values; returns how many went."""
        with self._lock:
            removed = 0
            for table in (self._records, self._values):
                for key in [k for k, entry in table.items() if not self._alive(entry)]:
                    del table[key]
                    removed += 1
            self._running_ids &= set(self._records)
            for owner, entries in self._owned.items():
                if not owner.startswith("list:"):  # lists of jobs (list_add: their readers)
                    self._owned[owner] = [e for e in entries if e[1] in self._records]
            return removed

    def __len__(self) -> int:
        with self._lock:
            return len(self._records) + len(self._values)

    def _mark_running(self, job_id, running):
        with self._lock:
            (self._running_ids.add if running else self._running_ids.discard)(job_id)

    def running(self):
        with self._lock:
            return sorted(self._running_ids)

    def _update(self, job_id, change):
        with self._lock:
            entry = self._records.get(job_id)
            if not self._alive(entry):
                return None
            changed = change(entry[1].model_copy(deep=True))
            if changed is None:
                return entry[1].model_copy(deep=True)
            self._records[job_id] = (time.time() + self.ttl_s, changed)
            changed = changed.model_copy(deep=True)
        self._changed(job_id)
        return changed

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

    def _index(self, owner, job_id, created_at):
        with self._lock:
            entries = self._owned.setdefault(owner, [])
            bisect.insort(entries, (created_at, job_id))
            del entries[: -self.max_indexed]

    def _indexed(self, owner, limit):
        with self._lock:
            return [job_id for _, job_id in reversed(self._owned.get(owner, [])[-limit:])]

    def _unindex(self, owner, job_ids):
        with self._lock:
            entries = self._owned.get(owner, [])
            entries[:] = [e for e in entries if e[1] not in job_ids]

    def ping(self):
        return True


class RedisJobStore(JobStore):
    """Distributed mode: records as JSON strings with a TTL; transitions under WATCH/MULTI."""

    prefix = "explainer:"

    def __init__(self, url: str, ttl_s: int):
        import redis

        super().__init__(ttl_s)
        self.redis = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)
        self.transient_errors = (redis.ConnectionError, redis.TimeoutError)
        self._relay: threading.Thread | None = None
        self._relay_lock = threading.Lock()
        self._closed = threading.Event()
        self._batched = threading.local()  # .pipe: the open batch of this thread, if any

    @contextlib.contextmanager
    def _batch(self):
        if getattr(self._batched, "pipe", None) is not None:
            yield  # within an open batch
            return
        with self.redis.pipeline() as pipe:  # MULTI … EXEC
            self._batched.pipe = pipe
            try:
                yield
            finally:
                self._batched.pipe = None
            pipe.execute()

    def _writer(self):
        """The open batch of this thread, or the client."""
        pipe = getattr(self._batched, "pipe", None)
        return self.redis if pipe is None else pipe  # (an empty pipeline is falsy)

    def close(self) -> None:
        self._closed.set()  # the relay stops within a second
        self.redis.close()

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    @property
    def channel(self) -> str:
        """The pub/sub channel that carries the id of every changed job, from every process."""
        return self._key("changes")

    def _changed(self, job_id: str) -> None:
        self.redis.publish(self.channel, job_id)

    def watch(self, job_id, wake):
        """Watch the job's changes in any process: relayed from the channel to this process's
        watchers by one thread, started with the first watch."""
        with self._relay_lock:
            if self._relay is None:
                subscription = self.redis.pubsub(ignore_subscribe_messages=True)
                with contextlib.suppress(*self.transient_errors):  # the relay tries again
                    subscription.subscribe(self.channel)
                    subscription.get_message(timeout=1.0)  # confirmed: no change is missed
                self._relay = threading.Thread(target=self._forward, args=(subscription,),
                                               name="explainer-changes", daemon=True)  # fmt: skip
                self._relay.start()
        return self.changes.watch(job_id, wake)

    def _forward(self, subscription) -> None:
        """Relay the channel's job ids to :attr:`changes`; subscribe again after a lost
        connection (changes meanwhile are missed: a long poll looks again every second)."""
        while not self._closed.is_set():
            try:
                if not subscription.subscribed:
                    subscription.subscribe(self.channel)
                message = subscription.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    self.changes.notify(message["data"].decode())
            except Exception as error:
                log.warning("job change notifications interrupted: %s", error)
                with contextlib.suppress(Exception):
                    subscription.reset()
                self._closed.wait(1.0)
        with contextlib.suppress(Exception):
            subscription.close()

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
                    pipe.publish(self.channel, job_id)
                    pipe.execute()
                    return changed
                except redis.WatchError:
                    continue

    def _put(self, record):
        self._writer().set(self._key(f"job:{record.id}"), record.model_dump_json(), ex=self.ttl_s)

    def get(self, job_id):
        raw = self.redis.get(self._key(f"job:{job_id}"))
        return JobRecord.model_validate_json(raw) if raw else None

    def snapshot(self, job_id):
        record, progress = self.redis.mget(self._key(f"job:{job_id}"),
                                           self._key(f"progress:{job_id}"))  # fmt: skip
        return (JobRecord.model_validate_json(record) if record else None,
                json.loads(progress) if progress else None)  # fmt: skip

    def set_progress(self, job_id, progress):
        self.report(job_id, progress)

    def report(self, job_id, progress):
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            if progress is not None:
                pipe.set(self._key(f"progress:{job_id}"), progress_json(progress), ex=self.ttl_s)
                pipe.publish(self.channel, job_id)
            pipe.exists(self._key(f"cancel:{job_id}"))
            return bool(pipe.execute()[-1])

    def _count_finish(self, job_id, status, duration_s):
        changes = {} if duration_s is None else self._duration_changes(duration_s)
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            pipe.srem(self._key("running"), job_id)
            pipe.hincrbyfloat(self._key("stats"), status, 1)
            for field, amount in changes.items():
                pipe.hincrbyfloat(self._key("durations"), field, amount)
            pipe.execute()

    def _set(self, key, value, only_if_new=False):
        return bool(self.redis.set(self._key(key), value, ex=self.ttl_s, nx=only_if_new))

    def _get(self, key):
        raw = self.redis.get(self._key(key))
        return raw.decode() if raw is not None else None

    def _incr(self, key, field, amount=1):
        self._writer().hincrbyfloat(self._key(key), field, amount)

    def _incr_many(self, key, changes):
        with self.redis.pipeline(transaction=False) as pipe:  # one round trip
            for field, amount in changes.items():
                pipe.hincrbyfloat(self._key(key), field, amount)
            pipe.execute()

    def _counters(self, key):
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self._key(key)).items()}

    def _mark_running(self, job_id, running):
        key = self._key("running")
        (self.redis.sadd if running else self.redis.srem)(key, job_id)

    def running(self):
        return sorted(m.decode() for m in self.redis.smembers(self._key("running")))

    def _index(self, owner, job_id, created_at):
        key = self._key(owner)
        with self._batch():
            pipe = self._writer()
            pipe.zadd(key, {job_id: created_at})
            pipe.zremrangebyrank(key, 0, -self.max_indexed - 1)
            pipe.expire(key, self.ttl_s)  # the index outlives no job in it

    def _indexed(self, owner, limit):
        return [m.decode() for m in self.redis.zrevrange(self._key(owner), 0, limit - 1)]

    def _unindex(self, owner, job_ids):
        self.redis.zrem(self._key(owner), *job_ids)

    def ping(self):
        try:
            return bool(self.redis.ping())
        except Exception:
            return False
