"""engine.runtime.keep_freed_memory: large freed tensors are reused without new page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
