"""How a submitted job reaches a worker: Celery over Redis, or an in-process thread pool."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

from service.artifacts import ArtifactStore
from service.jobstore import JobStore
from service.settings import Settings


class Dispatcher(ABC):
    @abstractmethod
    def submit(self, job_id: str) -> None: ...

    def start(self) -> None:
        """Called once the server starts."""
        return None

    def revoke(self, job_id: str) -> None:
        """Best effort; a revoked or cancelled job is also skipped by the worker itself."""
        return None

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
    """Runs jobs on threads of the API process with the same task code as the Celery workers."""

    def __init__(self, settings: Settings, store: JobStore, artifacts: ArtifactStore):
        self._device = local_device(settings)
        self._store, self._artifacts = store, artifacts
        self._size = max(1, settings.embedded_workers)
        self._executor = ThreadPoolExecutor(self._size, thread_name_prefix="explainer-job")
        self._lock = threading.Lock()
        self._waiting = 0
        self._preload = settings.preload_models

    def start(self) -> None:
        # Load the models first, on the job thread, so the first job does not wait for them.
        from workers.runner import preload_models

        self._executor.submit(preload_models, self._preload, self._device)

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._waiting += 1
        self._executor.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        from workers.runner import run_job

        with self._lock:
            self._waiting -= 1
        run_job(job_id, self._store, self._artifacts, self._device)

    def queue_length(self) -> int:
        with self._lock:
            return self._waiting

    def workers(self) -> int:
        return self._size

    def device(self) -> str:
        return self._device

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class CeleryDispatcher(Dispatcher):
    """Sends jobs to Celery workers through the Redis broker (task id = job id)."""

    def __init__(self, settings: Settings):
        import redis

        from workers.celery_app import app

        self._app = app
        self._redis = redis.Redis.from_url(
            settings.broker_url, socket_timeout=3, socket_connect_timeout=2
        )

    def submit(self, job_id: str) -> None:
        self._app.send_task("explainer.explain", args=[job_id], task_id=job_id)

    def revoke(self, job_id: str) -> None:
        self._app.control.revoke(job_id)

    def queue_length(self) -> int:
        try:
            return int(self._redis.llen("celery"))
        except Exception:
            return -1

    def _ping(self) -> list:
        try:
            return self._app.control.ping(timeout=1.0) or []
        except Exception:
            return []

    def workers(self) -> int:
        return len(self._ping())

    def device(self) -> str:
        try:
            devices = sorted(d.decode() for d in self._redis.smembers("explainer:devices"))
        except Exception:
            devices = []
        return ",".join(devices) or "unknown"
