"""No job lost: a worker killed with SIGKILL mid-job, and Redis restarted with jobs queued."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from engine.data import load_sample
from testkit.stack import Api, RedisServer, Worker, service_env, wait_for

# Short limits so a lost job is redelivered within seconds: soft < hard < visibility timeout.
FAST_REDELIVERY = {"soft_time_limit_s": 50, "hard_time_limit_s": 55, "visibility_timeout_s": 60}


@pytest.fixture
def folder(tmp_path):
    return tmp_path


def start_long_job(api: Api, timeout: float) -> dict:
    """Submit a 48-step IG job in passes of 2 rows and wait until it reports progress."""
    request = {"sample": "chelsea", "method": "integrated_gradients",
               "options": {"steps": 48, "internal_batch_size": 2}}  # fmt: skip
    job = api.client.post("/explain", json=request).json()
    wait_for(lambda: api.client.get(f"/jobs/{job['id']}").json()["progress"], timeout,
             "the job to report progress")  # fmt: skip
    return job


def test_worker_killed_mid_job_then_job_succeeds_once(folder):
    """SIGKILL to a whole worker mid-job, at the default 12-minute visibility timeout: its
    heartbeat stops, a live worker's reaper queues the job again after 15 s, and it succeeds
    on its second attempt, once, well before Redis would have redelivered it."""
    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts")
    api = Api(env, folder)
    first = Worker(env, folder)
    second = None
    try:
        job = start_long_job(api, timeout=90)
        first.process.kill()  # SIGKILL to the worker and its pool process
        killed = time.monotonic()
        assert api.client.get(f"/jobs/{job['id']}").json()["status"] == "running"
        second = Worker(env, folder)
        view = api.wait_done(job["id"], timeout=180)
        assert view["status"] == "succeeded", view
        assert time.monotonic() - killed < 180 < 720  # the visibility timeout: 720 s
        assert view["attempts"] == 2
        assert view["progress"] == {"step": 48, "total": 48}
        outputs = list((folder / "artifacts" / job["id"]).iterdir())
        assert sorted(p.name for p in outputs) == ["input.bin", "outputs"] or sorted(
            p.name for p in outputs
        ) == ["outputs"]
        assert api.metric("explainer_jobs_total", state="succeeded") == 1
        assert api.metric("explainer_jobs_total", state="failed") == 0
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.process.stop()
        api.stop()
        redis.stop()


def test_redis_restart_keeps_queued_jobs(folder):
    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts")
    api = Api(env, folder)
    worker = None
    try:
        jobs = [
            api.client.post("/explain", json={"sample": name, "method": "saliency"}).json()
            for name in ("chelsea", "coffee", "rocket")
        ]
        assert all(job["status"] == "queued" for job in jobs)
        redis.stop()
        assert api.client.get("/health").json()["status"] == "degraded"
        redis.start()  # same port, same append-only file
        worker = Worker(env, folder)
        views = [api.wait_done(job["id"], timeout=120) for job in jobs]
        assert [v["status"] for v in views] == ["succeeded"] * 3
        assert all(v["attempts"] == 1 for v in views)
    finally:
        if worker is not None:
            worker.process.stop()
        api.stop()
        redis.stop()


def test_a_message_a_vanished_worker_took_is_queued_again_and_runs_once(folder):
    """An idle worker waits in a blocking pop; when its host vanishes, Redis can serve the next
    message on that dead connection, and the job's message leaves the queue for nowhere (its
    record stayed queued forever; found by the multi-host test). Here a client pops the message
    as a worker's BRPOP does and goes away: a live worker's reaper sees the job unclaimed and
    absent from the queue in two scans, sends it again, and it runs once."""
    import redis as redis_client

    from jobs.queue import QUEUE_KEYS, waiting_job_ids

    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts", preload_models="")
    api, worker = Api(env, folder), None
    broker = redis_client.Redis.from_url(redis.url)
    try:
        job = api.client.post("/explain", json={"sample": "coffee", "method": "saliency"}).json()
        assert waiting_job_ids(broker) == {job["id"]}
        _, message = broker.brpop(list(QUEUE_KEYS), timeout=5)
        assert json.loads(message)["headers"]["id"] == job["id"]
        broker.close()  # the consumer is gone with the message
        assert waiting_job_ids(broker) == set()
        worker = Worker(env, folder)
        view = api.wait_done(job["id"], timeout=90)  # after 10 s unclaimed, two scans 2 s apart
        assert view["status"] == "succeeded" and view["attempts"] == 1
        assert "its message was taken and never run" in worker.process.output()
        assert waiting_job_ids(broker) == set()  # nothing left to run it twice
    finally:
        broker.close()
        if worker is not None:
            worker.process.stop()
        api.stop()
        redis.stop()


def test_an_internal_failure_is_reported_without_internals(tmp_path, monkeypatch):
    """A job that fails inside a library is 'failed' with a message in the user's terms; the
    exception text (here with a server path) stays in the worker's log."""
    from jobs import runner
    from jobs.artifact_store import ArtifactStore
    from jobs.records import JobRecord
    from jobs.settings import Settings
    from jobs.store import MemoryJobStore

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error in /opt/secret/lib/kernel.cu:42")

    monkeypatch.setattr(runner, "explain", broken)
    store = MemoryJobStore(ttl_s=60)
    store.create(JobRecord(id="j1", created_at=0.0, model="efficientnet_lite0",
                           method="saliency", options={}, input={"kind": "sample",
                           "name": "chelsea"}, content_hash="h"))  # fmt: skip
    assert runner.run_job("j1", store, ArtifactStore(tmp_path), Settings()) == "failed"
    error = store.get("j1").error
    assert "internal error while running saliency on efficientnet_lite0" in error
    assert "/opt/secret" not in error and "RuntimeError" not in error


