"""The service on five hosts that share only a network (testkit/netns.py): Redis, the object
store, the API and two Celery workers, each in a network namespace of its own with its own
hostname and its own empty state directory. A model uploaded through the API runs on both
workers; a pattern set made on one worker is used by a job on the other; then the second
worker's host vanishes mid-job (its link, processes and namespace deleted) and that job
finishes on the first worker, exactly once.

Which worker is "worker 1" is decided by where the jobs land, not by name: a long blocker job
holds one worker (prefetch 1: a busy worker takes no other job), so the next job must go to the
other one. The job records' run tokens (``host/pid/random``) say which host ran what."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from testkit import netns

REASON = netns.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}")

EXPLAIN = {"model": "tiny", "sample": "chelsea", "target": 0, "reuse": False}
BLOCKER = EXPLAIN | {"method": "pixelmask", "options": {"iterations": 5000}}  # cancelled
PATTERNS = EXPLAIN | {"method": "pattern_attribution"}
VANISHING = EXPLAIN | {"method": "pixelmask", "options": {"iterations": 400}}
SETTINGS = netns.TINY_SETTINGS | {
    "preload_models": ",",  # none: the tiny model is uploaded after the workers start
    "max_model_passes": 100_000,  # the blockers' 5000 iterations (cancelled long before)
    # A dead worker's job is taken over after 5 s without a heartbeat (default 15 s): short for
    # a fast test, long enough that a run slowed by a loaded machine is not taken for dead.
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 5,
}


def downloaded(cluster: netns.Cluster, view: dict) -> dict[str, bytes]:
    """Every artifact of a finished job, through the API (which reads the object store)."""
    files = {}
    for name, url in view["artifacts"].items():
        response = cluster.client.get(url)
        assert response.status_code == 200, (name, response.text)
        files[name] = response.content
    return files


def stored(cluster: netns.Cluster) -> list[str]:
    """Every object name in the cluster's bucket."""
    assert cluster.s3 is not None
    return cluster.s3.keys()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multihost")
    with netns.explainer_cluster(folder, workers=2, **SETTINGS) as built:
        yield built


def test_two_worker_hosts_share_a_model_a_pattern_set_and_a_vanished_hosts_job(cluster):
    cluster.upload_tiny()
    assert any(key.endswith("/tiny/weights.pt") for key in stored(cluster))

    # Worker 2 is the one that takes the first blocker; worker 1 then makes the pattern set.
    blocker = cluster.submit("/explain", BLOCKER)
    worker2 = cluster.running_on(blocker)
    patterns = cluster.submit("/patterns", {"model": "tiny"})
    made = cluster.wait_done(patterns, timeout=120)
    assert made["status"] == "succeeded", made
    worker1 = cluster.host_of(patterns)
    assert {worker1, worker2} == set(cluster.workers), (worker1, worker2)
    assert any("/patterns/" in key for key in stored(cluster))  # in the store, not on worker 1

    # Worker 1 is held by a second blocker; the job that needs the set goes to worker 2.
    holder = cluster.submit("/explain", BLOCKER)
    assert cluster.running_on(holder) == worker1
    used = cluster.submit("/explain", PATTERNS)  # queued until worker 2 is free
    cluster.cancel(blocker)
    view = cluster.wait_done(used)
    assert view["status"] == "succeeded", view
    assert cluster.host_of(used) == worker2
    attribution = np.load(io.BytesIO(downloaded(cluster, view)["attribution.npy"]))
    assert attribution.shape[-2:] == (32, 32) and np.abs(attribution).sum() > 0

    # A job runs on worker 2 (worker 1 still held); worker 2's host vanishes; worker 1 is freed.
    doomed = cluster.submit("/explain", VANISHING)
    assert cluster.running_on(doomed, progress=True) == worker2
    record = cluster.record(doomed)
    assert record.status == "running" and record.attempts == 1, record
    vanished = cluster.net.vanish(cluster.workers[worker2])
    cluster.cancel(holder)  # within the 5 s before the dead run counts as lost
    view = cluster.wait_done(doomed, timeout=60)
    recovered_s = time.monotonic() - vanished
    assert view["status"] == "succeeded", view
    record = cluster.record(doomed)
    assert cluster.host_of(doomed) == worker1 and record.attempts == 2, record
    files = downloaded(cluster, view)
    assert set(files) == set(view["artifacts"]) and all(files.values())
    # One set of its objects in the store: the lost run left nothing, the rerun wrote each once.
    objects = [key.rpartition("/")[2] for key in stored(cluster) if doomed in key]
    assert sorted(objects) == sorted(view["artifacts"]), objects
    ran = f"Task explainer.explain[{doomed}] succeeded"
    assert cluster.worker_log(worker1).count(ran) == 1
    assert f"Task explainer.explain[{doomed}] received" in cluster.worker_log(worker2)
    assert ran not in cluster.worker_log(worker2)
    # Both workers ran jobs to success: the pattern set and the rerun on 1, its use on 2.
    assert {cluster.host_of(job) for job in (patterns, used, doomed)} == {worker1, worker2}
    # What the hosts wrote stayed on their private tmpfs: nothing reached the shared disk.
    assert not any(cluster.net.state.iterdir())
    print(f"host vanished: job succeeded on the other worker {recovered_s:.1f} s later")
