"""Reading and checking a submitted study before anything is stored or queued: the request, its
inputs (bundled samples, a folder the server offers, an uploaded zip, or the caller's jobs),
and every (variant, input) job by the checks ``POST /explain`` makes (method, options, target,
metrics, size, memory, cost), then the whole study's cost against its own budget. A refused
study creates nothing."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from PIL import Image
from pydantic import ValidationError

from engine.catalogue import METHODS
from engine.data import DEFAULT_MAX_PIXELS, SAMPLES, InputError, decode_image
from engine.data.archives import read_zip_entry
from engine.data.timeseries import DEFAULT_MAX_FEATURES, SERIES_SAMPLES, load_series
from engine.models import MODELS
from engine.study import StudyError, parse_variants
from jobs.artifact_store import ArtifactStore
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.studies import StudyInput
from service.errors import ApiError, clean, short
from service.schemas import study_request_model
from service.submission import (
    check_trained_set,
    metric_records,
    offered_image_set,
    parse_json,
    parse_request,
    plan_job,
    read_series_file,
    refusal_code,
    unknown,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SERIES_SUFFIXES = (".npy", ".csv")


@dataclass
class StudyInputs:
    """The study's inputs as recorded, the bytes to store for those that are not samples (by
    index), and where they came from."""

    items: list[StudyInput]
    stored: dict[int, bytes]
    source: str
    images: dict[int, tuple[int, int]] = field(default_factory=dict)  # index → (width, height)


@dataclass
class StudyPlan:
    """What the checks found: per variant its parsed request, metric records and batch size;
    the study's cost in model passes."""

    variants: list[dict[str, Any]]  # {"label", "method", "options"} (options with defaults)
    metrics: list[dict[str, Any]]
    batch_sizes: dict[str, int]  # label → inputs per batch job
    passes: int
    targets: list[int | str | None]