def test_a_stalled_redis_holds_up_no_other_request(folder):
    """Redis paused (SIGSTOP) while submissions wait on it: a call that needs no Redis still
    answers at once, the waiting ones get 503 after the store's short timeout, and the service
    works again once Redis does."""
    redis = RedisServer(folder)
    api = Api(service_env(redis.url, folder / "artifacts", preload_models=""), folder)
    request = {"sample": "chelsea", "method": "saliency"}
    try:
        redis.pause()
        with ThreadPoolExecutor(4) as pool:
            waiting = [pool.submit(httpx.post, f"{api.url}/explain", json=request, timeout=30)
                       for _ in range(4)]  # fmt: skip
            time.sleep(0.5)
            started = time.perf_counter()
            listed = api.client.get("/methods")
            assert listed.status_code == 200 and time.perf_counter() - started < 1.0
            for future in waiting:
                response = future.result()
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "unavailable"
        redis.resume()
        assert api.client.post("/explain", json=request).status_code == 202
    finally:
        redis.resume()
        api.stop()
        redis.stop()


def test_a_killed_pool_process_is_replaced_and_reruns_its_job_once_first(folder):
    """SIGKILL to the pool process (not the worker) mid-job: the worker starts a new one, which
    loads its models for over 5 s before it is ready (Celery's default 4 s readiness limit would
    kill it again and again), and the job succeeds on its second attempt, once, ahead of the
    jobs still queued (it went to the back of the queue before: finding 9). The worker reserves
    one waiting job the moment the process dies, before any reaper can act: that one may run
    first, no other."""
    redis = RedisServer(folder)
    slow = folder / "slow.yaml"
    slow.write_text('{"name": "slow", "factory": "tests.tiny_models:slow_loading_cnn", '
                    '"input_size": [32, 32]}')  # fmt: skip
    env = service_env(redis.url, folder / "artifacts",
                      preload_models=f"efficientnet_lite0,{slow}", **FAST_REDELIVERY)  # fmt: skip
    api = Api(env, folder)
    worker = Worker(env, folder)
    try:
        job = start_long_job(api, timeout=120)
        waiting = [api.client.post("/explain", json={"sample": name, "method": "saliency"}).json()
                   for name in ("coffee", "rocket", "astronaut")]  # fmt: skip
        parent = worker.process.proc.pid
        (child,) = map(int, Path(f"/proc/{parent}/task/{parent}/children").read_text().split())
        os.kill(child, signal.SIGKILL)
        view = api.wait_done(job["id"], timeout=180)
        assert view["status"] == "succeeded", view
        assert view["attempts"] == 2
        later = [api.wait_done(w["id"], timeout=120) for w in waiting]
        assert all(v["status"] == "succeeded" and v["attempts"] == 1 for v in later)
        overtook = [v for v in later if v["started_at"] < view["finished_at"]]
        assert len(overtook) <= 1, (view, later)
        assert api.metric("explainer_jobs_total", state="succeeded") == 4
        output = worker.process.output()
        assert "Timed out waiting for UP message" not in output
        loads = [
            float(t)
            for t in re.findall(r"warmed efficientnet_lite0, \S+ on cpu in ([\d.]+) s", output)
        ]
        assert len(loads) == 2 and loads[1] > 4.0, loads  # the replacement took over 4 s
    finally:
        worker.process.stop()
        api.stop()
        redis.stop()


