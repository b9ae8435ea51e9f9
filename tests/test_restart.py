"""Embedded mode survives restarts: the real server (``python -m service``, as ``./run.sh``
starts it) is stopped and started again on the same artifact directory, and keeps its jobs in
its SQLite database beside the artifacts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from jobs.sqlite_store import SqliteJobStore
from testkit.stack import Api, free_port, service_env, wait_for

SLOW_JOB = {"sample": "state:0", "model": "state_gru", "method": "extremal_mask",
            "options": {"iterations": 10}}  # fmt: skip


def test_a_restarted_server_keeps_its_jobs_and_reruns_the_one_it_was_killed_in(tmp_path):
    """A finished job is listed, readable and downloadable (same bytes) after a SIGTERM and a
    start; a job running when the process is SIGKILLed runs once more at the next start and
    succeeds exactly once (its second attempt; the persisted counters count one success)."""
    env = service_env(None, tmp_path / "artifacts", preload_models="")
    servers: list[Api] = []

    def start() -> Api:
        servers.append(Api(env, tmp_path, name=f"api{len(servers) + 1}"))
        return servers[-1]

    try:
        api = start()
        created = api.client.post("/explain", json={"sample": "chelsea", "method": "saliency"})
        assert created.status_code == 202, created.text
        job = created.json()["id"]
        done = api.wait_done(job)
        assert done["status"] == "succeeded" and "overlay.png" in done["artifacts"]
        files = {name: api.client.get(url).content for name, url in done["artifacts"].items()}
        assert all(files.values())
        api.stop()  # SIGTERM: a graceful stop
        assert "Finished server process" in api.process.output()  # it shut down, not killed

        api = start()
        assert [view["id"] for view in api.client.get("/jobs").json()] == [job]
        again = api.client.get(f"/jobs/{job}").json()
        assert {key: again[key] for key in ("status", "attempts", "scores", "prediction")} == {
            key: done[key] for key in ("status", "attempts", "scores", "prediction")
        }
        for name, url in again["artifacts"].items():
            assert api.client.get(url).content == files[name], name

        slow = api.client.post("/explain", json=SLOW_JOB).json()["id"]

        def running() -> bool:
            view = api.client.get(f"/jobs/{slow}").json()
            assert view["status"] not in ("succeeded", "failed", "cancelled"), view
            return view["status"] == "running" and (view["progress"] or {}).get("step", 0) >= 1

        wait_for(running, 120, "the slow job's first step", interval=0.05)
        api.client.close()
        api.process.kill()  # SIGKILL mid-job: no shutdown code runs

        started = time.monotonic()
        api = start()
        rerun = api.wait_done(slow)
        assert rerun["status"] == "succeeded" and rerun["attempts"] == 2, rerun
        assert rerun["progress"]["step"] == rerun["progress"]["total"] == 10
        assert "attribution.npy" in rerun["artifacts"]
        assert "left unfinished by the previous process" in api.process.output()
        assert api.metric("explainer_jobs_total", state="submitted") == 2
        assert api.metric("explainer_jobs_total", state="succeeded") == 2  # each job once
        assert [view["id"] for view in api.client.get("/jobs").json()] == [slow, job]
        print(f"the killed job finished {time.monotonic() - started:.1f} s after the restart")
    finally:
        for server in servers:
            server.stop()


def test_a_graceful_stop_hands_the_running_job_back_without_counting_a_lost_run(tmp_path):
    """SIGTERM twice while one job runs: each time the server stops within seconds (the job
    stops at its next step and goes back to queued), the next start runs it again, and the
    third run succeeds: three runs started (attempts 3), two handed back (released 2), none
    counted as lost."""
    env = service_env(None, tmp_path / "artifacts", preload_models="")
    servers: list[Api] = []
    job = None
    try:
        for start in range(3):
            servers.append(Api(env, tmp_path, name=f"api{start + 1}"))
            api = servers[-1]
            if job is None:
                request = SLOW_JOB | {"options": {"iterations": 20}}
                created = api.client.post("/explain", json=request)
                assert created.status_code == 202, created.text
                job = created.json()["id"]
            if start == 2:
                break

            def running(api: Api = api, job: str = job) -> bool:
                view = api.client.get(f"/jobs/{job}").json()
                assert view["status"] not in ("succeeded", "failed", "cancelled"), view
                return view["status"] == "running" and (view["progress"] or {}).get("step", 0) >= 1

            wait_for(running, 60, "the job's first step", interval=0.05)
            stopped = time.monotonic()
            api.stop()  # SIGTERM
            assert time.monotonic() - stopped < 10  # uvicorn re-raises the SIGTERM it handled
            output = api.process.output()
            assert "Finished server process" in output  # it shut down, not killed
            assert "stopped for the server's shutdown; queued again" in output
        done = api.wait_done(job)
        assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 3, None), done
        assert done["progress"]["step"] == done["progress"]["total"] == 20
        assert api.metric("explainer_jobs_total", state="succeeded") == 1
        api.stop()
        store = SqliteJobStore(tmp_path / "artifacts" / "jobs.sqlite3", ttl_s=60)
        try:
            assert store.get(job).released == 2
        finally:
            store.close()
    finally:
        for server in servers:
            server.stop()


def test_a_damaged_job_database_stops_the_start_with_one_line(tmp_path):
    """A jobs.sqlite3 that is not a database: the server says which file and what to do on
    one line, and exits 2 without a traceback."""
    database = tmp_path / "artifacts" / "jobs.sqlite3"
    database.parent.mkdir()
    database.write_bytes(bytes(range(256)) * 32)  # 8 KiB that are no SQLite file
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("EXPLAINER_")}
    started = subprocess.run(
        [sys.executable, "-m", "service", "--port", str(free_port())], capture_output=True,
        text=True, timeout=120, env=inherited | service_env(None, database.parent),
    )  # fmt: skip
    assert started.returncode == 2, started.stderr
    assert started.stdout == "" and len(started.stderr.strip().splitlines()) == 1, started.stderr
    assert "Traceback" not in started.stderr
    assert str(database) in started.stderr and "not an SQLite database" in started.stderr
    assert "move it" in started.stderr and "restore it from a backup" in started.stderr