async def read_study_submission(request: Request, settings: Settings) -> tuple[dict, bytes | None]:
    """(JSON request, the uploaded zip or None): JSON, or multipart with the JSON field
    'request' and the zip file field 'inputs'."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return parse_json(await request.body()), None
    form = await request.form(max_files=1, max_fields=2)
    if sorted(form.keys()) != ["inputs", "request"] or not hasattr(form["inputs"], "read"):
        raise ApiError(422, "invalid_request", "multipart needs a JSON field 'request' and the "
                       "zip file field 'inputs'")  # fmt: skip
    raw = form["request"]
    payload = parse_json(raw if isinstance(raw, str) else b"")
    limit = settings.max_training_upload_bytes
    data = await form["inputs"].read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "payload_too_large", f"inputs above {limit} bytes (set by "
                       "EXPLAINER_MAX_TRAINING_UPLOAD_BYTES)")  # fmt: skip
    return payload, data


def parse_study(payload: dict, uploaded: bool) -> Any:
    """The typed request (strict JSON types, as for jobs; each variant's options by its
    method's options model), or a 422; an unknown method is named with the closest ones."""
    variants = payload.get("variants")
    for variant in variants if isinstance(variants, list) else []:
        method = variant.get("method") if isinstance(variant, dict) else None
        if isinstance(method, str) and method not in METHODS:
            raise unknown("method", method, list(METHODS))
    try:
        parsed = study_request_model().model_validate_json(json.dumps(payload), strict=True)
    except ValidationError as error:
        details = clean(error.errors())
        parts = "; ".join(f"{'.'.join(map(str, d['loc'])) or 'request'}: {d['msg']}"
                          for d in details[:5])  # fmt: skip
        raise ApiError(422, refusal_code(details), f"invalid study: {parts}", details) from None
    given = parsed.inputs
    sources = [name for name in ("samples", "folder", "jobs")
               if given is not None and getattr(given, name) is not None]  # fmt: skip
    if uploaded:
        sources.append("zip")
    if len(sources) != 1:
        raise ApiError(422, "invalid_input", "give exactly one source of inputs: "
                       "inputs.samples, inputs.folder, inputs.jobs, or a zip file 'inputs' "
                       "(multipart)")  # fmt: skip
    return parsed


def gather_inputs(
    parsed: Any, uploaded: bytes | None, settings: Settings, store: JobStore,
    artifacts: ArtifactStore, tenant: str | None,
) -> StudyInputs:  # fmt: skip
    """The study's inputs, each read and checked as POST /explain checks one (decoded images,
    series within the limits, of the model's kind)."""
    spec = MODELS.get(parsed.model)
    if spec is None:
        raise unknown("model", parsed.model, list(MODELS))
    if (reason := spec.unavailable()) is not None:
        raise ApiError(422, "model_unavailable", reason)
    series = spec.input_kind == "timeseries"
    source = parsed.inputs
    if source is not None and source.samples is not None:
        known = SERIES_SAMPLES if series else SAMPLES
        for name in source.samples:
            if name not in known:
                listed = ", ".join(known) if not series else "state:0 … state:9"
                raise ApiError(422, "unknown_sample", f"unknown sample {short(name)!r} for "
                               f"model {spec.name}; known: {listed}")  # fmt: skip
        check_count(len(source.samples), settings)
        items = [StudyInput(index=i, name=name, kind="sample", sha256="sample:" + name)
                 for i, name in enumerate(source.samples)]  # fmt: skip
        return StudyInputs(items, {}, "samples")
    if source is not None and source.folder is not None:
        named = folder_files(source.folder, settings)
        found = [(path.name, path.read_bytes()) for path in named]
        kind = "folder"
    elif source is not None and source.jobs is not None:
        found, kind = job_inputs(source.jobs, store, artifacts, tenant), "jobs"
    else:
        found, kind = zip_members(uploaded or b"", settings), "zip"
    check_count(len(found), settings)
    inputs = StudyInputs([], {}, kind)
    for index, (name, data) in enumerate(found):
        if isinstance(data, np.ndarray) or Path(name).suffix.lower() in SERIES_SUFFIXES:
            if not series:
                raise ApiError(422, "wrong_input_kind", f"{short(name)} is a series; model "
                               f"{spec.name} takes images")  # fmt: skip
            stored = series_bytes(name, data, spec.input_size[1], settings)
            inputs.items.append(StudyInput(index=index, name=name, kind="series",
                                           sha256=sha256(stored)))  # fmt: skip
        else:
            if series:
                raise ApiError(422, "wrong_input_kind", f"{short(name)} is an image; model "
                               f"{spec.name} takes time series")  # fmt: skip
            inputs.images[index] = image_size(name, data, settings)
            stored = data
            inputs.items.append(StudyInput(index=index, name=name, kind="image",
                                           sha256=sha256(stored)))  # fmt: skip
        inputs.stored[index] = stored
    return inputs


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_count(count: int, settings: Settings) -> None:
    if count > settings.max_study_inputs:
        raise ApiError(422, "limit_exceeded", f"the study has {count} inputs; this server's "
                       f"limit is {settings.max_study_inputs} "
                       "(EXPLAINER_MAX_STUDY_INPUTS)")  # fmt: skip


def folder_files(name: str, settings: Settings) -> list[Path]:
    """The image files of a folder the operator offers by name (EXPLAINER_TRAINING_SETS)."""
    _, files = offered_image_set(name, settings)
    check_count(len(files), settings)
    return files


def zip_members(data: bytes, settings: Settings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image (PNG/JPEG/WebP) or series (.npy/.csv) file of the uploaded
    zip, in the zip's order; other files are skipped. Counts and declared sizes are checked
    from the zip's directory before any entry is read (as for training zips)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ApiError(422, "invalid_images", "inputs is not a zip archive") from None
    with archive:
        suffixes = IMAGE_SUFFIXES + SERIES_SUFFIXES
        entries = [i for i in archive.infolist()
                   if not i.is_dir() and Path(i.filename).suffix.lower() in suffixes]  # fmt: skip
        if not entries:
            raise ApiError(422, "invalid_images", "inputs holds no image (PNG, JPEG, WebP) or "
                           "series (.npy, .csv) file")  # fmt: skip
        check_count(len(entries), settings)
        for info in entries:
            if info.file_size > settings.max_upload_bytes:
                raise ApiError(413, "payload_too_large", f"inputs: {short(info.filename)} is "
                               f"above {settings.max_upload_bytes} bytes")  # fmt: skip
        total = sum(info.file_size for info in entries)
        if total > settings.max_training_upload_bytes:
            raise ApiError(413, "payload_too_large", f"inputs holds {total} bytes "
                           "uncompressed; the limit is "
                           f"{settings.max_training_upload_bytes}")  # fmt: skip
        members = []
        for info in entries:
            try:
                members.append((Path(info.filename).name[:200], read_zip_entry(archive, info)))
            except InputError as error:
                raise ApiError(422, "invalid_images", f"inputs: {error}") from None
        return members


def job_inputs(
    ids: list[str], store: JobStore, artifacts: ArtifactStore, tenant: str | None
) -> list[tuple[str, bytes | np.ndarray]]:
    """The inputs of the caller's explain jobs: (name, image bytes or a series array); a
    bundled sample is taken by name (its bytes are read by the worker)."""
    found: list[tuple[str, bytes | np.ndarray]] = []
    for job_id in ids:
        record = store.get(job_id)
        if record is None or record.owner != tenant or record.kind != "explain":
            raise ApiError(422, "invalid_input", f"no job {short(job_id, 64)} of yours to take "
                           "an input from")  # fmt: skip
        source = record.input
        name = source.get("name") or f"job-{job_id[:8]}"
        if source["kind"] == "sample":
            if source["name"] in SERIES_SAMPLES:
                from engine.data.timeseries import series_sample

                found.append((name, series_sample(source["name"])[0].numpy()))
            else:
                found.append((name, _sample_png(source["name"])))
        elif source["kind"] == "series":
            with np.load(io.BytesIO(artifacts.load_input(job_id)), allow_pickle=False) as data:
                found.append((name, data["series"]))
        else:
            found.append((name, artifacts.load_input(job_id)))
    return found


def _sample_png(name: str) -> bytes:
    """A bundled photograph as PNG bytes (what the study stores for a job's sample input)."""
    from engine.data import load_sample

    buffer = io.BytesIO()
    Image.fromarray(load_sample(name)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_size(name: str, data: bytes, settings: Settings) -> tuple[int, int]:
    """(width, height) of an uploaded image, decoded and checked as POST /explain does."""
    try:
        image = decode_image(data, max_pixels=min(settings.max_pixels, DEFAULT_MAX_PIXELS),
                             max_bytes=settings.max_upload_bytes)  # fmt: skip
    except InputError as error:
        status = 413 if "limit" in str(error) else 422
        raise ApiError(status, "invalid_image", f"{short(name)}: {error}") from None
    return image.size


def series_bytes(name: str, data: bytes | np.ndarray, features: int, settings: Settings) -> bytes:
    """A series checked against the limits and the model's features, stored as .npy."""
    limits = {"max_length": settings.max_series_length,
              "max_features": min(settings.max_series_features, DEFAULT_MAX_FEATURES)}  # fmt: skip
    try:
        raw = data if isinstance(data, np.ndarray) else read_series_file(data, **limits)
        series = load_series(raw, **limits)
    except InputError as error:
        status = 413 if "limits" in str(error) else 422
        raise ApiError(status, "invalid_series", f"{short(name)}: {error}") from None
    if series.shape[1] != features:
        raise ApiError(422, "invalid_series", f"{short(name)}: the model takes {features} "
                       f"features per time step, the series has {series.shape[1]}")  # fmt: skip
    buffer = io.BytesIO()
    np.save(buffer, series.numpy(), allow_pickle=False)
    return buffer.getvalue()


def variant_labels(payload: dict) -> list[str]:
    """Each variant's label (given, or made from its method and the options as given: the
    request is valid by now), distinct."""
    try:
        return [variant.label for variant in parse_variants(payload["variants"])]
    except StudyError as error:  # the schema checked the rest: only the labels can clash
        raise ApiError(422, "duplicate_label", str(error)) from None


def study_targets(parsed: Any, count: int) -> list[int | str | None]:
    """One target per input: None (predicted) where none is given."""
    given = parsed.targets
    if isinstance(given, list):
        if len(given) != count:
            raise ApiError(422, "invalid_target", f"{len(given)} targets for {count} inputs")
        targets = list(given)
    else:
        targets = [given] * count
    return [None if t == "predicted" else t for t in targets]  # each checked by its plan


def plan_study(
    parsed: Any, labels: list[str], inputs: StudyInputs, settings: Settings, tenant: str | None
) -> StudyPlan:
    """Every (variant, input) job (variants labelled ``labels``) planned as POST /explain plans
    one (:func:`service.submission.plan_job`: the engine's pre-flight plan and the server's
    rules); the study's cost, the sum of its jobs' model passes, within
    EXPLAINER_MAX_STUDY_PASSES; each variant's batch size: study_batch_size inputs, fewer where
    their working sets would not fit the job memory budget together."""
    targets = study_targets(parsed, len(inputs.items))
    variants, batch_sizes, passes, metrics = [], {}, 0, []
    budget = settings.max_job_memory_mb * 2**20
    for label, variant in zip(labels, parsed.variants, strict=True):
        request = parse_request({"model": parsed.model, "method": variant.method,
                                 "options": variant.options.model_dump(mode="json"),
                                 "metrics": parsed.metrics, "seed": parsed.seed,
                                 "resize": parsed.resize})  # fmt: skip
        working_set = 0
        for item, target in zip(inputs.items, targets, strict=True):
            size = inputs.images.get(item.index)
            info = {"size": list(size)} if size is not None else {}
            try:
                job = plan_job(request.model_copy(update={"target": target}), info, settings)
            except ApiError as error:
                error.message = f"variant {label}, input {short(item.name)}: {error.message}"
                raise
            passes += job.passes
            working_set = max(working_set, job.working_set_bytes)
        metrics = metric_records(job.metrics)
        check_trained_set(request, tenant)
        fits = budget // working_set if working_set else settings.study_batch_size
        batch_sizes[label] = max(1, min(settings.study_batch_size, fits))
        variants.append({"label": label, "method": variant.method,
                         "options": request.options.model_dump(mode="json")})  # fmt: skip
    if passes > settings.max_study_passes:
        raise ApiError(422, "limit_exceeded", f"this study needs about {passes} model passes "
                       f"({len(inputs.items)} inputs × {len(variants)} variants with their "
                       f"metrics); this server's limit is {settings.max_study_passes} per study "
                       "(EXPLAINER_MAX_STUDY_PASSES): fewer inputs or variants, or lower steps, "
                       "samples or iterations")  # fmt: skip
    return StudyPlan(variants, metrics, batch_sizes, passes, targets)
