"""The service's cost around the model: overhead per job with one Celery worker, and embedded
mode against the least a server needs (benchmarks/minimal_server.py: FastAPI + Captum, a lock
around the model), under the same load.

    python -m benchmarks.service [--jobs 40] [--load 200] [--clients 8] [--rounds 2] [--threads]

Overhead (distributed: real redis-server, one Celery worker, the API over HTTP): time from
POST /explain to the long poll (GET /jobs/{id}?wait=) that answers 'succeeded', minus the
engine's own ``total_s`` for that job; sequential jobs, so nothing queues.

Load (embedded mode, its default one job thread, vs the minimal server): ``--clients`` threads send
``--load`` jobs in all, each client one job at a time (ours: submit, then long-poll to the end;
the reference answers the request itself); throughput = jobs / wall time, latency = per job.
Rounds alternate A (ours) and B (reference), ABAB…, both servers up all along; ratios compare
the medians over rounds. Every server runs as its own process and is killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from testkit.stack import Api, Process, RedisServer, Worker, free_port, service_env, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")
SAMPLE = "chelsea"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_job(client: httpx.Client, method: str, seed: int) -> dict:
    """Submit a fresh job to our service and long-poll it to its end; its last view, with
    ``accepted_at``: when the submission's answer was read."""
    request = {"sample": SAMPLE, "method": method, "seed": seed, "reuse": False}
    answer = client.post("/explain", json=request)
    accepted_at = time.time()
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    while True:
        view = client.get(f"/jobs/{job_id}", params={"wait": 20}, timeout=60).json()
        if view["status"] in TERMINAL:
            assert view["status"] == "succeeded", view
            return view | {"accepted_at": accepted_at}


def overhead(api: Api, method: str, jobs: int) -> list[dict[str, float]]:
    """Where the time of ``jobs`` sequential jobs went (seconds): ``total`` (submit→done),
    ``compute`` (the engine's total_s) and, from the record's times, ``submit`` (POST until
    the record exists), ``accept`` (record → the 202 read), ``queue`` (record → claimed by a
    worker), ``run`` (claimed → finished, less compute), ``answer`` (finished → the long poll's
    answer read)."""
    run_job(api.client, method, 10**6)  # the worker's first job loads what it needs
    timings = []
    for i in range(jobs):
        wall, start = time.time(), time.perf_counter()
        view = run_job(api.client, method, i)
        total, end = time.perf_counter() - start, time.time()
        compute = view["timings"]["total_s"]
        timings.append({"total": total, "compute": compute,
                        "submit": view["created_at"] - wall,
                        "accept": view["accepted_at"] - view["created_at"],
                        "queue": view["started_at"] - view["created_at"],
                        "run": view["finished_at"] - view["started_at"] - compute,
                        "answer": end - view["finished_at"]})  # fmt: skip
    return timings


@contextlib.contextmanager
def celery_stack(folder: Path, fsync: str) -> Iterator[Api]:
    """redis-server with ``appendfsync`` ``fsync`` (docker-compose.yml's everysec, or the test
    kit's always: an fsync per write), one Celery worker (prefork, one child), the API."""
    import redis as client

    folder.mkdir(parents=True)
    server = RedisServer(folder)
    client.Redis(port=server.port).config_set("appendfsync", fsync)
    env = service_env(server.url, folder / "artifacts")
    worker = api = None
    try:
        worker = Worker(env, folder)
        api = Api(env, folder)
        yield api
    finally:
        if api is not None:
            api.stop()
        if worker is not None:
            worker.process.stop()
        server.stop()


def report_overhead(folder: Path, methods: list[str], jobs: int, fsyncs: list[str]) -> None:
    """Print the overhead table: p50s of :func:`overhead`'s parts, and the verdict."""
    parts = ("submit", "accept", "queue", "run", "answer")
    print(f"{'method':<10}{'fsync':>9}{'submit→done':>12}{'compute':>9}{'overhead':>10}{'p95':>7}"
          + "".join(f"{p:>8}" for p in parts) + "   (ms, p50 unless p95)")  # fmt: skip
    for fsync in fsyncs:
        with celery_stack(folder / fsync, fsync) as api:
            for method in methods:
                report_method(api, method, jobs, fsync, parts)


