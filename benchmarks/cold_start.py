"""The first job after start against the steady state (issue 27 item 6): fresh embedded servers
(``python -m service``), each running 10 identical saliency jobs one after another, with the
warm-up (the default) and without it (``EXPLAINER_PRELOAD_MODELS=`` : nothing loaded or run
before the first job), alternately. Prints, per server, the seconds to the first /health and
the first job over the tenth (the median of the 8th–10th): the job's ``total_s``, submit→done,
and the server process's CPU time. One intra-op thread per server (a shared machine's noise).

    .venv/bin/python -m benchmarks.cold_start --pairs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from testkit.stack import Process, free_port, service_env, wait_for

JOB = {"sample": "chelsea", "method": "saliency", "reuse": False}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def one_server(warm: bool, jobs: int) -> dict[str, float]:
    """Start a server, run ``jobs`` identical jobs, stop it; its seconds to ready and ratios."""
    with tempfile.TemporaryDirectory() as scratch:
        folder, port = Path(scratch), free_port()
        env = {**service_env(None, folder / "artifacts"), "OMP_NUM_THREADS": "1"}
        if not warm:
            env["EXPLAINER_PRELOAD_MODELS"] = ","
        started = time.monotonic()
        command = [sys.executable, "-m", "service", "--port", str(port)]
        server = Process(command, folder / "log", env)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def up() -> bool:
            try:
                return client.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(up, 180, "the server")
            ready = time.monotonic() - started
            totals, walls, cpus = [], [], []
            for _ in range(jobs):
                cpu, tick = cpu_seconds(server.proc.pid), time.monotonic()
                job = client.post("/explain", json=JOB).json()
                while (view := client.get(f"/jobs/{job['id']}", params={"wait": 20}).json())[
                    "status"
                ] not in ("succeeded", "failed"):
                    pass
                walls.append(time.monotonic() - tick)
                totals.append(view["timings"]["total_s"])
                cpus.append(max(0.01, cpu_seconds(server.proc.pid) - cpu))
        finally:
            client.close()
            server.stop()
    tenth = {name: statistics.median(xs[7:]) for name, xs in
             (("total", totals), ("wall", walls), ("cpu", cpus))}  # fmt: skip
    return {"ready": ready, "total": totals[0] / tenth["total"], "wall": walls[0] / tenth["wall"],
            "cpu": cpus[0] / tenth["cpu"], "first": walls[0], "tenth": tenth["wall"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    print(f"# cold start, embedded server, saliency on chelsea, {args.jobs} jobs per server; "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())}")  # fmt: skip
    print("| server | first /health s | first/tenth total_s | first/tenth submit→done | "
          "first/tenth server CPU | first s | tenth s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.pairs):
        for warm in (False, True):
            r = one_server(warm, args.jobs)
            print(f"| {'warm-up' if warm else 'no warm-up'} | {r['ready']:.1f} | {r['total']:.2f} "
                  f"| {r['wall']:.2f} | {r['cpu']:.2f} | {r['first']:.3f} | {r['tenth']:.3f} |",
                  flush=True)  # fmt: skip
    print(f"# load average at the end {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
