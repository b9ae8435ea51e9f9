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
   jobs orphaned (a record queued without a message, target 0) and keys run twice (target 0);
7. a worker host vanishing mid-job (testkit.netns: Redis, the S3 store, the API and two workers
   each in a network namespace; the host's link, processes and namespace deleted): the time
   from the namespace's deletion to that job's success on the other worker, at the default
   heartbeat settings (root only; ``--host-vanish-only`` runs this section alone);
8. ``--s3-jobs`` (400) small jobs with artifacts on an S3 server (SeaweedFS, testkit.s3) and on
   the local directory, in the same run: accepted / succeeded / lost, artifacts in the bucket,
   the overhead per job, and the store's own cost in process: publishing one job's artifacts
   and reading them back (``--s3-only`` runs this section alone).
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
from typing import TYPE_CHECKING

from jobs.settings import Settings
from testkit.stack import Api, RedisServer, Worker, service_env, wait_for

if TYPE_CHECKING:
    from jobs.objects import ObjectStore


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


def tiny_torchscript() -> bytes:
    """A tiny CNN (32² input, two classes) as a TorchScript upload: jobs whose cost is mostly
    the service's own (records, queue, artifacts), so a store's overhead shows."""
    import io

    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()  # fmt: skip
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    return buffer.getvalue()


def store_load(folder: Path, store_env: dict[str, str], jobs: int, clients: int) -> dict:
    """``jobs`` saliency jobs on the tiny CNN through one stack (Redis, a worker, the API) whose
    artifacts go to the store of ``store_env`` (empty: the local directory)."""
    import json

    folder.mkdir(parents=True)
    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts", admin_keys="bench-admin",
                      preload_models=",") | store_env  # fmt: skip
    api = Api(env, folder)
    worker = None
    try:
        config = {"name": "tiny", "source": "torchscript", "input_size": [32, 32],
                  "labels": ["a", "b"], "normalize": False}  # fmt: skip
        added = api.client.post("/models", headers={"X-Admin-Key": "bench-admin"},
                                data={"config": json.dumps(config)},
                                files={"weights": ("tiny.pt", tiny_torchscript())})  # fmt: skip
        assert added.status_code == 201, added.text
        worker = Worker(env, folder)
        api.wait_done(api.client.post("/explain", json={"model": "tiny", "sample": "chelsea",
                                                        "method": "saliency", "target": 0})
                      .json()["id"])  # a warm-up job: the model loaded once  # fmt: skip

        def submit(index: int) -> str | None:
            request = {"model": "tiny", "sample": "chelsea", "method": "saliency", "target": 0,
                       "seed": index, "reuse": False}  # fmt: skip
            response = api.client.post("/explain", json=request)
            return response.json()["id"] if response.status_code == 202 else None

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            ids = [i for i in pool.map(submit, range(jobs)) if i]
        views = [api.wait_done(job_id, timeout=1800) for job_id in ids]
        elapsed = time.perf_counter() - started
    finally:
        api.stop()
        if worker is not None:
            worker.process.stop()
        redis.stop()
    statuses = [v["status"] for v in views]
    runs = [v["finished_at"] - v["started_at"] for v in views if v["status"] == "succeeded"]
    return {"ids": ids, "accepted": len(ids), "succeeded": statuses.count("succeeded"),
            "failed": statuses.count("failed"),
            "lost": sum(s not in ("succeeded", "failed", "cancelled") for s in statuses),
            "wall": elapsed, "run_ms": 1000 * sum(runs) / max(1, len(runs)),
            "artifacts": sorted(views[0]["artifacts"]) if views else []}  # fmt: skip