# --- jobs that are lost, stuck or wrongly failed (issue 25, findings 5-9 and 13) --------------


def test_a_job_the_broker_refused_is_failed_and_a_record_without_a_message_is_sent(folder):
    """Broker down at submit, job store up: a 503, and the record is failed at once (it stayed
    queued forever before, and a retry with the same idempotency key got it back as '200
    reused'). The retry after the broker is back is a new job that runs once. A record whose
    submitter died between the record and the queue message is sent by a worker's reaper."""
    from jobs.records import JobRecord
    from jobs.store import RedisJobStore

    (folder / "store").mkdir()
    (folder / "broker").mkdir()
    records, broker = RedisServer(folder / "store"), RedisServer(folder / "broker")
    env = service_env(broker.url, folder / "artifacts", preload_models="")
    env["EXPLAINER_REDIS_URL"] = records.url
    api = worker = None
    request = {"sample": "chelsea", "method": "saliency", "idempotency_key": "retry-me"}
    try:
        api = Api(env, folder)
        broker.pause()  # stalled: the publish times out in seconds, other requests go on
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(api.client.post, "/explain", json={**request, "seed": 1})
            time.sleep(0.5)
            assert api.client.get("/health").status_code == 200
            assert stalled.result().status_code == 503
        assert time.monotonic() - started < 15
        broker.resume()
        broker.stop()
        refused = api.client.post("/explain", json=request)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        failed, _ = api.client.get("/jobs").json()  # newest first; the stalled one is failed too
        assert [job["status"] for job in api.client.get("/jobs").json()] == ["failed"] * 2
        assert "never queued" in failed["error"]
        broker.start()  # same port
        worker = Worker(env, folder)
        retried = api.client.post("/explain", json=request)
        assert retried.status_code == 202 and not retried.json()["reused"], retried.text
        assert retried.json()["id"] != failed["id"]
        view = api.wait_done(retried.json()["id"], timeout=120)
        assert view["status"] == "succeeded" and view["attempts"] == 1
        assert api.client.post("/explain", json=request).json()["reused"] is True

        # A submitter that died after its record and before the queue message.
        store = RedisJobStore(records.url, ttl_s=3600)
        store.create(JobRecord(id="f" * 32, created_at=time.time(), model="efficientnet_lite0",
                               method="saliency", options={}, content_hash="orphan",
                               input={"kind": "sample", "name": "coffee"}))  # fmt: skip
        orphan = api.wait_done("f" * 32, timeout=60)  # reaper: after 10 s, every 2 s
        assert orphan["status"] == "succeeded" and orphan["attempts"] == 1
        assert store.undispatched(0) == []

        assert api.client.get("/health").json()["status"] == "ok"
        broker.stop()  # a live worker, a live store, no broker: nothing can be queued
        health = api.client.get("/health").json()
        assert health["status"] == "degraded" and health["workers"] == 1, health
    finally:
        broker.resume()
        if worker is not None:
            worker.process.stop()
        if api is not None:
            api.stop()
        broker.stop()
        records.stop()


