"""Service overhead: submit→done time minus the engine's own compute time, and submission
throughput, with a real redis-server, one real Celery worker and the API over HTTP.

    python -m benchmarks.service [--jobs 40] [--burst 200]

Overhead = (time from POST /explain to the first GET /jobs/{id} that shows 'succeeded') −
(the engine's `total_s` for that job). It includes HTTP, Redis, Celery dispatch, the job record
updates, writing the artifacts (PNG encoding) and the polling granularity (2 ms).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testkit.stack import Api, distributed_stack


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="sequential small jobs timed")
    parser.add_argument("--burst", type=int, default=200, help="submissions for throughput")
    parser.add_argument("--method", default="saliency")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, distributed_stack(Path(tmp)) as api:
        run(api, args)


def run(api: Api, args) -> None:
    client = api.client
    warm = client.post("/explain", json={"sample": "chelsea", "method": args.method, "seed": 10**6})
    api.wait_done(warm.json()["id"])
    latencies, computes, overheads = [], [], []
    for i in range(args.jobs):
        request = {"sample": "chelsea", "method": args.method, "seed": i, "reuse": False}
        start = time.perf_counter()
        job = client.post("/explain", json=request).json()
        while True:
            view = client.get(f"/jobs/{job['id']}").json()
            if view["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        assert view["status"] == "succeeded", view
        compute = view["timings"]["total_s"]
        latencies.append(elapsed)
        computes.append(compute)
        overheads.append(elapsed - compute)

    def submit(i: int) -> float:
        begin = time.perf_counter()
        response = client.post(
            "/explain", json={"sample": "coffee", "method": args.method, "seed": 10_000 + i}
        )
        assert response.status_code == 202, response.text
        return time.perf_counter() - begin

    with ThreadPoolExecutor(8) as pool:
        begin = time.perf_counter()
        submit_times = list(pool.map(submit, range(args.burst)))
        burst_s = time.perf_counter() - begin

    ms = 1000
    print(f"# {args.jobs} sequential '{args.method}' jobs on chelsea, 1 worker, real Redis, HTTP")
    print(f"{'measure':<34}{'p50 ms':>10}{'p95 ms':>10}")
    for name, values in [
        ("submit→done", latencies),
        ("engine compute (explain total_s)", computes),
        ("overhead = submit→done − compute", overheads),
        ("POST /explain (burst, 8 clients)", submit_times),
    ]:
        print(
            f"{name:<34}{percentile(values, 0.5) * ms:>10.1f}{percentile(values, 0.95) * ms:>10.1f}"
        )
    rate = args.burst / burst_s
    print(f"submission throughput: {rate:.0f} jobs/s ({args.burst} in {burst_s:.2f} s)")
    verdict = "met" if statistics.median(overheads) <= 0.05 else "NOT met"
    print(f"overhead p50 target ≤ 50 ms: {verdict}")


if __name__ == "__main__":
    main()