def s3_overhead(folder: Path, jobs: int, clients: int) -> None:
    """Section 8: the same load with artifacts on a SeaweedFS S3 server (testkit.s3) and on the
    local directory, in this run; whether every succeeded job's artifacts are in the bucket."""
    from jobs.objects import S3Objects
    from testkit.s3 import s3_server

    with s3_server(folder / "s3") as s3:
        local = store_load(folder / "local", {}, jobs, clients)
        remote = store_load(folder / "on-s3", s3.env("bench"), jobs, clients)
        stored = {key.split("/")[1] for key in s3.keys("bench/") if key.endswith("/summary.json")}
        outputs = folder / "local" / "artifacts" / local["ids"][0] / "outputs"
        files = {path.name: path.read_bytes() for path in outputs.iterdir()}
        os.environ.update({k: v for k, v in s3.env().items() if k.startswith("AWS_")})
        bucket = S3Objects(s3.bucket, "publish", s3.url)
        timed = {name: publish_times(folder / f"publish-{name}", objects, files, jobs)
                 for name, objects in (("local", None), ("s3", bucket))}  # fmt: skip
    complete = sum(job_id in stored for job_id in remote["ids"])
    print(f"\n## {jobs} jobs with artifacts on S3 (SeaweedFS on loopback) against the local "
          f"directory, {clients} clients\n")  # fmt: skip
    print("saliency on a tiny uploaded CNN (32²; artifacts: "
          f"{', '.join(remote['artifacts'])}), one worker process each\n")  # fmt: skip
    print("| store | accepted | succeeded | failed | lost | summary.json stored | wall (s) | "
          "jobs/s | mean run on the worker (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row, kept in (("local directory", local, "–"), ("S3", remote, str(complete))):
        print(f"| {name} | {row['accepted']} | {row['succeeded']} | {row['failed']} | "
              f"{row['lost']} | {kept} | {row['wall']:.0f} | {row['accepted'] / row['wall']:.1f} "
              f"| {row['run_ms']:.0f} |")  # fmt: skip
    per_job = 1000 * (remote["wall"] - local["wall"]) / max(1, jobs)
    print(f"\noverhead of S3 per job: {remote['run_ms'] - local['run_ms']:+.0f} ms of the "
          f"worker's run (claim to finish, the uploads included), {per_job:+.0f} ms of wall "
          f"time (load average {os.getloadavg()[0]:.1f} at the end: both include the noise of a "
          "shared machine)\n")  # fmt: skip
    size = sum(map(len, files.values())) / 1024
    print(f"the store's own cost per job, in process, median of {jobs} (one job's "
          f"{len(files)} artifacts, {size:.0f} KiB):\n")  # fmt: skip
    print("| store | publish: staging → objects (ms) | read back every artifact (ms) |")
    print("|---|---|---|")
    for name, label in (("local", "local directory"), ("s3", "S3")):
        print(f"| {label} | {timed[name][0]:.1f} | {timed[name][1]:.1f} |")


def publish_times(
    folder: Path, objects: ObjectStore | None, files: dict[str, bytes], jobs: int
) -> tuple[float, float]:
    """Median ms to publish one job's artifacts from a staging folder (as the worker does) and
    to read them all back (as the API does), over ``jobs`` job ids."""
    import statistics
    import uuid

    from jobs.artifact_store import ArtifactStore

    store = ArtifactStore(folder, objects)
    publish, read = [], []
    for _ in range(jobs):
        job_id = uuid.uuid4().hex
        staging = store.staging_dir(job_id, 1)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        started = time.perf_counter()
        store.publish(job_id, staging)
        publish.append(time.perf_counter() - started)
        started = time.perf_counter()
        for name in files:
            b"".join(store.stream(job_id, name) or [])
        read.append(time.perf_counter() - started)
    return 1000 * statistics.median(publish), 1000 * statistics.median(read)


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


ITERATIONS = 600  # the vanishing host's job: some seconds of pixelmask on the tiny CNN


def host_vanished(folder: Path) -> None:
    """A pixelmask job on the tiny uploaded CNN runs on one worker host (the other held by a
    blocker job, cancelled before); that host vanishes; the job's time to success after."""
    from testkit import netns

    if reason := netns.unavailable():
        print(f"\n## A worker host vanished mid-job\n\nnot measured: {reason}")
        return
    settings = Settings()
    request = {"model": "tiny", "sample": "chelsea", "target": 0, "reuse": False,
               "method": "pixelmask"}  # fmt: skip
    with netns.explainer_cluster(folder, workers=2, preload_models=",", max_model_passes=100_000,
                                 **netns.TINY_SETTINGS) as cluster:  # fmt: skip
        cluster.upload_tiny()
        blocker = cluster.submit("/explain", request | {"options": {"iterations": 5000}})
        held = cluster.running_on(blocker)
        job_id = cluster.submit("/explain", request | {"options": {"iterations": ITERATIONS}})
        host = cluster.running_on(job_id, progress=True)
        cluster.cancel(blocker)
        assert cluster.record(job_id).status == "running" and host != held
        vanished = cluster.net.vanish(cluster.workers[host])
        view = cluster.wait_done(job_id, timeout=600)
        recovered = time.monotonic() - vanished
        rerun = view["finished_at"] - view["started_at"]
        taken_over = recovered - rerun
        record = cluster.record(job_id)
        print("\n## A worker host vanished mid-job (five network namespaces, artifacts on S3)\n")
        print(f"heartbeat every {settings.heartbeat_interval_s:g} s, a run is lost after "
              f"{settings.heartbeat_timeout_s:g} s without one\n")  # fmt: skip
        print("| job | namespace deleted → job succeeded (s) | → rerun started (s) | the rerun "
              "(s) | status | attempts | finished on |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        finished_on = cluster.host_of(job_id)
        print(f"| pixelmask, {ITERATIONS} iterations, tiny CNN at 32² | {recovered:.1f} | "
              f"{taken_over:.1f} | {rerun:.1f} | {view['status']} | {record.attempts} | "
              f"{finished_on} (was {host}) |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=2000)
    parser.add_argument("--stall", type=float, default=8.0)
    parser.add_argument("--host-vanish-only", action="store_true",
                        help="only the vanished worker host (section 7)")  # fmt: skip
    parser.add_argument("--s3-jobs", type=int, default=400)
    parser.add_argument("--s3-only", action="store_true", help="only the S3 store (section 8)")
    args = parser.parse_args()
    budget_mb = Settings().worker_max_memory_kb / 1024
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.host_vanish_only:
            host_vanished(folder / "hosts")
            return
        if args.s3_only:
            s3_overhead(folder / "stores", args.s3_jobs, args.clients)
            return
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
        host_vanished(folder / "hosts")
        s3_overhead(folder / "stores", args.s3_jobs, args.clients)


if __name__ == "__main__":
    main()
