"""Reliability under load and faults, on loopback only: a real redis-server, real Celery workers
and the API over HTTP.

    python -m benchmarks.reliability [--jobs 500] [--clients 8] [--ig-steps 2000]

Prints:
1. jobs accepted / succeeded / failed / lost / duplicated when ``--clients`` threads submit
   ``--jobs`` small jobs at once (lost: accepted but never finished; duplicated: run more
   than once, from the records' attempt counts), and the worker's RSS before, at peak and after;
2. recovery times: after SIGKILL to the pool process (until a new job succeeds) and after
   SIGKILL to a whole worker mid-job (until a second worker has finished that job);
3. the worker's peak RSS for integrated_gradients at ``--ig-steps`` (the most the server accepts)
   against the worker memory budget (``EXPLAINER_WORKER_MAX_MEMORY_KB``);
4. the cancel latency of integrated_gradients with 2000 steps inside a 10-sample noise tunnel
   (DELETE until the job reads cancelled);
5. a Redis stall (SIGSTOP for ``--stall`` seconds) while jobs run: jobs failed (target 0);
6. the broker down while ``--clients`` clients submit with idempotency keys and retry on 503:
   jobs orphaned (a record queued without a message, target 0) and keys run twice (target 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jobs.settings import Settings
from testkit.stack import Api, RedisServer, Worker, service_env, wait_for


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a Celery worker and its pool)."""
    total, pids = 0.0, [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        rss = [line for line in status.splitlines() if line.startswith("VmRSS")]
        total += int(rss[0].split()[1]) / 1024 if rss else 0.0  # none: a zombie, exiting
        pids += [int(c) for c in children]
    return total


class PeakRss:
    """Samples a process tree's RSS every 50 ms while active."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def pool_child(worker: Worker) -> int:
    parent = worker.process.proc.pid
    (child,) = map(int, Path(f"/proc/{parent}/task/{parent}/children").read_text().split())
    return child


def load(api: Api, worker: Worker, jobs: int, clients: int) -> None:
    def submit(index: int) -> str | None:
        request = {"sample": "chelsea", "method": "saliency", "seed": index, "reuse": False}
        response = api.client.post("/explain", json=request)
        return response.json()["id"] if response.status_code == 202 else None

    before = tree_rss_mb(worker.process.proc.pid)
    started = time.perf_counter()
    with PeakRss(worker.process.proc.pid) as rss, ThreadPoolExecutor(clients) as pool:
        ids = [i for i in pool.map(submit, range(jobs)) if i]
        views = [api.wait_done(job_id, timeout=1800) for job_id in ids]
    elapsed = time.perf_counter() - started
    after = tree_rss_mb(worker.process.proc.pid)
    statuses = [v["status"] for v in views]
    print(f"\n## {jobs} jobs from {clients} clients ({elapsed:.0f} s, {len(ids) / elapsed:.1f} "
          "jobs/s)\n")  # fmt: skip
    print("| accepted | succeeded | failed | lost | duplicated |")
    print("|---|---|---|---|---|")
    print(f"| {len(ids)} | {statuses.count('succeeded')} | {statuses.count('failed')} | "
          f"{sum(s not in ('succeeded', 'failed', 'cancelled') for s in statuses)} | "
          f"{sum(v['attempts'] > 1 for v in views)} |")  # fmt: skip
    print(f"\nworker RSS: {before:.0f} MB before, {rss.peak:.0f} MB at peak, {after:.0f} MB "
          "after")  # fmt: skip


def long_job(api: Api) -> str:
    request = {"sample": "chelsea", "method": "integrated_gradients", "reuse": False,
               "options": {"steps": 200, "internal_batch_size": 2}}  # fmt: skip
    job_id = api.client.post("/explain", json=request).json()["id"]
    wait_for(lambda: api.client.get(f"/jobs/{job_id}").json()["progress"], 120, "progress")
    return job_id


def recovery(api: Api, worker: Worker, env: dict, folder: Path) -> Worker:
    print("\n## Recovery\n")
    print("| fault | time to recover (s) | what was measured |")
    print("|---|---|---|")
    os.kill(pool_child(worker), signal.SIGKILL)
    killed = time.perf_counter()
    created = api.client.post("/explain", json={"sample": "chelsea", "method": "saliency",
                                                "reuse": False}).json()  # fmt: skip
    view = api.wait_done(created["id"], timeout=300)
    print(f"| SIGKILL to the idle pool process | {time.perf_counter() - killed:.1f} | a job "
          f"submitted right after it: {view['status']} |")  # fmt: skip

    job_id = long_job(api)
    spare = Worker(env, folder)  # a live worker to take over, started once the job runs
    worker.process.kill()
    killed = time.perf_counter()
    view = api.wait_done(job_id, timeout=600)
    rerun = view["finished_at"] - view["started_at"]
    print(f"| SIGKILL to the whole worker running a job | {time.perf_counter() - killed:.1f} | "
          f"that job done by the other worker: {view['status']}, attempt {view['attempts']} "
          f"(the rerun itself: {rerun:.1f} s) |")  # fmt: skip
    return spare


def ig_peak(api: Api, worker: Worker, steps: int, budget_mb: float) -> None:
    request = {"sample": "chelsea", "method": "integrated_gradients", "reuse": False,
               "options": {"steps": steps}}  # fmt: skip
    with PeakRss(worker.process.proc.pid) as rss:
        response = api.client.post("/explain", json=request)
        if response.status_code != 202:
            print(f"\nIG with {steps} steps refused: {response.json()['error']['message']}")
            return
        view = api.wait_done(response.json()["id"], timeout=900)
    verdict = "under" if rss.peak < budget_mb else "OVER"
    print(f"\n## integrated_gradients, {steps} steps (internal_batch_size unset)\n")
    print(f"status {view['status']}; worker peak RSS {rss.peak:.0f} MB, {verdict} the budget of "
          f"{budget_mb:.0f} MB")  # fmt: skip


def cancel_latency(api: Api) -> None:
    request = {"sample": "chelsea", "method": "integrated_gradients", "reuse": False,
               "options": {"steps": 2000, "smoothing": {"samples": 10}}}  # fmt: skip
    job_id = api.client.post("/explain", json=request).json()["id"]
    wait_for(lambda: api.client.get(f"/jobs/{job_id}").json()["progress"], 120, "progress")
    asked = time.perf_counter()
    api.client.delete(f"/jobs/{job_id}")
    view = api.wait_done(job_id, timeout=600)
    print("\n## Cancel of IG, 2000 steps × 10 noise samples (20,000 passes)\n")
    print(f"status {view['status']} {time.perf_counter() - asked:.2f} s after DELETE "
          f"(progress then: {view['progress']})")  # fmt: skip


def redis_stall(api: Api, redis: RedisServer, stall_s: float, jobs: int = 12) -> None:
    request = {"sample": "chelsea", "method": "pixelmask", "reuse": False,
               "options": {"iterations": 60, "image_size": 96, "noise_samples": 4}}  # fmt: skip
    ids = [api.client.post("/explain", json={**request, "seed": i}).json()["id"]
           for i in range(jobs)]  # fmt: skip
    wait_for(lambda: api.client.get(f"/jobs/{ids[0]}").json()["progress"], 120, "progress")
    redis.pause()
    time.sleep(stall_s)
    redis.resume()
    views = [api.wait_done(job_id, timeout=900) for job_id in ids]
    statuses = [v["status"] for v in views]
    print(f"\n## Redis stalled {stall_s:.0f} s while {jobs} pixelmask jobs ran\n")
    print("| succeeded | failed | attempts > 1 |")
    print("|---|---|---|")
    print(f"| {statuses.count('succeeded')} | {statuses.count('failed')} | "
          f"{sum(v['attempts'] > 1 for v in views)} |")  # fmt: skip


def broker_outage(folder: Path, clients: int, outage_s: float = 10.0) -> None:
    """Clients submit with idempotency keys while the broker is down, retrying every 503 after
    its Retry-After, until accepted; then every key's job must run exactly once."""
    (folder / "records").mkdir()
    (folder / "broker").mkdir()
    records, broker = RedisServer(folder / "records"), RedisServer(folder / "broker")
    env = service_env(broker.url, folder / "outage-artifacts")
    env["EXPLAINER_REDIS_URL"] = records.url
    api, worker = Api(env, folder, name="outage-api"), Worker(env, folder)
    refusals = []

    def submit(index: int) -> str:
        request = {"sample": "coffee", "method": "saliency", "seed": index,
                   "idempotency_key": f"key-{index}"}  # fmt: skip
        while True:
            response = api.client.post("/explain", json=request)
            if response.status_code in (200, 202):
                return response.json()["id"]
            refusals.append(response.status_code)
            time.sleep(float(response.headers.get("retry-after", 1)))

    try:
        broker.stop()
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(submit, i) for i in range(4 * clients)]
            time.sleep(outage_s)
            broker.start()
            ids = [future.result() for future in futures]
        views = [api.wait_done(job_id, timeout=600) for job_id in ids]
        listed = api.client.get("/jobs", params={"limit": 100}).json()
        orphans = [v for v in listed if v["status"] == "queued"]
        print(f"\n## Broker down {outage_s:.0f} s while {clients} clients submit "
              f"{len(ids)} jobs with idempotency keys\n")  # fmt: skip
        print("| 503s answered | accepted | succeeded | orphaned records | keys run twice |")
        print("|---|---|---|---|---|")
        print(f"| {len(refusals)} | {len(ids)} | "
              f"{sum(v['status'] == 'succeeded' for v in views)} | {len(orphans)} | "
              f"{len(ids) - len(set(ids)) + sum(v['attempts'] > 1 for v in views)} |")  # fmt: skip
    finally:
        api.stop()
        worker.process.stop()
        broker.stop()
        records.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=2000)
    parser.add_argument("--stall", type=float, default=8.0)
    args = parser.parse_args()
    budget_mb = Settings().worker_max_memory_kb / 1024
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis = RedisServer(folder)
        env = service_env(redis.url, folder / "artifacts")
        workers = [Worker(env, folder)]
        api = Api(env, folder)
        try:
            load(api, workers[0], args.jobs, args.clients)
            ig_peak(api, workers[0], args.ig_steps, budget_mb)
            cancel_latency(api)
            redis_stall(api, redis, args.stall)
            workers.append(recovery(api, workers[0], env, folder))
        finally:
            api.stop()
            for worker in workers:
                worker.process.stop()
            redis.stop()
        broker_outage(folder, args.clients)


if __name__ == "__main__":
    main()
