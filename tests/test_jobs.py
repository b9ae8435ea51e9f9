"""The jobs package in process: one contract suite that every job store passes (memory, SQLite,
Redis against a real redis-server), the SQLite store across store objects and reopenings,
claiming a job once, heartbeats and taking over a dead run's job, the out-of-memory retry at
half the rows per pass, and the embedded worker's time limits, expiry and restart recovery."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from jobs.artifact_store import ArtifactStore
from jobs.model_store import ModelStore
from jobs.records import TERMINAL, JobRecord
from jobs.runner import MAX_ATTEMPTS, run_job
from jobs.settings import Settings
from jobs.sqlite_store import SqliteJobStore
from jobs.store import UNDISPATCHED, JobStore, MemoryJobStore, RedisJobStore
from service.dispatch import EmbeddedDispatcher
from testkit.stack import RedisServer, wait_for

JOB = "0" * 32  # a job id as new_job_id() makes them
SETTINGS = Settings(heartbeat_interval_s=0.1, heartbeat_timeout_s=0.5, preload_models=())


def dead_run_token() -> str:
    """The run token of a process of this host that has exited (what a killed server left)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return f"{socket.gethostname()}/{gone.stdout.strip()}/0123456789abcdef"


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


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request, tmp_path):
    """Makes stores of one kind; those of one test share their data (a file, a server)."""
    server = RedisServer(tmp_path) if request.param == "redis" else None
    made: list[JobStore] = []

    def make(ttl_s: int = 60) -> JobStore:
        if request.param == "memory":
            made.append(MemoryJobStore(ttl_s))
        elif request.param == "sqlite":
            made.append(SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s))
        else:
            made.append(RedisJobStore(server.url, ttl_s))
        return made[-1]

    try:
        yield make
    finally:
        for store in made:
            store.close()
        if server is not None:
            server.stop()


@pytest.fixture
def store(make_store) -> JobStore:
    return make_store()


# --- the contract every store passes ----------------------------------------------------------
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
    assert store.running() == []


def test_recent_jobs_are_listed_per_owner_newest_first(store, monkeypatch):
    monkeypatch.setattr(store, "max_indexed", 4)
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


def test_records_keys_and_list_entries_expire_ttl_after_their_last_write(make_store):
    store = make_store(ttl_s=2)
    store.create(record("old", owner="t"))
    store.create(record("kept"))
    store.start("kept", "run", stale_after_s=5)
    store.claim_key("reuse", "k", "old")
    time.sleep(1.2)
    assert store.beat("kept", "run")  # a write: the record lives another 2 s
    store.create(record("new", owner="t"))
    time.sleep(1.2)
    assert store.get("old") is None and store.lookup_key("reuse", "k") is None
    assert store.get("kept").status == "running" and store.running() == ["kept"]
    assert [r.id for r in store.recent("t", 10)] == ["new"]
    assert store.claim_key("reuse", "k", "new") == "new"  # an expired key is free again
    if hasattr(store, "purge"):  # the embedded stores delete on a timer; Redis by itself
        assert store.purge() == 1 and len(store) == 3  # old went; kept, new and the key stay


def test_keys_progress_cancel_flags_and_counters(store):
    store.create(record("a"))
    store.create(record("b"))
    assert store.claim_key("idem", "k1", "a") == "a"
    assert store.claim_key("idem", "k1", "b") == "a"  # held: the holder is returned
    store.rebind_key("idem", "k1", "b")
    assert store.lookup_key("idem", "k1") == "b" and store.lookup_key("idem", "k2") is None
    assert store.progress("a") is None
    store.set_progress("a", {"step": 3, "total": 10, "loss": math.nan})
    assert store.progress("a") == {"step": 3, "total": 10, "loss": None}  # strict JSON
    assert store.cancel("a").status == "cancelled" and store.cancel_requested("a")
    assert not store.cancel_requested("b")
    store.start("b", "run", stale_after_s=5)
    assert store.cancel("b").status == "running" and store.cancel_requested("b")  # flagged
    finished = store.finish("b", "cancelled", error="cancelled while running")
    assert finished.status == "cancelled" and finished.finished_at is not None
    assert store.finish("b", "succeeded").status == "cancelled"  # once; later calls no-ops
    stats = store.stats()
    assert stats["submitted"] == 2 and stats["cancelled"] == 2 and "succeeded" not in stats
    durations = store.durations()  # b ran: one observed duration, in every bucket above it
    assert durations["count"] == 1 and durations["le_inf"] == 1 and durations["sum"] >= 0


