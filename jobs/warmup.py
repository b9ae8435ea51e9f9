"""Warm a worker before it reports ready, so that its first job costs what its tenth does.

A first job used to pay, once per process: the model's load, the plan's survey of the
architecture on the meta device (layer names and memory per pixel, seconds on a CPU), torch's
first backward (autograd's engine and the thread team of the calling thread), the readers of
samples (scikit-image's, imported on first use) and uploads, and the first PNG encode with its
colour maps. :func:`warm_up` runs each default model through the whole path of a job (saliency,
one forward and one backward pass, of a bundled sample and of an uploaded grey image at the
model's input size, with the artifacts written to a scratch folder) on the thread that runs jobs.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.artifacts import write_artifacts
from engine.data.samples import SAMPLES
from engine.explain import explain
from engine.models import cached_model
from engine.models.spec import ModelSpec
from engine.plan import plan
from jobs.pass_times import PassTimes

log = logging.getLogger(__name__)
WARM_METHOD = "saliency"  # one forward and one backward pass
SERIES_LENGTH = 64  # a series model that records no length is warmed at this many steps


def warm_inputs(spec: ModelSpec) -> tuple[Any, Any]:
    """Two inputs a job could send: a bundled sample and a mid-grey PNG upload at the model's
    input size (images), or a series of zeros twice."""
    if spec.input_kind == "image":
        height, width = spec.input_size
        upload = io.BytesIO()
        Image.new("RGB", (width, height), (128, 128, 128)).save(upload, format="PNG")
        return next(iter(SAMPLES)), upload.getvalue()
    length, features = spec.input_size
    series = np.zeros((length or SERIES_LENGTH, features), dtype=np.float32)
    return series, series


def warm_up(names: tuple[str, ...], device: str, pass_times: PassTimes | None = None) -> list[str]:
    """Load ``names`` on ``device`` and run each through a job twice: the first run pays the
    once-per-process costs, the second's seconds per pass seed ``pass_times``. Returns the
    models that ran (marked warm in ``pass_times``); one that cannot load is logged here and
    fails its jobs later with the reason."""
    started, warm = time.perf_counter(), []
    for name in names:
        try:
            loaded = cached_model(name, None, device)
            first, second = warm_inputs(loaded.spec)
            with tempfile.TemporaryDirectory() as scratch:
                write_artifacts(explain(loaded, first, WARM_METHOD, device=device), Path(scratch))
            result = explain(loaded, second, WARM_METHOD, device=device)
            if pass_times is not None:
                job = plan(loaded, WARM_METHOD)
                per_pass = result.metadata["timings"]["total_s"] / job.passes
                pass_times.record(device, name, job.size, WARM_METHOD, per_pass)
            warm.append(name)
        except Exception as error:
            log.warning("could not warm %s: %s", name, error)
    if pass_times is not None:
        try:
            pass_times.mark_warm(device, warm)
        except Exception as error:  # the store away for a moment: health lists none warm
            log.warning("warm models not recorded: %s", error)
    log.info("warmed %s on %s in %.1f s", ", ".join(warm) or "no models", device,
             time.perf_counter() - started)  # fmt: skip
    return warm
