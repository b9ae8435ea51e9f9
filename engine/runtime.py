"""Settings of the process the engine runs in (not of the engine itself), and the rule every
random draw follows (:func:`input_generators`).

:func:`keep_freed_memory` is applied once per process by the entry points (CLI, service, Celery
workers, benchmarks, tests) and by the first :func:`engine.explain` or :func:`engine.study`
call (:func:`apply_process_settings`); ``EXPLAINER_KEEP_FREED_MEMORY=0`` opts out.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    PyTorch's CPU tensors come from malloc, and glibc serves blocks above 32 MB with mmap and
    unmaps them on free, so every large temporary (the obfuscated batch of a mask method, an IG
    chunk) is page-faulted in afresh on the next step: on 2 CPU cores half the time went to the
    kernel. Serving them from the heap instead, and never trimming it, made IG with 64 steps 5×
    faster, SmoothGrad 1.9× and ShearletX 2.2× (EfficientNet-Lite0; benchmarks/results/README.md).
    The cost: the process keeps its peak heap until it exits.

    Applies on Linux with glibc only, unless ``EXPLAINER_KEEP_FREED_MEMORY=0``; returns whether
    it did. Idempotent.
    """
    if os.environ.get("EXPLAINER_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: leave its allocator alone
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 40), (_M_TOP_PAD, 1 << 30))
    return all(mallopt(option, value) == 1 for option, value in settings)


@functools.cache
def apply_process_settings() -> bool:
    """:func:`keep_freed_memory`, once per process: what :func:`engine.explain` and
    :func:`engine.study` call first, so the library runs as fast as the service (without it IG's
    cost grew with steps^1.27 and ×7.5 from 224² to 448², from page faults;
    benchmarks/results/scaling_cpu.txt). Returns whether the setting applies."""
    return keep_freed_memory()


def share_cores(jobs_at_once: int, threads_per_job: int | None = None) -> int:
    """Give each of ``jobs_at_once`` jobs that run side by side (the job threads of one process,
    or one Celery pool process each) its share of the CPUs as torch's intra-op threads:
    ``threads_per_job`` when given, else max(1, CPUs // jobs_at_once); an ``OMP_NUM_THREADS``
    the operator set is left alone. Call it on the thread that runs the jobs. On 2 cores, an
    embedded server's two job threads of one torch thread each served 1.24× (saliency) and
    1.35× (Grad-CAM) the jobs they served with 2 torch threads each, where four busy threads on
    two cores wait on each other (benchmarks/results/service_cpu.txt). Returns the threads per
    job."""
    import torch

    if threads_per_job is None:
        if "OMP_NUM_THREADS" in os.environ:
            return torch.get_num_threads()
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        threads_per_job = max(1, cpus // max(1, jobs_at_once))
    torch.set_num_threads(threads_per_job)
    return threads_per_job


DEFAULT_MAX_ROWS_PER_PASS = 32
REFERENCE_ROW = 3 * 224 * 224  # the row size the rows-per-pass limit is stated for
_rows_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("rows", default=None)


def max_rows_per_pass(row_elements: int = REFERENCE_ROW) -> int:
    """Input rows one forward/backward pass may hold, whatever a method's options ask for
    (``internal_batch_size``, ``batch_size``, or none: all path points or noise samples at once).

    Memory grows with the rows of a pass (about 80 MB per row for EfficientNet-Lite0 at 224² on
    the CPU), so this bounds what one request can take: ``EXPLAINER_MAX_ROWS_PER_PASS``, default
    32 (about 2.5 GB there), or less inside :func:`rows_per_pass_at_most`. The limit is for
    rows of 3 × 224² values; larger rows (``row_elements``) get proportionally fewer, at least
    one (a 1000² image: one row per pass). Smaller chunks give the same sums up to float
    rounding.
    """
    value = int(os.environ.get("EXPLAINER_MAX_ROWS_PER_PASS", DEFAULT_MAX_ROWS_PER_PASS))
    if value < 1:
        raise ValueError(f"EXPLAINER_MAX_ROWS_PER_PASS must be at least 1, got {value}")
    override = _rows_limit.get()
    rows = value if override is None else min(value, override)
    return max(1, rows * REFERENCE_ROW // max(row_elements, REFERENCE_ROW))


@contextlib.contextmanager
def rows_per_pass_at_most(rows: int) -> Iterator[None]:
    """Lower :func:`max_rows_per_pass` to ``rows`` in this thread (e.g. to rerun a job that ran
    out of memory with half the rows per pass); an enclosing lower limit stays."""
    outer = _rows_limit.get()
    token = _rows_limit.set(max(1, rows if outer is None else min(rows, outer)))
    try:
        yield
    finally:
        _rows_limit.reset(token)


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure PyTorch reports as an exception (CUDA, or a CPU allocator that
    refused; the kernel's OOM killer gives no exception at all)."""
    import torch

    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


_memory_budget: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "memory_budget", default=None
)


@contextlib.contextmanager
def memory_budget(limit_bytes: int) -> Iterator[None]:
    """Explanations in the block keep each model pass within ``limit_bytes``: ``explain``
    lowers the rows per pass to what the model's measured pass memory allows (a job's
    budget, set by the job runner)."""
    token = _memory_budget.set(limit_bytes)
    try:
        yield
    finally:
        _memory_budget.reset(token)


def current_memory_budget() -> int | None:
    return _memory_budget.get()


StopCheck = Callable[[], None]
_stop_check: contextvars.ContextVar[StopCheck | None] = contextvars.ContextVar(
    "stop_check", default=None
)


@contextlib.contextmanager
def stoppable(check: StopCheck) -> Iterator[None]:
    """Run the block with ``check`` called once per model pass of every multi-pass loop
    (:func:`checkpoint`): it raises to stop the work, e.g. when a job is cancelled or past its
    time limit, so no loop (noise tunnels, IG, metrics, mask steps) outlives its job."""
    token = _stop_check.set(check)
    try:
        yield
    finally:
        _stop_check.reset(token)


def checkpoint() -> None:
    """Called by multi-pass loops before each pass: raises what the current stop check raises
    (nothing outside :func:`stoppable`)."""
    check = _stop_check.get()
    if check is not None:
        check()


def input_generators(
    seed: int, count: int, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One random generator per input of a batch, each seeded with ``seed`` alone: input i of
    a batch gets exactly the draws it gets when explained alone with the same seed, wherever it
    sits in the batch. Every random draw of a method or metric comes from its input's generator.

    Gradient methods and the perturbation metrics draw on the CPU (the default) and move the
    draws to the input's device, so a seed gives the same draws on every device; the mask
    methods draw on the device itself (their noise is too large to copy over every step), so
    there a seed's draws differ between CPU and CUDA.
    """
    import torch

    return [torch.Generator(device=device).manual_seed(seed) for _ in range(count)]
