"""How a submitted job reaches a worker: Celery over Redis, or an in-process thread pool."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

from jobs.artifacts import ArtifactStore
from jobs.models import ModelStore
from jobs.queue import QUEUE_KEYS, live_workers, make_celery, send_job
from jobs.records import TERMINAL
from jobs.settings import Settings
from jobs.sqlite_store import SqliteJobStore

log = logging.getLogger(__name__)


class Dispatcher(ABC):
    @abstractmethod
    def submit(self, job_id: str) -> None: ...

    def start(self) -> None:
        """Called once the server starts."""
        return None

    def revoke(self, job_id: str) -> None:
        """Best effort; a revoked or cancelled job is also skipped by the worker itself."""
        return None

    def queue_reachable(self) -> bool:
        """Whether jobs can be queued now (the broker answers)."""
        return True

    @abstractmethod
    def queue_length(self) -> int: ...

    @abstractmethod
    def workers(self) -> int: ...

    @abstractmethod
    def device(self) -> str: ...

    def close(self) -> None:
        """Stop accepting work."""
        return None


def local_device(settings: Settings) -> str:
    import torch

    return settings.device or ("cuda" if torch.cuda.is_available() else "cpu")


class EmbeddedDispatcher(Dispatcher):
    """Runs jobs on threads of the API process with the same runner as the Celery workers.

    Time limits: a job stops at its first progress step after the soft limit; a job still
    running at the hard limit is marked failed by the housekeeping thread (a Python thread
    cannot be killed: its late result is discarded, and it stops at its next step). The same
    thread deletes expired records and artifacts every ``sweep_interval_s``.

    The records are in SQLite, so a restart keeps them; at start, :meth:`recover` runs again
    what the previous process left unfinished. One embedded server per artifact directory.
    """

    def __init__(self, settings: Settings, store: SqliteJobStore, artifacts: ArtifactStore,
                 models: ModelStore):  # fmt: skip
        self._settings, self._store, self._artifacts = settings, store, artifacts
        self._models = models
        self._device = local_device(settings)
        self._size = settings.embedded_workers
        self._executor = ThreadPoolExecutor(self._size, thread_name_prefix="explainer-job")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running: dict[str, float] = {}  # job id → monotonic start
        self._stop = threading.Event()

    def start(self) -> None:
        from jobs.runner import preload_models

        # Load the models first, on the job thread, so the first job does not wait for them.
        self._executor.submit(preload_models, self._settings.preload_models, self._device)
        self.recover()
        threading.Thread(target=self._housekeeping, name="explainer-housekeeping",
                         daemon=True).start()  # fmt: skip

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._waiting += 1
        self._executor.submit(self._run, job_id)

    def recover(self) -> list[str]:
        """Queue again the jobs the previous process left unfinished (it died or was stopped
        with jobs waiting or running); returns their ids, oldest first. Queued jobs simply run.
        A running job's run died with that process: it goes back to queued and runs once more,
        like a job whose Celery worker died (the runner's MAX_ATTEMPTS); a job whose second
        run was lost too is failed by the runner, saying that its worker was lost twice."""
        self._store.requeue_stale(0.0)  # no run of the previous process is alive
        unfinished = self._store.unfinished()
        for job_id in unfinished:
            log.warning("job %s was left unfinished by the previous process; queued again",
                        job_id)  # fmt: skip
            self.submit(job_id)
            self._store.dispatched(job_id)
        return unfinished

    def _run(self, job_id: str) -> None:
        from jobs.runner import run_job

        with self._lock:
            self._waiting -= 1
            self._running[job_id] = time.monotonic()
        self._models.refresh()
        try:
            run_job(job_id, self._store, self._artifacts, self._settings, self._device,
                    time_limit_s=self._settings.soft_time_limit_s)  # fmt: skip
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def _housekeeping(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.wait(1.0):
            self.enforce_hard_limit()
            if time.monotonic() - last_sweep >= self._settings.sweep_interval_s:
                last_sweep = time.monotonic()
                self.sweep()

    def enforce_hard_limit(self) -> list[str]:
        """Fail the jobs running longer than the hard time limit; returns their ids."""
        now, limit = time.monotonic(), self._settings.hard_time_limit_s
        with self._lock:
            overdue = [job for job, start in self._running.items() if now - start > limit]
        for job_id in overdue:
            record = self._store.get(job_id)
            if record is not None and record.status not in TERMINAL:
                log.warning("job %s passed the hard time limit of %d s", job_id, limit)
                self._store.finish(job_id, "failed", error=f"the job exceeded its hard time "
                                   f"limit of {limit} s")  # fmt: skip
        return overdue

    def sweep(self) -> None:
        """Delete expired records and artifacts now."""
        self._store.purge()
        self._artifacts.sweep(self._settings.job_ttl_s, every_s=0)

    def queue_length(self) -> int:
        with self._lock:
            return self._waiting

    def workers(self) -> int:
        return self._size

    def device(self) -> str:
        return self._device

    def close(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


class CeleryDispatcher(Dispatcher):
    """Sends jobs to Celery workers through the Redis broker (task id = job id); reads the
    workers' liveness marks and devices from the job store's Redis."""

    def __init__(self, settings: Settings):
        import redis

        self._app = make_celery(settings)
        self._broker = redis.Redis.from_url(
            settings.broker_url, socket_timeout=3, socket_connect_timeout=2
        )
        self._store = redis.Redis.from_url(
            settings.store_url, socket_timeout=3, socket_connect_timeout=2
        )
        self._alive_within_s = 3 * settings.heartbeat_interval_s

    def submit(self, job_id: str) -> None:
        send_job(self._app, job_id)

    def revoke(self, job_id: str) -> None:
        try:  # the record's cancel flag is what counts; the broadcast only saves a worker's time
            self._app.control.revoke(job_id)
        except Exception as error:
            log.warning("revoke of job %s not broadcast: %s", job_id, error)

    def queue_reachable(self) -> bool:
        try:
            return bool(self._broker.ping())
        except Exception:
            return False

    def queue_length(self) -> int:
        try:
            return sum(int(self._broker.llen(key)) for key in QUEUE_KEYS)
        except Exception:
            return -1

    def workers(self) -> int:
        """Workers whose liveness mark is fresh (one Redis read; a broadcast ping would wait
        its whole timeout for replies)."""
        try:
            return live_workers(self._store, self._alive_within_s)
        except Exception:
            return 0

    def device(self) -> str:
        try:
            devices = sorted(d.decode() for d in self._store.smembers("explainer:devices"))
        except Exception:
            devices = []
        return ",".join(devices) or "unknown"