def test_undispatched_jobs_are_found_until_they_are_dispatched(store):
    store.create(record("sent", created_at=time.time() - 60))
    store.create(record("lost", created_at=time.time() - 60))
    store.create(record("fresh"))
    store.dispatched("sent")
    assert store.undispatched(older_than_s=10) == ["lost"]
    store.finish("lost", "failed", error="x")
    assert store.undispatched(older_than_s=10) == []
    assert store._indexed(UNDISPATCHED, 10) == ["fresh"]  # settled ones left the list


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
    assert store.ping()


def test_a_released_run_goes_back_to_queued_and_is_not_a_lost_run(store):
    """A graceful stop hands the job back: queued, its run still counted in attempts (runs that
    started) and in released; only the run that holds the job can release it."""
    store.create(record())
    store.start("j1", "run-a", stale_after_s=5)
    assert store.release("j1", "run-b") is None  # not that run's job
    released = store.release("j1", "run-a")
    assert (released.status, released.attempts, released.released) == ("queued", 1, 1)
    assert released.run_token is None and store.running() == []
    assert store.release("j1", "run-a") is None  # once
    assert store.unclaimed(older_than_s=0) == ["j1"]
    again = store.start("j1", "run-c", stale_after_s=5)
    assert (again.attempts, again.released) == (2, 1)


# --- SQLite: one file, many store objects, reopened --------------------------------------------
def test_sqlite_stores_on_one_file_see_each_others_writes(tmp_path):
    """Two store objects on one file, as two processes would have: records, claims, keys,
    lists and counters written through one are read through the other."""
    one = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s=60)
    two = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s=60)
    try:
        one.create(record("j1", owner="t"))
        assert two.get("j1").status == "queued" and [r.id for r in two.recent("t", 5)] == ["j1"]
        assert two.start("j1", "run-two", stale_after_s=5).run_token == "run-two"
        assert one.start("j1", "run-one", stale_after_s=5) is None  # claimed once, by two
        assert one.running() == ["j1"]
        one.set_progress("j1", {"step": 1, "total": 2})
        assert two.progress("j1") == {"step": 1, "total": 2}
        assert one.claim_key("idem", "k", "j1") == "j1" and two.claim_key("idem", "k", "x") == "j1"
        two.finish("j1", "succeeded", artifacts=["overlay.png"])
        assert one.get("j1").artifacts == ["overlay.png"] and one.running() == []
        assert one.stats() == two.stats() == {"submitted": 1, "succeeded": 1}
    finally:
        one.close()
        two.close()


