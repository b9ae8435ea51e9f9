"""Studies: one model, a set of inputs, method variants and metrics, run by the workers as
**batch jobs** and aggregated into a report.

A study is a :class:`StudyRecord` kept in the job store beside the jobs (same expiry) plus one
ordinary :class:`~jobs.records.JobRecord` of kind ``study_batch`` per (variant, chunk of
inputs). Being ordinary jobs, the batches get claims, heartbeats, the run again of a dead
worker's batch, cancel, the queue and the embedded dispatcher as every job does. A batch runs
one ``engine.explain`` call on its inputs (a target per input) and writes its rows
(``engine.study.score_rows``) as one artifact, ``rows.json``, with each input's overlay and
attribution (``<index>_overlay.png``, ``<index>_attribution.npy``); a batch that ran twice (its
first worker killed) publishes one set of files, so no row is counted twice.

When the last batch has finished, whoever sees it first (the runner after each batch, the API
when it shows the study) builds the report from the rows of the batches that succeeded:
``scores.csv``, ``summary.json``, ``table.md``, ``<metric>.png`` (``engine.study.write_report``)
and ``study.zip`` (those and every input's overlay and attribution), published under the
study's id. Building it twice publishes once (the artifact store keeps the first
``summary.json`` and what came with it), so two finishers racing is harmless.

The study's status is read from its batches: queued until one starts, running until all have
finished and the report is written, then cancelled (cancel asked), failed (no batch succeeded)
or succeeded (some batches may have failed: ``errors`` names them).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
import zipfile
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from engine.artifacts import write_artifacts
from engine.data.timeseries import SERIES_SAMPLES, series_sample
from engine.explain import explain
from engine.study import Variant, score_rows, summarize, write_report
from jobs.artifact_store import ArtifactStore
from jobs.records import TERMINAL, JobRecord, JobStatus, new_job_id
from jobs.store import JobStore
from jobs.training_jobs import set_extras

log = logging.getLogger(__name__)
ROWS = "rows.json"  # a batch's rows, one artifact written whole
INPUT_FILES = ("overlay.png", "series.png", "attribution.npy")  # what a batch keeps of each
# input: its picture (an image's overlay, a series' plot) and its attribution
REPORT_SUMMARY = "summary.json"
BUNDLE = "study.zip"
Source = Literal["samples", "folder", "zip", "jobs"]


class StudyInput(BaseModel):
    """One input of a study: a bundled sample by name, or the bytes stored in the study's
    input archive under ``str(index)`` (an image file, or a series as .npy)."""

    index: int
    name: str
    kind: Literal["sample", "image", "series"]
    sha256: str


class StudyBatch(BaseModel):
    """One batch job: a variant (by label) on some of the study's inputs (by index)."""

    id: str
    variant: str
    inputs: list[int]


class StudyRecord(BaseModel):
    id: str
    owner: str | None = None  # the submitting API key's tenant id, as for jobs
    created_at: float
    finished_at: float | None = None  # when the report was written
    model: str
    variants: list[dict[str, Any]]  # {"label", "method", "options"}, in the study's order
    metrics: list[str | dict[str, Any]] = []
    source: Source
    inputs: list[StudyInput]
    targets: list[int | str | None]  # one per input; None: the predicted class
    seed: int = 0
    resize: str = "center_crop"
    passes: int = 0  # the study's cost in model passes, as checked at submit
    batches: list[StudyBatch]
    report: list[str] = []  # the report's artifact names, once written


def new_study_id() -> str:
    return new_job_id()  # the same form: the artifact store keeps and sweeps it like a job's


def study_key(study_id: str) -> str:
    return f"study:{study_id}"


def owner_list(owner: str | None) -> str:
    return f"studies:{owner or '-'}"


def save_study(store: JobStore, study: StudyRecord) -> None:
    store.put_document(study_key(study.id), study.model_dump_json())


def load_study(store: JobStore, study_id: str) -> StudyRecord | None:
    text = store.document(study_key(study_id))
    return StudyRecord.model_validate_json(text) if text else None


def recent_studies(store: JobStore, owner: str | None, limit: int) -> list[StudyRecord]:
    """The owner's newest studies that have not expired, newest first."""
    ids = store.list_newest(owner_list(owner), limit)
    studies = [load_study(store, study_id) for study_id in ids]
    gone = [study_id for study_id, study in zip(ids, studies, strict=True) if study is None]
    if gone:
        store.list_remove(owner_list(owner), gone)
    return [study for study in studies if study is not None]


def chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]