def report_method(api: Api, method: str, jobs: int, fsync: str, parts: tuple[str, ...]) -> None:
    """One row of the overhead table."""
    timings = overhead(api, method, jobs)
    extra = [t["total"] - t["compute"] for t in timings]
    values = [percentile([t[k] for t in timings], 0.5) for k in ("total", "compute")]
    values += [percentile(extra, 0.5), percentile(extra, 0.95)]
    values += [percentile([t[p] for t in timings], 0.5) for p in parts]
    widths = (12, 9, 10, 7, 8, 8, 8, 8, 8)
    cells = "".join(f"{v * 1e3:>{w}.1f}" for v, w in zip(values, widths, strict=True))
    print(f"{method:<10}{fsync:>9}{cells}", flush=True)
    if method == "saliency":
        verdict = "met" if percentile(extra, 0.5) <= 0.040 else "NOT met"
        print(f"{'':<19}saliency overhead p50 target ≤ 40 ms: {verdict}")


def load(one_job: Callable[[int], None], jobs: int, clients: int) -> tuple[float, list[float]]:
    """(wall seconds, per-job latencies) of ``jobs`` jobs sent by ``clients`` threads."""

    def timed(i: int) -> float:
        begin = time.perf_counter()
        one_job(i)
        return time.perf_counter() - begin

    with ThreadPoolExecutor(clients) as pool:
        begin = time.perf_counter()
        latencies = list(pool.map(timed, range(jobs)))
        return time.perf_counter() - begin, latencies