def test_a_stalled_redis_while_a_job_runs_delays_its_progress_but_never_fails_it(folder):
    """Redis paused (SIGSTOP) for 5 s while a job writes its progress: the writes time out
    (3 s), the job goes on and succeeds with its last progress written once Redis is back
    (it failed as 'internal error' before)."""
    from jobs.artifact_store import ArtifactStore
    from jobs.records import JobRecord
    from jobs.runner import run_job
    from jobs.settings import Settings
    from jobs.store import RedisJobStore

    redis = RedisServer(folder)
    store = RedisJobStore(redis.url, ttl_s=3600)
    store.create(JobRecord(id="a" * 32, created_at=time.time(), model="efficientnet_lite0",
                           method="integrated_gradients",
                           options={"steps": 40, "internal_batch_size": 1}, content_hash="h",
                           input={"kind": "sample", "name": "chelsea"}))  # fmt: skip
    outcome: list[str] = []
    settings = Settings(heartbeat_interval_s=1.0, heartbeat_timeout_s=30)
    runner = threading.Thread(target=lambda: outcome.append(
        run_job("a" * 32, store, ArtifactStore(folder / "artifacts"), settings)))  # fmt: skip
    try:
        runner.start()
        wait_for(lambda: store.progress("a" * 32), 120, "the job's progress")
        redis.pause()
        time.sleep(5)
        redis.resume()
        runner.join(timeout=600)
        assert outcome == ["succeeded"], store.get("a" * 32)
        assert store.progress("a" * 32) == {"step": 40, "total": 40}
    finally:
        redis.resume()
        runner.join(timeout=300)
        redis.stop()


def test_a_full_disk_in_the_worker_is_a_message_and_frees_the_input(folder):
    """The worker may write files of at most 300 kB (RLIMIT_FSIZE, a full disk): a job whose
    attribution does not fit fails with 'no room … submit it again later' (an internal error
    before) and its stored input is deleted (it stayed for 7 days). /health and /metrics answer
    at once from the workers' liveness marks (each waited a second for a broadcast ping)."""
    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts", preload_models="")
    worker = Worker(env, folder, max_file_bytes=300_000)
    api = Api(env, folder)
    try:
        photo = io.BytesIO()
        Image.fromarray(load_sample("chelsea")).save(photo, "PNG")
        files = {"image": ("chelsea.png", photo.getvalue(), "image/png")}
        request = {"model": "efficientnet_lite0", "method": "saliency"}
        created = api.client.post("/explain", files=files,
                                  data={"request": json.dumps(request)}).json()  # fmt: skip
        assert (folder / "artifacts" / created["id"] / "input.bin").exists()
        view = api.wait_done(created["id"], timeout=120)
        assert view["status"] == "failed", view
        assert view["error"] == ("the server had no room to store this job's results; submit it "
                                 "again later")  # fmt: skip
        assert not (folder / "artifacts" / created["id"] / "input.bin").exists()
        for path in ("/health", "/metrics"):
            started = time.perf_counter()
            assert api.client.get(path).status_code == 200
            assert time.perf_counter() - started < 0.5, path
        assert api.client.get("/health").json()["workers"] == 1
        assert api.metric("explainer_workers") == 1
    finally:
        api.stop()
        worker.process.stop()
        redis.stop()