def test_sqlite_concurrent_updates_lose_nothing(tmp_path):
    """Read-modify-write from 8 threads over two store objects on one file: every one of the
    400 increments is kept (each _update is one transaction holding the write lock)."""
    stores = [SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s=60) for _ in range(2)]
    stores[0].create(record("j1"))

    def bump(store: SqliteJobStore) -> None:
        def change(current: JobRecord) -> JobRecord:
            current.attempts += 1
            time.sleep(0)  # let another thread run between the read and the write
            return current

        for _ in range(50):
            store._update("j1", change)

    threads = [threading.Thread(target=bump, args=(stores[i % 2],)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert stores[0].get("j1").attempts == stores[1].get("j1").attempts == 400
    finally:
        for store in stores:
            store.close()


def test_a_reopened_sqlite_store_keeps_everything(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path, ttl_s=60)
    first.create(record("done", owner="t", created_at=time.time() - 1))
    first.create(record("busy", owner="t"))
    first.dispatched("done")
    first.start("done", "run-1", stale_after_s=5)
    first.set_progress("done", {"step": 2, "total": 2})
    first.finish("done", "succeeded", artifacts=["mask.npz"], scores={"cp": 0.5})
    first.start("busy", "run-2", stale_after_s=5)
    first.claim_key("reuse", "hash", "done")
    first.close()
    second = SqliteJobStore(path, ttl_s=60)
    try:
        done = second.get("done")
        assert done.status == "succeeded" and done.scores == {"cp": 0.5}
        assert done.artifacts == ["mask.npz"] and second.progress("done")["step"] == 2
        assert [r.id for r in second.recent("t", 10)] == ["busy", "done"]
        assert second.running() == ["busy"] and second.unfinished() == ["busy"]
        assert second.lookup_key("reuse", "hash") == "done"
        assert second._indexed(UNDISPATCHED, 10) == ["busy"]
        assert second.stats() == {"submitted": 2, "succeeded": 1}
        assert second.durations()["count"] == 1
    finally:
        second.close()


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
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s=60)
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
        dispatcher.close(grace_s=0)  # no thread runs "j1"
        store.close()


def test_embedded_records_and_artifacts_expire(tmp_path):
    settings = Settings(job_ttl_s=60, preload_models=())
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s=1)  # beside the artifacts
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
        assert store.ping() and (tmp_path / "jobs.sqlite3").is_file()  # and the database
    finally:
        dispatcher.close()
        store.close()


def test_a_restarted_embedded_server_runs_again_what_its_previous_process_left(tmp_path):
    """The previous process died with a job waiting, one in its first run and one in its second
    run: the new one runs the waiting job, runs the first once more, and fails the second (lost
    twice, like a job whose Celery worker died twice); finished jobs are left alone."""
    path, model = tmp_path / "jobs.sqlite3", row_limited_model(tmp_path, rows=1000)
    previous = SqliteJobStore(path, ttl_s=60)
    now = time.time()
    for i, job_id in enumerate(["waiting", "once", "twice", "done"]):
        previous.create(record(job_id, model=model, created_at=now + i))
        if job_id != "waiting":  # it died between recording "waiting" and queuing it
            previous.dispatched(job_id)
    previous.start("once", dead_run_token(), stale_after_s=5)  # its process is gone
    previous.start("twice", dead_run_token(), stale_after_s=5)
    previous.start("twice", dead_run_token(), stale_after_s=0)  # its first run was lost before
    previous.start("done", "run", stale_after_s=5)
    previous.finish("done", "succeeded")
    previous.close()  # what the killed process left in the file

    store = SqliteJobStore(path, ttl_s=60)
    dispatcher = EmbeddedDispatcher(SETTINGS, store, ArtifactStore(tmp_path / "artifacts"),
                                    ModelStore(tmp_path / "models"))  # fmt: skip
    try:
        assert dispatcher.recover() == ["waiting", "once", "twice"]
        ids = ("waiting", "once", "twice")
        wait_for(lambda: all(store.get(i).status in TERMINAL for i in ids), 60, "the jobs")
        waiting, once, twice = (store.get(job_id) for job_id in ids)
        assert (waiting.status, waiting.attempts) == ("succeeded", 1)
        assert (once.status, once.attempts) == ("succeeded", 2)
        assert "attribution.npy" in once.artifacts
        assert (twice.status, twice.attempts) == ("failed", MAX_ATTEMPTS + 1)
        assert f"lost {MAX_ATTEMPTS} times" in twice.error and "not run again" in twice.error
        assert store.get("done").attempts == 1 and store.unfinished() == []
        assert store._indexed(UNDISPATCHED, 10) == []
    finally:
        dispatcher.close()
        store.close()


SLOW_SERIES_JOB = {"model": "state_gru", "method": "extremal_mask", "options": {"iterations": 5000},
                   "input": {"kind": "sample", "name": "state:0"}}  # fmt: skip


