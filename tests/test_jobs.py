"""The jobs package in process: claiming a job once, heartbeats and taking over a dead run's
job, the out-of-memory retry at half the rows per pass, and the embedded worker's time limits
and expiry. The Redis store runs against a real redis-server."""

from __future__ import annotations

import os
import time

import pytest
import yaml

from jobs.artifacts import ArtifactStore
from jobs.models import ModelStore
from jobs.records import JobRecord
from jobs.runner import run_job
from jobs.settings import Settings
from jobs.store import MemoryJobStore, RedisJobStore
from service.dispatch import EmbeddedDispatcher
from testkit.stack import RedisServer

JOB = "0" * 32  # a job id as new_job_id() makes them
SETTINGS = Settings(heartbeat_interval_s=0.1, heartbeat_timeout_s=0.5, preload_models=())


def record(job_id: str = "j1", **fields) -> JobRecord:
    values = {
        "created_at": time.time(),
        "model": "efficientnet_lite0",
        "method": "saliency",
        "options": {},
        "input": {"kind": "sample", "name": "chelsea"},
        "content_hash": "h",
    }
    return JobRecord(id=job_id, **values | fields)


@pytest.fixture(params=["memory", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryJobStore(ttl_s=60)
        return
    server = RedisServer(tmp_path)
    try:
        yield RedisJobStore(server.url, ttl_s=60)
    finally:
        server.stop()


def test_a_job_is_claimed_by_one_run_and_taken_over_once_its_heartbeat_stops(store):
    store.create(record())
    first = store.start("j1", "run-a", stale_after_s=0.5)
    assert first is not None and first.attempts == 1 and first.run_token == "run-a"
    assert store.start("j1", "run-b", stale_after_s=0.5) is None  # alive elsewhere
    assert store.beat("j1", "run-a")
    time.sleep(0.7)  # run-a's process died: no heartbeat
    second = store.start("j1", "run-b", stale_after_s=0.5)
    assert second is not None and second.attempts == 2 and second.run_token == "run-b"
    assert not store.beat("j1", "run-a")  # run-a learns that the job is no longer its
    store.finish("j1", "succeeded")
    assert store.start("j1", "run-c", stale_after_s=0.0) is None  # finished: never again


def test_recent_jobs_are_listed_per_owner_newest_first_until_they_expire(store, monkeypatch):
    import jobs.store

    monkeypatch.setattr(jobs.store, "MAX_INDEXED", 4)
    now = time.time()
    for i in range(6):  # created in shuffled order; listed by creation time
        created = now + [3, 0, 5, 1, 4, 2][i]
        store.create(record(f"a{i}", owner="tenant-a", created_at=created))
    store.create(record("b0", owner="tenant-b"))
    store.create(record("n0"))  # a server without keys: owner None
    newest = [r.id for r in store.recent("tenant-a", 10)]
    assert newest == ["a2", "a4", "a0", "a5"]  # the 4 newest kept, newest first
    assert [r.id for r in store.recent("tenant-a", 2)] == ["a2", "a4"]
    assert [r.id for r in store.recent("tenant-b", 10)] == ["b0"]
    assert [r.id for r in store.recent(None, 10)] == ["n0"]
    assert store.recent("nobody", 10) == []
    # a record that expired leaves the list
    if isinstance(store, MemoryJobStore):
        store._records.pop("a2")
    else:
        store.redis.delete(store._key("job:a2"))
    assert [r.id for r in store.recent("tenant-a", 10)] == ["a4", "a0", "a5"]


def test_requeue_stale_hands_back_only_jobs_whose_heartbeat_stopped(store):
    for job_id in ("alive", "dead", "done"):
        store.create(record(job_id))
        store.start(job_id, f"run-{job_id}", stale_after_s=0.5)
    store.finish("done", "succeeded")
    time.sleep(0.7)
    store.beat("alive", "run-alive")
    assert store.requeue_stale(0.5) == ["dead"]
    assert store.get("dead").status == "queued" and store.get("alive").status == "running"
    assert store.requeue_stale(0.5) == []  # requeued once, not at every scan
    assert store.start("dead", "run-new", stale_after_s=0.5).attempts == 2


def test_a_redelivered_job_waits_for_the_live_run_and_is_skipped(tmp_path):
    """A second delivery while the first run is alive runs nothing."""
    store = MemoryJobStore(ttl_s=60)
    store.create(record())
    store.start("j1", "first", stale_after_s=SETTINGS.heartbeat_timeout_s)
    started = time.monotonic()
    while time.monotonic() - started < 0.3:  # the first run keeps beating while we wait
        store.beat("j1", "first")
        time.sleep(0.05)
    store.finish("j1", "succeeded")
    assert run_job("j1", store, ArtifactStore(tmp_path), SETTINGS) == "skipped"
    assert store.get("j1").attempts == 1


def row_limited_model(folder, rows: int) -> str:
    """A model config: a tiny CNN on a device with room for ``rows`` rows per pass."""
    config = {"name": "tiny", "factory": "tests.tiny_models:RowLimitedCNN",
              "factory_kwargs": {"rows": rows}, "input_size": [32, 32]}  # fmt: skip
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize(("rows", "status"), [(20, "succeeded"), (10, "failed")])
def test_out_of_memory_is_retried_once_at_half_the_rows_per_pass(tmp_path, rows, status):
    """IG's 32 path points go through the model 32 rows at a time (the process default); on a
    device with room for 20 rows that runs out of memory, and the retry at 16 rows succeeds; with
    room for 10 the retry fails too, and the job says so in the user's terms."""
    store = MemoryJobStore(ttl_s=60)
    model = row_limited_model(tmp_path, rows)
    store.create(record(model=model, method="integrated_gradients", options={"steps": 32}))
    assert run_job("j1", store, ArtifactStore(tmp_path / "artifacts"), SETTINGS) == status
    done = store.get("j1")
    assert done.attempts == 1
    if status == "failed":
        assert done.error == (
            f"integrated_gradients on {model} ran out of memory, also with 16 rows per pass; "
            "lower its image size, samples or steps"
        )
    else:
        assert "attribution.npy" in done.artifacts


def test_embedded_soft_time_limit_stops_a_job_at_its_next_pass(tmp_path):
    store = MemoryJobStore(ttl_s=60)
    store.create(record(method="pixelmask", options={"iterations": 300, "noise_samples": 2}))
    started = time.monotonic()
    state = run_job("j1", store, ArtifactStore(tmp_path), SETTINGS, time_limit_s=1.0)
    assert state == "failed" and store.get("j1").error == "the job exceeded its time limit"
    assert time.monotonic() - started < 15
    progress = store.progress("j1")  # none yet if the limit passed while the model loaded
    assert progress is None or progress["step"] < 300


def test_embedded_hard_time_limit_fails_an_overrunning_job_and_its_run_stops(tmp_path):
    settings = Settings(soft_time_limit_s=1, hard_time_limit_s=2, preload_models=(),
                        heartbeat_interval_s=0.1, heartbeat_timeout_s=0.5)  # fmt: skip
    store = MemoryJobStore(ttl_s=60)
    dispatcher = EmbeddedDispatcher(
        settings, store, ArtifactStore(tmp_path), ModelStore(tmp_path / "models")
    )
    store.create(record())
    store.start("j1", "stuck", stale_after_s=0.5)
    dispatcher._running["j1"] = time.monotonic() - 3  # a run past the hard limit
    try:
        assert dispatcher.enforce_hard_limit() == ["j1"]
        failed = store.get("j1")
        assert failed.status == "failed" and "hard time limit of 2 s" in failed.error
        assert not store.beat("j1", "stuck")  # the run's heartbeat sees it and it stops
    finally:
        dispatcher.close()


def test_embedded_records_and_artifacts_expire(tmp_path):
    settings = Settings(job_ttl_s=60, preload_models=())
    store = MemoryJobStore(ttl_s=1)
    artifacts = ArtifactStore(tmp_path)
    dispatcher = EmbeddedDispatcher(settings, store, artifacts, ModelStore(tmp_path / "models"))
    os.utime(tmp_path / "models", (0, 0))
    try:
        store.create(record())
        store.set_progress("j1", {"step": 1, "total": 2})
        artifacts.save_input(JOB, b"x")
        old = time.time() - 120
        os.utime(artifacts.job_dir(JOB) / "input.bin", (old, old))  # its newest object
        time.sleep(1.1)
        assert store.get("j1") is None and len(store) == 2  # invisible, not yet deleted
        dispatcher.sweep()
        assert len(store) == 0 and not artifacts.job_dir(JOB).exists()
        assert (tmp_path / "models").is_dir()  # the model store beside the jobs is kept
    finally:
        dispatcher.close()
