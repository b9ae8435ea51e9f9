"""How a submitted job reaches a worker: Celery over Redis, or an in-process thread pool."""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from jobs.artifact_store import ArtifactStore
from jobs.model_store import ModelStore
from jobs.pass_times import PassTimes
from jobs.queue import QUEUE_KEYS, live_workers, make_celery, send_job
from jobs.records import TERMINAL
from jobs.settings import Settings
from jobs.sqlite_store import SqliteJobStore

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 5.0  # how long a graceful stop waits for running jobs to hand back their work


class Dispatcher(ABC):
    @abstractmethod
    def submit(self, job_id: str) -> None: ...

    def start(self) -> None:
        """Called once the server starts."""
        return None

    def wait_ready(self, timeout_s: float) -> None:
        """Return once the workers of this process have their models warm (or after
        ``timeout_s``); the server answers no request before."""
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

    def devices(self) -> list[str]:
        """The devices a job may run on: :meth:`device`'s list."""
        return self.device().split(",")

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
    thread deletes expired records and artifacts every ``sweep_interval_s``, and every
    heartbeat interval queues again the jobs whose run died (:meth:`reap`).

    The records are in SQLite, so a restart keeps them; at start, :meth:`recover` runs again
    what the previous process left unfinished, and only that: a job another live server runs
    on the same directory keeps its run (one embedded server per artifact directory is the
    intended set-up). A graceful stop (:meth:`close`) hands the running jobs back to queued,
    not counted as lost runs; a killed process's job runs once more at the next start.
    """

    def __init__(self, settings: Settings, store: SqliteJobStore, artifacts: ArtifactStore,
                 models: ModelStore, pass_times: PassTimes | None = None):  # fmt: skip
        self._settings, self._store, self._artifacts = settings, store, artifacts
        self._models, self._pass_times = models, pass_times
        self._warm = threading.Event()  # set once the models are warm (or failed to load)
        self._device = local_device(settings)
        self._size = settings.embedded_workers
        # Daemon threads, not a ThreadPoolExecutor (whose threads the interpreter joins at
        # exit): a job that does not stop within the shutdown grace cannot hold the process.
        self._tasks: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []  # started with the first task
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a job's run ends
        self._waiting = 0
        self._running: dict[str, float] = {}  # job id → monotonic start
        self._stop = threading.Event()
        self._shutdown = threading.Event()  # running jobs stop at their next step, released

    def start(self) -> None:
        # Warm the models first, on the job thread, so the first job does not wait for them.
        self._put(self._warm_up)
        self.recover()
        threading.Thread(target=self._housekeeping, name="explainer-housekeeping",
                         daemon=True).start()  # fmt: skip

    def _warm_up(self) -> None:
        from jobs.warmup import warm_up

        try:
            warm_up(self._settings.preload_models, self._device, self._pass_times)
        finally:
            self._warm.set()

    def wait_ready(self, timeout_s: float) -> None:
        self._warm.wait(timeout_s)

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._waiting += 1
        self._put(lambda: self._run(job_id))

    def _put(self, task: Callable[[], object]) -> None:
        with self._lock:
            while len(self._threads) < self._size:
                name = f"explainer-job-{len(self._threads)}"
                self._threads.append(threading.Thread(target=self._work, name=name, daemon=True))
                self._threads[-1].start()
        self._tasks.put(task)

    def recover(self) -> list[str]:
        """Queue again the jobs the previous process left unfinished; returns their ids, oldest
        first. Queued jobs (waiting, or handed back at a graceful stop) simply run. A running
        job whose run is dead (its process on this host is gone, or its heartbeat stopped
        ``heartbeat_timeout_s`` ago) goes back to queued and runs once more, like a job whose
        Celery worker died (the runner's MAX_ATTEMPTS); a job whose second run was lost too is
        failed by the runner, saying that its worker was lost twice. A job whose run is alive
        (another server on this directory) is left to it; :meth:`reap` takes it if it dies."""
        self._store.requeue_stale(self._settings.heartbeat_timeout_s)
        waiting = self._store.queued()
        for job_id in waiting:
            log.warning("job %s was left unfinished by the previous process; queued again",
                        job_id)  # fmt: skip
            self.submit(job_id)
            self._store.dispatched(job_id)
        for job_id in self._store.running():
            log.warning("job %s is running in another live process on this artifact directory; "
                        "left to it", job_id)  # fmt: skip
        return waiting

    def reap(self) -> list[str]:
        """Queue again and run the jobs whose run died (heartbeat older than the heartbeat
        timeout, or its process on this host gone), as a Celery worker's reaper does; returns
        their ids."""
        requeued = self._store.requeue_stale(self._settings.heartbeat_timeout_s)
        for job_id in requeued:
            log.warning("job %s lost its run; queued again", job_id)
            self.submit(job_id)
        return requeued

    def _work(self) -> None:
        from engine.runtime import share_cores

        share_cores(self._size, self._settings.threads_per_job)
        while (task := self._tasks.get()) is not None and not self._shutdown.is_set():
            try:
                task()
            except Exception:
                log.exception("embedded worker task failed")

    def _run(self, job_id: str) -> None:
        from jobs.runner import run_job

        with self._lock:
            self._waiting -= 1
            if self._shutdown.is_set():
                return  # still queued in the store: the next start runs it
            self._running[job_id] = time.monotonic()
        try:
            self._models.refresh()
            run_job(job_id, self._store, self._artifacts, self._settings, self._device,
                    time_limit_s=self._settings.soft_time_limit_s,
                    shutdown=self._shutdown, pass_times=self._pass_times)  # fmt: skip
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._idle.notify_all()

    def _housekeeping(self) -> None:
        last_sweep = last_reap = time.monotonic()
        while not self._stop.wait(min(1.0, self._settings.heartbeat_interval_s)):
            try:
                self.enforce_hard_limit()
                if time.monotonic() - last_reap >= self._settings.heartbeat_interval_s:
                    last_reap = time.monotonic()
                    self.reap()
                if time.monotonic() - last_sweep >= self._settings.sweep_interval_s:
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception as error:  # the database busy for a moment: next period
                log.warning("housekeeping: %s", error)

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

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """A graceful stop: no further job starts, and the running ones stop at their next
        step and go back to queued without counting as lost runs (the next start runs them
        from the beginning). Waits up to ``grace_s`` for them; a job still running then (a
        long single step) keeps its record running, and the next start takes it over as a
        dead run."""
        self._stop.set()
        self._shutdown.set()
        with self._lock:
            for _ in self._threads:
                self._tasks.put(None)
        deadline = time.monotonic() + grace_s
        with self._idle:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            still = sorted(self._running)
        if still:
            log.warning("jobs %s did not stop within %.0f s of the shutdown; the next start "
                        "runs them again as lost runs", ", ".join(still), grace_s)  # fmt: skip


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