def test_a_starting_embedded_server_leaves_a_live_servers_running_job_alone(tmp_path):
    """Two embedded servers on one artifact directory: the second's start and its reaper (every
    heartbeat interval) do not take the job the first is running; the first's run goes on
    (same run token, one attempt, fresh heartbeats) until it is cancelled."""
    settings = Settings(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, preload_models=())
    path, artifacts = tmp_path / "jobs.sqlite3", ArtifactStore(tmp_path / "artifacts")
    stores = [SqliteJobStore(path, ttl_s=60) for _ in range(2)]
    first = EmbeddedDispatcher(settings, stores[0], artifacts, ModelStore(tmp_path / "models"))
    second = None
    try:
        stores[0].create(record(**SLOW_SERIES_JOB))
        first.submit("j1")
        stores[0].dispatched("j1")
        wait_for(lambda: (stores[0].progress("j1") or {}).get("step", 0) >= 1, 60, "a step")
        claimed = stores[0].get("j1")
        second = EmbeddedDispatcher(settings, stores[1], artifacts, ModelStore(tmp_path / "models"))
        second.start()  # recover(), then its housekeeping reaps every 0.2 s
        time.sleep(3 * settings.heartbeat_timeout_s)
        now = stores[1].get("j1")
        assert (now.status, now.run_token, now.attempts) == ("running", claimed.run_token, 1)
        assert now.heartbeat_at > claimed.heartbeat_at  # the first server's run goes on
        assert second.queue_length() == 0 and second._running == {}
        stores[1].cancel("j1")
        wait_for(lambda: stores[0].get("j1").status in TERMINAL, 30, "the cancel")
        assert (stores[0].get("j1").status, stores[0].get("j1").attempts) == ("cancelled", 1)
    finally:
        first.close()
        if second is not None:
            second.close()
        for store in stores:
            store.close()


def test_the_embedded_reaper_runs_once_a_job_whose_run_died(tmp_path):
    """While the server runs, a job whose run died (its process on this host is gone: at once;
    on another host: once its heartbeat is older than the timeout) is queued again by the
    housekeeping thread and runs once more, to one success."""
    model = row_limited_model(tmp_path, rows=1000)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", ttl_s=60)
    settings = Settings(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.5, preload_models=())
    dispatcher = EmbeddedDispatcher(settings, store, ArtifactStore(tmp_path / "artifacts"),
                                    ModelStore(tmp_path / "models"))  # fmt: skip
    try:
        dispatcher.start()
        for job_id, token in (("here", dead_run_token()), ("there", "gone-host/1/0123abcd")):
            store.create(record(job_id, model=model))
            store.dispatched(job_id)
            store.start(job_id, token, stale_after_s=5)
        ids = ("here", "there")
        wait_for(lambda: all(store.get(i).status in TERMINAL for i in ids), 60, "the jobs")
        for job_id in ids:
            done = store.get(job_id)
            assert (done.status, done.attempts, done.released) == ("succeeded", 2, 0), done
        assert store.stats()["succeeded"] == 2 and store.running() == []
    finally:
        dispatcher.close()
        store.close()


def test_progress_and_the_finish_wake_the_jobs_watchers(make_store):
    """What a long poll waits on: a job's progress and its terminal transition wake its
    watchers (Redis: written by another store object, relayed over pub/sub); another job's
    changes do not. report() writes progress and reads the cancel flag."""
    writer = make_store()
    reader = make_store() if isinstance(writer, RedisJobStore) else writer
    writer.create(record("j1"))
    writer.create(record("j2"))
    woken = threading.Event()
    with reader.watch("j1", woken.set):
        writer.set_progress("j2", {"step": 1, "total": 2})
        writer.finish("j2", "succeeded")
        assert not woken.wait(0.5)  # another job's news
        assert writer.start("j1", "run", stale_after_s=5) is not None
        assert woken.wait(10)
        woken.clear()
        assert writer.report("j1", {"step": 1, "total": 2}) is False
        assert woken.wait(10) and reader.progress("j1") == {"step": 1, "total": 2}
        woken.clear()
        writer.finish("j1", "succeeded", artifacts=["overlay.png"])
        assert woken.wait(10) and reader.get("j1").status == "succeeded"
    writer.cancel("j1")  # a finished job keeps its state; the flag is set all the same
    assert writer.report("j1", None) is True
    assert reader.snapshot("j1")[0].status == "succeeded"
    assert reader.snapshot("j1")[1] == {"step": 1, "total": 2}
    assert reader.stats()["succeeded"] == 2 and reader.durations()["count"] == 1  # j1 ran