class MinimalServer:
    """benchmarks/minimal_server.py under uvicorn on a free port."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.process = Process(
            [sys.executable, "-m", "uvicorn", "benchmarks.minimal_server:app", "--port",
             str(self.port), "--log-level", "warning"], folder / "minimal.log",
        )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(self.process.output())
            try:
                return self.client.get("/docs").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 120, "the minimal server")

    def explain(self, method: str) -> None:
        answer = self.client.post("/explain", json={"sample": SAMPLE, "method": method})
        assert answer.status_code == 200, answer.text

    def stop(self) -> None:
        self.client.close()
        self.process.kill()


def compare(folder: Path, args: argparse.Namespace) -> None:
    """ABAB rounds of our embedded service vs the minimal server; prints the table."""
    env = service_env(None, folder / "embedded", embedded_workers=args.embedded_workers)
    ours = Api(env, folder, name="embedded")
    reference = None
    try:
        reference = MinimalServer(folder)
        print(f"{'method':<10}{'round':>6}{'ours jobs/s':>12}{'ref jobs/s':>12}{'ours p50 ms':>13}"
              f"{'ref p50 ms':>12}{'ours p95 ms':>13}{'ref p95 ms':>12}", flush=True)  # fmt: skip
        summary = []
        for method in args.methods:
            for i in range(4):  # warm both: models, allocator, first-call paths
                run_job(ours.client, method, 10**6 + i)
                reference.explain(method)
            rows = []
            for r in range(args.rounds):
                a = load(lambda i, m=method, r=r: run_job(ours.client, m, r * args.load + i),
                         args.load, args.clients)  # fmt: skip
                b = load(lambda i, m=method: reference.explain(m), args.load, args.clients)
                rows.append((args.load / a[0], args.load / b[0], percentile(a[1], 0.5),
                             percentile(b[1], 0.5), percentile(a[1], 0.95),
                             percentile(b[1], 0.95)))  # fmt: skip
                ms = [v * 1000 for v in rows[-1][2:]]
                print(f"{method:<10}{r + 1:>6}{rows[-1][0]:>12.2f}{rows[-1][1]:>12.2f}"
                      + "".join(f"{v:>13.0f}" if k % 2 == 0 else f"{v:>12.0f}"
                                for k, v in enumerate(ms)), flush=True)  # fmt: skip
            throughput = statistics.median(a / b for a, b, *_ in rows)
            latency = statistics.median(row[2] / row[3] for row in rows)
            summary.append(f"{method:<10} throughput ours/ref {throughput:.2f}× (target ≥ 1.0: "
                           f"{'met' if throughput >= 1.0 else 'NOT met'}), p50 latency ours/ref "
                           f"{latency:.2f}×")  # fmt: skip
        print("\n".join(summary))
    finally:
        if reference is not None:
            reference.stop()
        ours.stop()


THREAD_CONFIGS = {  # embedded job threads; torch threads per job: the CPUs split, or fixed
    "1 job thread, CPUs split": {"embedded_workers": 1},
    "2 job threads, CPUs split": {"embedded_workers": 2},
    "2 job threads × 2 torch": {"embedded_workers": 2, "threads_per_job": 2},
}


def compare_threads(folder: Path, args: argparse.Namespace) -> None:
    """Our embedded server in each of THREAD_CONFIGS, rounds interleaved (ABCABC…); prints
    jobs/s per round and the medians."""
    apis = {}
    try:
        for i, (name, settings) in enumerate(THREAD_CONFIGS.items()):
            apis[name] = Api(service_env(None, folder / f"threads{i}", **settings), folder,
                             name=f"threads{i}")  # fmt: skip
        print(f"{'method':<10}{'round':>6}" + "".join(f"{n:>30}" for n in apis), flush=True)
        for method in args.methods:
            for api in apis.values():
                for i in range(4):
                    run_job(api.client, method, 10**6 + i)
            rates: dict[str, list[float]] = {name: [] for name in apis}
            for r in range(args.rounds):
                for name, api in apis.items():
                    wall, _ = load(lambda i, a=api, m=method, r=r: run_job(
                        a.client, m, (r + 1) * 10**5 + i), args.load, args.clients)  # fmt: skip
                    rates[name].append(args.load / wall)
                print(f"{method:<10}{r + 1:>6}" + "".join(f"{v[-1]:>30.2f}" for v in
                                                          rates.values()), flush=True)  # fmt: skip
            print(f"{method:<10}{'median':>6}" + "".join(f"{statistics.median(v):>30.2f}" for v
                                                           in rates.values()))  # fmt: skip
    finally:
        for api in apis.values():
            api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="sequential jobs for the overhead")
    parser.add_argument("--load", type=int, default=200, help="jobs per round of the load test")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--embedded-workers", type=int, default=1,
                        help="the embedded server's job threads (EXPLAINER_EMBEDDED_WORKERS, "
                        "default 1 as the service's); each job gets the CPUs // job threads "
                        "(EXPLAINER_THREADS_PER_JOB)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="ABAB: rounds of each side")
    parser.add_argument("--threads", action="store_true",
                        help="also compare the embedded server's job threads × torch threads "
                        "(--load jobs per round)")  # fmt: skip
    parser.add_argument("--methods", default="saliency,gradcam", type=lambda s: s.split(","))
    parser.add_argument("--fsync", default="everysec,always", type=lambda s: s.split(","),
                        help="Redis appendfsync settings of the overhead runs")  # fmt: skip
    parser.add_argument("--omp-passive", action="store_true",
                        help="start every server with OMP_WAIT_POLICY=PASSIVE (OpenMP threads "
                        "sleep instead of spinning after each parallel region)")  # fmt: skip
    args = parser.parse_args()
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # inherited by every server started below
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# benchmarks/service.py on CPU ({os.cpu_count()} cores), load average {load_avg} "
          f"at start; {SAMPLE} at 224², EfficientNet-Lite0; {' '.join(sys.argv[1:])}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.jobs:
            print(f"\n## Overhead: {args.jobs} sequential jobs, 1 Celery worker, real Redis, HTTP, "
                  "long poll")  # fmt: skip
            report_overhead(folder, args.methods, args.jobs, args.fsync)
        if args.load:
            print(f"\n## Embedded mode vs the minimal FastAPI + Captum server (lock), {args.load} "
                  f"jobs × {args.clients} clients per round, rounds ABAB; ours with "
                  f"{args.embedded_workers} job thread(s)")  # fmt: skip
            compare(folder, args)
        if args.threads:
            print(
                f"\n## Embedded mode, job threads × torch threads per job, jobs/s with "
                f"{args.load} jobs × {args.clients} clients per round, rounds interleaved"
            )
            compare_threads(folder, args)
    print(f"\nload average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
