"""engine.runtime: large freed tensors are reused without new page faults (keep_freed_memory);
no forward/backward pass holds more rows than the process allows (max_rows_per_pass)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from engine import explain
from engine.data import load_sample
from engine.runtime import max_rows_per_pass, rows_per_pass_at_most

CHILD = """
import json, resource
from engine.runtime import keep_freed_memory
applied = keep_freed_memory()
import torch
torch.empty(50_000_000).fill_(1.0)  # 200 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(6):  # a loop's large temporaries, with small allocations in between
    torch.empty(50_000_000).fill_(float(step))
    small = [torch.zeros(100) for _ in range(10)]
print(json.dumps([applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


def faults_of_repeated_large_tensors(keep: str) -> tuple[bool, int]:
    env = {**os.environ, "EXPLAINER_KEEP_FREED_MEMORY": keep}
    output = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    applied, faults = json.loads(output.strip().splitlines()[-1])
    return applied, faults


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = faults_of_repeated_large_tensors("1")
    applied_off, faults_off = faults_of_repeated_large_tensors("0")
    assert applied and not applied_off
    assert faults_off > 6 * 40_000  # 200 MB of 4 KiB pages faulted in at every step
    assert faults < faults_off / 2


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
