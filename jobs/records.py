"""A job's record: our own source of truth for its state (Celery alone reports unknown ids as
PENDING). States: queued → running → succeeded | failed | cancelled (queued → cancelled
directly; a running job whose worker died, or whose embedded server stopped gracefully, goes
back to queued). Only small JSON summaries live here; inputs, tensors and pictures go to the
artifact store.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["explain", "patterns", "support_set", "study_batch"]
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")


class JobRecord(BaseModel):
    id: str
    kind: JobKind = "explain"  # or training a set the add-ons need (jobs.training_jobs), or
    # one batch of a study: one variant on a chunk of the study's inputs (jobs.studies)
    status: JobStatus = "queued"
    created_at: float
    queued_at: float | None = None  # when it last went back to queued (None: since created_at)
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
    owner: str | None = None  # the submitting API key's tenant id; None: the server has no keys
    attempts: int = 0  # runs that started (each claim of the job by a run)
    released: int = 0  # of those, runs handed back unfinished at a graceful stop (not lost)
    run_token: str | None = None  # which run holds the job while it is running
    heartbeat_at: float | None = None  # that run's last sign of life
    prediction: dict[str, Any] | None = None
    scores: dict[str, Any] | None = None
    artifacts: list[str] = []
    timings: dict[str, float] = {}
    error: str | None = None


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_run_token() -> str:
    """``host/pid/random``: which process runs the job, so a reaper on the same host can tell
    at once that the process died (:func:`run_is_dead`)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:16]}"


_live_runs: set[str] = set()  # the run tokens of this process whose run is going on
_live_lock = threading.Lock()


@contextmanager
def live_run(token: str) -> Iterator[None]:
    """Mark the run ``token`` of this process as going on for the block (:func:`run_is_dead`)."""
    with _live_lock:
        _live_runs.add(token)
    try:
        yield
    finally:
        with _live_lock:
            _live_runs.discard(token)


def run_is_dead(token: str | None) -> bool:
    """The run ``token`` belongs to a process of this host that no longer exists, or to this
    very process without being one of its live runs (a restarted server in a container gets
    the pid its previous process had)."""
    host, _, rest = (token or "").partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit() or not pid.isascii():
        return False
    if int(pid) == os.getpid():
        with _live_lock:
            return token not in _live_runs
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