def batch_record(study: StudyRecord, batch: StudyBatch) -> JobRecord:
    """The job record of one batch: what the runner needs without reading the study."""
    variant = next(v for v in study.variants if v["label"] == batch.variant)
    inputs = [study.inputs[i] for i in batch.inputs]
    return JobRecord(
        id=batch.id, kind="study_batch", created_at=study.created_at, model=study.model,
        method=variant["method"], options=variant["options"], seed=study.seed,
        metrics=study.metrics, content_hash="", owner=study.owner,
        input={"kind": "study", "study": study.id, "variant": batch.variant,
               "resize": study.resize, "inputs": [i.model_dump() for i in inputs],
               "targets": [study.targets[i] for i in batch.inputs]},
    )  # fmt: skip


def inputs_archive(entries: dict[int, bytes]) -> bytes:
    """What a study stores for inputs that are not bundled samples: one zip, an entry per
    input named by its index, holding the image file or the series (.npy) as it came."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, data in sorted(entries.items()):
            archive.writestr(str(index), data)
    return buffer.getvalue()


def batch_inputs(record: JobRecord, artifacts: ArtifactStore) -> list[Any]:
    """What ``explain`` takes for each input of a batch: a sample's name (a bundled series:
    its array), the image's bytes, or the series array."""
    inputs = [StudyInput.model_validate(i) for i in record.input["inputs"]]
    archive = None
    if any(i.kind != "sample" for i in inputs):
        archive = zipfile.ZipFile(io.BytesIO(artifacts.load_input(record.input["study"])))
    loaded: list[Any] = []
    for item in inputs:
        if item.kind == "sample":
            in_series = item.name in SERIES_SAMPLES
            loaded.append(series_sample(item.name)[0].numpy() if in_series else item.name)
        elif item.kind == "image":
            loaded.append(archive.read(str(item.index)))
        else:
            loaded.append(np.load(io.BytesIO(archive.read(str(item.index))), allow_pickle=False))
    return loaded


def run_batch(
    record: JobRecord, artifacts: ArtifactStore, device: str, reporter: Any
) -> dict[str, Any]:
    """Explain a batch's inputs with its variant in one ``explain`` call, score its rows and
    publish ``rows.json`` with each input's overlay and attribution; the record fields of a
    success (jobs.runner's WORK)."""
    source = record.input
    inputs = [StudyInput.model_validate(i) for i in source["inputs"]]
    result = explain(
        record.model, batch_inputs(record, artifacts), record.method, record.options,
        target=source["targets"], seed=record.seed, device=device, resize=source["resize"],
        progress=reporter, metrics=record.metrics, extras=set_extras(record.owner),
    )  # fmt: skip
    variant = Variant(source["variant"], record.method, record.options)
    rows = score_rows(result, variant, [(i.index, i.name) for i in inputs])
    staging = artifacts.staging_dir(record.id, record.attempts)
    try:
        for position, item in enumerate(inputs):
            folder = staging / f".input-{position}"
            written = write_artifacts(result, folder, position)
            for name in INPUT_FILES:
                if name in written:  # an image has no series.png, a series no overlay.png
                    written[name].rename(staging / f"{item.index}_{name}")
            shutil.rmtree(folder)
        (staging / ROWS).write_text(json.dumps(rows, allow_nan=False))
        summary = {"study": source["study"], "variant": variant.label,
                   "inputs": [i.index for i in inputs], "rows": len(rows),
                   "timings": result.metadata["timings"]}  # fmt: skip
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))  # published last
        names = sorted(p.name for p in staging.iterdir())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    artifacts.publish(record.id, staging)
    return {"scores": {"rows": len(rows)}, "artifacts": names,
            "timings": result.metadata["timings"]}  # fmt: skip


def batch_rows(artifacts: ArtifactStore, batch_id: str) -> list[dict[str, Any]]:
    chunks_ = artifacts.stream(batch_id, ROWS)
    return json.loads(b"".join(chunks_)) if chunks_ is not None else []


def read_batches(store: JobStore, study: StudyRecord) -> list[JobRecord | None]:
    return [store.get(batch.id) for batch in study.batches]


def labels(study: StudyRecord) -> list[str]:
    return [v["label"] for v in study.variants]


def rows_of(
    study: StudyRecord, batches: list[JobRecord | None], artifacts: ArtifactStore
) -> list[dict[str, Any]]:
    """The rows of the batches that succeeded, by variant in the study's order, then input."""
    rows = []
    for batch, record in zip(study.batches, batches, strict=True):
        if record is not None and record.status == "succeeded":
            rows.extend(batch_rows(artifacts, batch.id))
    order = {label: position for position, label in enumerate(labels(study))}
    return sorted(rows, key=lambda r: (order[r["variant"]], r["input_index"]))


