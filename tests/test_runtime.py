"""engine.runtime: large freed tensors are reused without new page faults (keep_freed_memory);
no forward/backward pass holds more rows than the process allows (max_rows_per_pass) or the
job's memory budget; every multi-pass loop stops at the job's stop check (stoppable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from engine import explain
from engine.catalogue import get_method
from engine.data import load_sample
from engine.models import MODELS, row_bytes
from engine.models.inspection import _NewBytes, pass_bytes
from engine.plan import working_set_bytes
from engine.runtime import (
    max_rows_per_pass,
    memory_budget,
    rows_per_pass_at_most,
    share_cores,
    stoppable,
)

CHILD = """
import json, resource
from engine.runtime import keep_freed_memory
applied = keep_freed_memory()
import torch
for warm_up in range(3):  # 200 MB, freed at once (the heap settles within two steps)
    torch.empty(50_000_000).fill_(1.0)
    small = [torch.zeros(100) for _ in range(10)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(6):  # a loop's large temporaries, with small allocations in between
    torch.empty(50_000_000).fill_(float(step))
    small = [torch.zeros(100) for _ in range(10)]
print(json.dumps([applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


# A library user's process: no entry point ran keep_freed_memory; engine.explain applies it.
EXPLAIN_CHILD = CHILD.replace(
    """from engine.runtime import keep_freed_memory
applied = keep_freed_memory()
import torch
""",
    """import torch
from torch import nn
from engine import explain
from engine.runtime import apply_process_settings
net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
explain(net, torch.rand(1, 3, 8, 8), "saliency", resize="none")
applied = apply_process_settings.cache_info().currsize == 1 and apply_process_settings()
""",
)


def faults_of_repeated_large_tensors(keep: str, child: str = CHILD) -> tuple[bool, int]:
    env = {**os.environ, "EXPLAINER_KEEP_FREED_MEMORY": keep}
    output = subprocess.run([sys.executable, "-c", child], env=env, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    applied, faults = json.loads(output.strip().splitlines()[-1])
    return applied, faults


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = faults_of_repeated_large_tensors("1")
    applied_off, faults_off = faults_of_repeated_large_tensors("0")
    assert applied and not applied_off
    assert faults_off > 6 * 40_000  # 200 MB of 4 KiB pages faulted in at every step
    assert faults < faults_off / 2


def test_engine_explain_applies_the_setting_once_in_a_library_users_process():
    applied, faults = faults_of_repeated_large_tensors("1", EXPLAIN_CHILD)
    applied_off, faults_off = faults_of_repeated_large_tensors("0", EXPLAIN_CHILD)
    assert applied and not applied_off
    assert faults_off > 6 * 40_000
    assert faults < faults_off / 2


def test_jobs_that_run_at_once_share_the_cpus(monkeypatch):
    """CPUs // jobs threads each (at least one); an explicit count wins; an OMP_NUM_THREADS the
    operator set is left alone. The services' jobs record theirs (tests/test_thin_service.py)."""
    before, cpus = torch.get_num_threads(), len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert share_cores(1) == cpus == torch.get_num_threads()
        assert share_cores(2) == max(1, cpus // 2) == torch.get_num_threads()
        assert share_cores(4 * cpus) == 1 == torch.get_num_threads()
        assert share_cores(1, threads_per_job=3) == 3 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share_cores(3 * cpus) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_no_pass_holds_more_rows_than_the_process_allows(lite0, monkeypatch):
    """IG with 100 steps and no internal_batch_size (all rows at once, as asked) runs in passes
    of at most EXPLAINER_MAX_ROWS_PER_PASS rows, and gives what one pass gives."""
    rows = []
    hook = lite0.module.register_forward_pre_hook(lambda _, inputs: rows.append(len(inputs[0])))
    options = {"steps": 100, "internal_batch_size": None}
    try:
        monkeypatch.setenv("EXPLAINER_MAX_ROWS_PER_PASS", "1000")
        whole = explain(lite0, "chelsea", "integrated_gradients", options).attribution
        assert max(rows) == 100
        rows.clear()
        monkeypatch.setenv("EXPLAINER_MAX_ROWS_PER_PASS", "16")
        chunked = explain(lite0, "chelsea", "integrated_gradients", options).attribution
    finally:
        hook.remove()
    assert max(rows) == 16
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-7)


def test_larger_rows_get_fewer_rows_per_pass(lite0, monkeypatch):
    """The limit is for 224² rows: IG on chelsea kept at 451×300 (resize='none', 2.7× the
    values per row) runs 32 // 2.7 = 11 rows a pass, and an override halves the limit."""
    monkeypatch.setenv("EXPLAINER_MAX_ROWS_PER_PASS", "32")
    rows = []
    hook = lite0.module.register_forward_pre_hook(lambda _, inputs: rows.append(len(inputs[0])))
    try:
        explain(lite0, "chelsea", "integrated_gradients", {"steps": 24}, resize="none")
    finally:
        hook.remove()
    image = load_sample("chelsea")
    expected = 32 * 3 * 224 * 224 // (3 * image.shape[0] * image.shape[1])
    assert max(rows) == expected == 11
    assert max_rows_per_pass(3 * 1000 * 1000) == 1 and max_rows_per_pass(3 * 8 * 8) == 32
    with rows_per_pass_at_most(16):
        assert max_rows_per_pass() == 16 and max_rows_per_pass(3 * 448 * 448) == 4
    assert max_rows_per_pass() == 32


class Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("method", "options", "metrics"),
    [
        # IG inside a noise tunnel: one inner call of 40 path points × 4 samples
        ("integrated_gradients", {"steps": 40, "smoothing": {"samples": 4}}, None),
        ("saliency", {}, ["degradation"]),  # a metric's hundreds of perturbed passes
        ("pixelmask", {"iterations": 50, "image_size": 64, "noise_samples": 2}, None),
        ("scorecam", {"batch_size": 8}, None),  # masked copies, channel by channel
    ],
)
def test_every_multi_pass_loop_stops_at_the_jobs_stop_check(lite0, method, options, metrics):
    """The stop check runs before each model pass of every loop: a check that stops the work
    at its 3rd call ends explain() there (before, a method inside a noise tunnel, a metric's
    loop or a CAM's channel loop never looked at cancel or the time limit)."""
    calls = []

    def check():
        calls.append(True)
        if len(calls) == 3:
            raise Stop

    with stoppable(check), pytest.raises(Stop):
        explain(lite0, "chelsea", method, options, metrics=metrics)
    assert len(calls) == 3


def test_a_pass_is_measured_the_same_on_the_meta_device_and_the_cpu(lite0):
    """pass_bytes: the bytes one forward+backward allocates, counted from the operators (views
    excluded); the meta device (shapes only) agrees with the CPU within 10 %."""
    on_cpu = pass_bytes(lite0.module, torch.rand(1, 3, 224, 224))
    assert 60e6 < on_cpu < 100e6  # 79 MB: 80 MB per row, as max_rows_per_pass states
    assert row_bytes(MODELS["efficientnet_lite0"], 224, 224) == pytest.approx(on_cpu, rel=0.1)
    assert row_bytes(MODELS["efficientnet_lite0"], 448, 448) == pytest.approx(4 * on_cpu, 0.1)


def test_the_memory_budget_lowers_the_rows_per_pass(lite0, monkeypatch):
    """A 400 MB budget: IG on Lite0 at 224² runs 5 rows a pass (79 MB each), not 32."""
    monkeypatch.setenv("EXPLAINER_MAX_ROWS_PER_PASS", "32")
    rows = []
    hook = lite0.module.register_forward_pre_hook(lambda _, inputs: rows.append(len(inputs[0])))
    try:
        with memory_budget(400 * 2**20):
            explain(lite0, "chelsea", "integrated_gradients", {"steps": 24})
    finally:
        hook.remove()
    per_row = row_bytes(MODELS["efficientnet_lite0"], 224, 224)
    assert max(rows) == 400 * 2**20 // per_row == 5, (rows, per_row)


@pytest.mark.parametrize(("method", "size"), [("pixelmask", 128), ("waveletx", 128)])
def test_the_mask_working_set_estimate_is_near_the_measured_peak(lite0, method, size):
    """The submit check's estimate for a mask method (its tensors + its noise samples' model
    passes) against the peak of what explain() allocates: within 0.8–1.5× (ShearletX at 256²
    to 1024² is in benchmarks/memory.py)."""
    options = {"image_size": size, "noise_samples": 4, "iterations": 2}
    estimate = working_set_bytes(MODELS["efficientnet_lite0"],
                                 get_method(method).parse_options(options), size, size)  # fmt: skip
    with _NewBytes() as counter:
        explain(lite0, "chelsea", method, options)
    assert 0.8 < estimate / counter.peak < 1.5, (estimate, counter.peak)


def test_metric_passes_hold_no_more_rows_than_the_process_allows(lite0, monkeypatch):
    """The metrics' perturbed images go through the model in passes of at most the rows per
    pass too (a probe found cp_startgrad with 256 noise samples passing all 256 at once, 4.6 GB
    at 224², and faithfulness and degradation 64 and 128 rows, whatever the budget)."""
    monkeypatch.setenv("EXPLAINER_MAX_ROWS_PER_PASS", "8")
    rows = []
    hook = lite0.module.register_forward_pre_hook(lambda _, inputs: rows.append(len(inputs[0])))
    metrics = [{"name": "cp_startgrad", "noise_samples": 24},
               {"name": "faithfulness", "steps": 6, "noise_samples": 2},
               {"name": "degradation", "patch": 32}]  # fmt: skip
    try:
        explain(lite0, "chelsea", "saliency", metrics=metrics)
    finally:
        hook.remove()
    assert len(rows) > 10 and max(rows) == 8, rows
