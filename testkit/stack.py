"""Real processes for service tests: redis-server on a free port, Celery workers, the API over
HTTP. Every process is started in its own session and killed (with its children) on stop."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Process:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 max_file_bytes: int | None = None):  # fmt: skip
        """``max_file_bytes``: RLIMIT_FSIZE of the child, a disk that fills up at that size."""
        self.log = log
        self.handle = open(log, "ab")  # noqa: SIM115 - kept open for the process' lifetime

        def limit_files():
            if max_file_bytes is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        self.proc = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self.handle,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit_files,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.handle.close()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL for anything left in the session."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        self.kill()


class RedisServer:
    """redis-server with append-only persistence in ``folder``; can be stopped and restarted."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install -y redis-server)"
        self.process = Process(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            self.folder / "redis.log",
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def ready():
            try:
                return client.ping()
            except redis.exceptions.RedisError:
                return False

        wait_for(ready, 20, "redis-server")

    def stop(self) -> None:
        assert self.process is not None
        self.process.stop()  # SIGTERM: redis flushes the AOF and exits

    def pause(self) -> None:
        """SIGSTOP: connections stay open and every command hangs (a stalled server)."""
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGCONT)


class Worker:
    """``celery -A workers worker`` with one prefork child."""

    count = 0

    def __init__(self, env: dict[str, str], folder: Path, max_file_bytes: int | None = None):
        """``max_file_bytes``: the largest file the worker may write (a full disk)."""
        Worker.count += 1
        self.name = f"w{Worker.count}@test"
        self.process = Process(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "prefork",
             "--concurrency", "1", "--loglevel", "INFO", "--hostname", self.name,
             "--without-gossip", "--without-mingle"],
            folder / f"worker{Worker.count}.log",
            env,
            max_file_bytes,
        )  # fmt: skip
        try:
            wait_for(lambda: "ready." in self.process.output() or not self.process.alive(), 90,
                     "the Celery worker")  # fmt: skip
            assert self.process.alive(), self.process.output()
        except BaseException:
            self.process.stop()  # the caller never gets this object, so nothing else could stop it
            raise


class Api:
    """``python -m service`` on a free port."""

    def __init__(self, env: dict[str, str], folder: Path, name: str = "api",
                 max_file_bytes: int | None = None):  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process(
            [sys.executable, "-m", "service", "--port", str(self.port)], folder / f"{name}.log",
            env, max_file_bytes,
        )  # fmt: skip
        self.client = httpx.Client(base_url=self.url, timeout=30)

        def ready():
            if not self.process.alive():
                raise RuntimeError(self.process.output())
            try:
                return self.client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(ready, 90, "the API")
        except BaseException:
            self.stop()  # the caller never gets this object, so nothing else could stop it
            raise

    def wait_done(self, job_id: str, timeout: float = 120, **headers) -> dict:
        """Poll until the job is in a terminal state; returns its last view."""

        def done():
            view = self.client.get(f"/jobs/{job_id}", headers=headers).json()
            return view if view["status"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(done, timeout, f"job {job_id}", interval=0.05)

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of GET /metrics (parsed as Prometheus text), or None."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    def stop(self) -> None:
        self.client.close()
        self.process.stop()


def service_env(redis_url: str | None, artifacts: Path, **extra: str) -> dict[str, str]:
    """The EXPLAINER_ variables of one test's stack. Its engine cache is its own (beside its
    artifacts), whatever this process inherited: an app built in-process (create_app) points
    EXPLAINER_CACHE_DIR at its own cache, and every server started later would share it."""
    env = {"EXPLAINER_ARTIFACT_DIR": str(artifacts), "PYTHONUNBUFFERED": "1",
           "EXPLAINER_CACHE_DIR": str(artifacts / "cache")}  # fmt: skip
    if redis_url:
        env["EXPLAINER_BROKER_URL"] = redis_url
    env.update({f"EXPLAINER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@contextlib.contextmanager
def distributed_stack(folder: Path, **settings: object) -> Iterator[Api]:
    """redis-server, one Celery worker and the API over HTTP, with ``settings`` as EXPLAINER_
    variables; all stopped afterwards (API, worker, then Redis)."""
    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts", **settings)
    worker = Worker(env, folder)
    api = Api(env, folder)
    try:
        yield api
    finally:
        api.stop()
        worker.process.stop()
        redis.stop()