def cancel_requested(store: JobStore, study_id: str) -> bool:
    return store.document(f"study-cancel:{study_id}") is not None


def status_of(store: JobStore, study: StudyRecord, batches: list[JobRecord | None]) -> JobStatus:
    """queued (no batch started), running (batches or the report to go), then cancelled,
    failed (no batch succeeded) or succeeded. A batch record that expired counts as failed."""
    states = [b.status if b is not None else "failed" for b in batches]
    if not all(s in TERMINAL for s in states) or study.finished_at is None:
        started = any(s != "queued" or (b is not None and b.attempts) for s, b in
                      zip(states, batches, strict=True))  # fmt: skip
        return "running" if started else "queued"
    if cancel_requested(store, study.id) and "cancelled" in states:
        return "cancelled"
    return "succeeded" if "succeeded" in states else "failed"


def errors_of(study: StudyRecord, batches: list[JobRecord | None]) -> list[dict[str, Any]]:
    """{variant, inputs (names), message} of each batch that failed."""
    errors = []
    for batch, record in zip(study.batches, batches, strict=True):
        if record is None or record.status == "failed":
            message = record.error if record is not None else "its job record expired"
            errors.append({"variant": batch.variant, "message": message or "failed",
                           "inputs": [study.inputs[i].name for i in batch.inputs]})  # fmt: skip
    return errors


def finish_if_done(store: JobStore, artifacts: ArtifactStore, study_id: str) -> bool:
    """Build and publish the study's report if every batch has finished and it has none yet;
    returns whether the study has its report. Safe to call any number of times, from any
    process (the first ``summary.json`` published wins)."""
    study = load_study(store, study_id)
    if study is None:
        return False
    if study.finished_at is not None:
        return True
    batches = read_batches(store, study)
    if any(b is not None and b.status not in TERMINAL for b in batches):
        return False
    rows = rows_of(study, batches, artifacts)
    staging = artifacts.staging_dir(study.id, threading.get_ident())  # one per finisher
    try:
        names = write_study_report(study, batches, rows, artifacts, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    artifacts.publish(study.id, staging)
    study.report, study.finished_at = names, time.time()
    save_study(store, study)
    return True


def write_study_report(
    study: StudyRecord, batches: list[JobRecord | None], rows: list[dict[str, Any]],
    artifacts: ArtifactStore, staging: Any,
) -> list[str]:  # fmt: skip
    """The report's files in ``staging``: write_report's (the files ``python -m engine study``
    writes; a study without rows has a header-only scores.csv) and study.zip (them,
    study.json, and each input's overlay and attribution as
    ``<variant>/<index>_<input name>_<file>``); returns their names."""
    files = write_report(rows, staging, variants=labels(study))
    record = study.model_dump(exclude={"owner", "report", "finished_at"})
    with zipfile.ZipFile(staging / BUNDLE, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("study.json", json.dumps(record, indent=2))
        for name, path in sorted(files.items()):
            bundle.write(path, name)
        for batch, job in zip(study.batches, batches, strict=True):
            if job is None or job.status != "succeeded":
                continue
            folder = batch.variant.replace("/", "_")
            for index in batch.inputs:
                stem = study.inputs[index].name.replace("/", "_")
                for part in INPUT_FILES:
                    chunks_ = artifacts.stream(batch.id, f"{index}_{part}")
                    if chunks_ is not None:
                        bundle.writestr(f"{folder}/{index}_{stem}_{part}", b"".join(chunks_))
    return sorted([*files, BUNDLE])


def cancel_study(store: JobStore, study: StudyRecord) -> list[str]:
    """Cancel what has not finished: queued batches never run, running ones stop at their
    next step. Returns the ids of the batches asked to stop."""
    store.put_document(f"study-cancel:{study.id}", "1")
    asked = []
    for batch, record in zip(study.batches, read_batches(store, study), strict=True):
        if record is not None and record.status not in TERMINAL:
            store.cancel(batch.id)
            asked.append(batch.id)
    return asked


def study_summary(
    study: StudyRecord, batches: list[JobRecord | None], artifacts: ArtifactStore
) -> dict[str, Any]:
    """summarize() of the rows so far (the published summary.json once the report exists)."""
    if REPORT_SUMMARY in study.report:
        chunks_ = artifacts.stream(study.id, REPORT_SUMMARY)
        if chunks_ is not None:
            return json.loads(b"".join(chunks_))
    return summarize(rows_of(study, batches, artifacts), labels(study))
