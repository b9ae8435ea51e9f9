"""Training jobs: the pattern sets that PatternNet, PatternAttribution and Pattern-Guided IG need,
and the GAD support networks of a class pair. A job's images are stored with it (an uploaded
zip, decoded here on the worker, or ``.npz`` arrays of a folder the server offers), or it takes
the bundled photographs. The result goes to the engine cache (``Settings.cache_path``) that the
API and every worker share, with a small JSON note beside it that ``GET /patterns`` and
``GET /support-sets`` list.

Tenancy: a set belongs to a *scope*, a folder of the cache. A tenant's (API key's) sets are in
``tenants/<tenant>/``; the shared scope is the cache's top level, where sets made with an admin
key, by the operator's ``python -m engine estimate-patterns`` / ``train-gad``, or on a server
without API keys live. A tenant uses its own sets first, then the shared ones (read-only to it);
it never sees or uses another tenant's. :func:`usable_folders` is that rule; the submit check,
the listings, ``GET /models`` and the worker all ask it.

With an S3 store (``EXPLAINER_STORE_URL``) the sets are objects ``cache/<scope>/...``; each
process's cache folder mirrors them (:func:`share_trained_sets`): a set is uploaded when made and
downloaded by every other process when it first needs the sets (or when the set's ETag changed).
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.addons import SET_FOLDERS
from engine.addons.gad.support import (
    default_support_path,
    saved_support_sets,
    train_support_set,
)
from engine.addons.pattern import default_pattern_path, estimate_patterns
from engine.data import (
    InputError,
    decode_image,
    load_image,
    open_image,
    read_zip_entry,
    reference_set,
)
from engine.method import ProgressFn
from engine.models import cached_model, model_lock, prepared
from engine.models.spec import model_fingerprint
from engine.runtime import checkpoint
from engine.storage import cache_dir
from jobs.artifact_store import ArtifactStore
from jobs.objects import Mirror, ObjectStore, StoreUnavailable
from jobs.records import JobRecord

log = logging.getLogger(__name__)
BATCH = 16
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # the files of a zip that are images
TENANT = re.compile(r"[0-9a-f]{32}")  # service.deps.require_key: a digest of the API key
NEEDS = {"patterns": "patterns", "support_set": "gad"}  # trained set → its folder in a scope
CACHE_PREFIX = "cache/"  # the engine cache's objects in the object store


_shared_sets: list[Mirror] = []  # this process's mirror of the store's trained sets, if any


def share_trained_sets(objects: ObjectStore) -> None:
    """Keep this process's engine cache folder in step with the trained sets of ``objects``
    (the objects ``cache/...``; an S3 bucket: sets made on other hosts are downloaded when
    their ETag changes, sets made here uploaded). A local store: the folder is shared as is."""
    _shared_sets[:] = [objects.mirror(CACHE_PREFIX, cache_dir(), exclusive=False)]


def pull_trained_sets() -> None:
    """Download the trained sets that changed in the store (at most every half second); with
    the store away, the sets this process holds are used."""
    for mirror in _shared_sets:
        try:
            mirror.pull()
        except StoreUnavailable as error:
            log.warning("trained sets not refreshed: %s", error)


def push_trained_set(path: Path) -> None:
    """Upload a set just made here, then its note (a set is listed only with its note)."""
    for mirror in _shared_sets:
        mirror.push([path, path.with_suffix(".json")])


def set_folder(scope: str | None) -> Path:
    """The cache folder of a scope's trained sets: a tenant's own, or the shared one (None)."""
    if scope is None:
        return cache_dir()
    if not TENANT.fullmatch(scope):
        raise ValueError(f"not a tenant id: {scope[:40]!r}")
    return cache_dir("tenants", scope)


def usable_folders(tenant: str | None) -> tuple[Path, ...]:
    """The folders whose sets ``tenant`` may use, in order of preference: its own, then the
    shared one (on a server without API keys, the one anonymous tenant owns the shared one)."""
    pull_trained_sets()
    return (set_folder(None),) if tenant is None else (set_folder(tenant), set_folder(None))


def set_extras(tenant: str | None) -> dict[str, Any]:
    """The ``explain(extras=...)`` that makes a job of ``tenant`` use the sets it may use."""
    return {SET_FOLDERS: usable_folders(tenant)}


def training_scope(record: JobRecord) -> str | None:
    """Where a training job puts its set: the shared scope when an admin asked for it
    (``options['shared']``), else its owner's."""
    return None if record.options.get("shared") else record.owner


def images_as_npz(images: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    """What a training job stores for a folder the server offers: uint8 images (N, H, W, 3) and,
    for support sets, labels."""
    buffer = io.BytesIO()
    arrays = {"images": images} | ({"labels": labels} if labels is not None else {})
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def zips_as_npz(zips: dict[str, bytes]) -> bytes:
    """What a training job stores for uploaded zips: each zip's bytes as they came, by field."""
    buffer = io.BytesIO()
    np.savez(buffer, **{field: np.frombuffer(data, np.uint8) for field, data in zips.items()})
    return buffer.getvalue()


class TooLarge(InputError):
    """An uploaded zip above one of the server's limits (the API answers 413 with ``code``)."""

    def __init__(self, message: str, code: str = "payload_too_large"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ZipLimits:
    """The server's bounds on one uploaded zip of training images."""

    images: int  # image files in it
    entry_bytes: int  # one image file, uncompressed
    total_bytes: int  # all its image files, uncompressed
    pixels: int  # one image


def zip_entries(data: bytes, field: str, limits: ZipLimits) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each image file (PNG, JPEG, WebP by name; other files are skipped) of
    the uploaded zip ``field``, each read whole, so its CRC is checked
    (:func:`engine.data.read_zip_entry`). The number of images and their declared sizes are
    checked from the zip's directory before any entry is read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InputError(f"{field} is not a zip archive") from None
    with archive:
        entries = [i for i in archive.infolist()
                   if Path(i.filename).suffix.lower() in IMAGE_SUFFIXES]  # fmt: skip
        if not entries:
            raise InputError(f"{field} holds no PNG, JPEG or WebP file")
        if len(entries) > limits.images:
            raise TooLarge(f"{field} holds {len(entries)} images; the limit is {limits.images}",
                           "too_many_images")  # fmt: skip
        for info in entries:
            if info.file_size > limits.entry_bytes:
                raise TooLarge(f"{field}: {info.filename[:100]} is above {limits.entry_bytes} "
                               "bytes")  # fmt: skip
        total = sum(info.file_size for info in entries)
        if total > limits.total_bytes:
            raise TooLarge(f"{field} holds {total} bytes of images uncompressed; the limit is "
                           f"{limits.total_bytes}")  # fmt: skip
        for info in entries:
            try:
                yield info.filename, read_zip_entry(archive, info)
            except InputError as error:
                raise InputError(f"{field}: {error}") from None


def check_zip(data: bytes, field: str, limits: ZipLimits) -> int:
    """The number of images in the uploaded zip ``field``, checked without decoding a pixel: its
    directory (:func:`zip_entries`), each entry's data (CRC), each image's header (format,
    pixel count, PNG metadata: :func:`engine.data.open_image`). What only decoding can find is
    left to the worker (:func:`decode_zip`)."""
    count = 0
    for name, content in zip_entries(data, field, limits):
        try:
            open_image(content, max_pixels=limits.pixels, max_bytes=limits.entry_bytes)
        except InputError as error:
            raise InputError(f"{field}: {name[:100]}: {error}") from None
        count += 1
    return count


def decode_zip(data: bytes, field: str, limits: ZipLimits, size: tuple[int, int]) -> np.ndarray:
    """The images of the uploaded zip ``field`` at ``size``, as uint8 (N, H, W, 3), decoded one
    at a time; an image that cannot be decoded is an InputError naming the field and file."""
    images = []
    for name, content in zip_entries(data, field, limits):
        checkpoint()  # a large image takes seconds to decode: cancel and time limits apply
        try:
            image = decode_image(content, max_pixels=limits.pixels, max_bytes=limits.entry_bytes)
        except InputError as error:
            raise InputError(f"{field}: {name[:100]}: {error}") from None
        images.append(load_image(image, size)[0])
    return as_uint8(torch.stack(images))


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] (engine.data.load_image, reference_set) as stored: uint8
    (N, H, W, 3)."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def job_images(record: JobRecord, artifacts: ArtifactStore) -> tuple[torch.Tensor, np.ndarray]:
    """The job's images as floats in [0, 1] (N, 3, H, W), and their labels (or an empty array):
    the bundled photographs, a folder's arrays, or uploaded zips decoded here (``input``:
    ``fields``, the zips in order, ``labels``, a class per zip for support sets, ``limits``)."""
    source, no_labels = record.input, np.zeros(0, dtype=np.int64)
    size = cached_model(record.model, None, "cpu").spec.input_size
    if source["kind"] == "samples":
        images, labels = as_uint8(reference_set("samples", size)), no_labels
    elif source["kind"] == "zips":
        limits = ZipLimits(**source["limits"])
        with np.load(io.BytesIO(artifacts.load_input(record.id)), allow_pickle=False) as stored:
            sets = [decode_zip(stored[f].tobytes(), f, limits, size) for f in source["fields"]]
        images = np.concatenate(sets)
        labels = (np.concatenate([np.full(len(s), c, np.int64)
                                  for s, c in zip(sets, source["labels"], strict=True)])
                  if "labels" in source else no_labels)  # fmt: skip
    else:
        with np.load(io.BytesIO(artifacts.load_input(record.id)), allow_pickle=False) as stored:
            images, labels = stored["images"], stored.get("labels", no_labels)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, labels


def note(path: Path, record: JobRecord, **facts: Any) -> None:
    """The JSON note beside a trained set: which model, when, from what."""
    facts = {"model": record.model, "job": record.id, "created_at": time.time(), **facts}
    path.with_suffix(".json").write_text(json.dumps(facts, indent=2))


def estimate(
    record: JobRecord, artifacts: ArtifactStore, device: str, progress: ProgressFn
) -> dict[str, Any]:
    """Estimate the model's pattern set from the job's images; the record fields of a success."""
    loaded = cached_model(record.model, None, device)
    images, _ = job_images(record, artifacts)
    batches = (images[i : i + BATCH].to(device) for i in range(0, len(images), BATCH))
    with prepared(loaded.module) as net:
        patterns = estimate_patterns(
            net, batches, model_name=record.model, estimator=record.options["estimator"],
            progress=progress, total=len(images),
        )  # fmt: skip
    patterns.source = f"job {record.id} ({len(images)} images)"
    path = patterns.save(
        default_pattern_path(patterns.fingerprint, set_folder(training_scope(record)))
    )
    note(path, record, images=len(images), layers=len(patterns.patterns),
         estimator=record.options["estimator"])  # fmt: skip
    push_trained_set(path)
    return {"scores": {"images": len(images), "layers": len(patterns.patterns)}}


def train(
    record: JobRecord, artifacts: ArtifactStore, device: str, progress: ProgressFn
) -> dict[str, Any]:
    """Train GAD's support networks for the job's class pair; the record fields of a success."""
    loaded = cached_model(record.model, None, device)
    images, labels = job_images(record, artifacts)
    o = record.options
    classes = (o["class_a"], o["class_b"])
    with model_lock(loaded.module):  # the copies train; the cached original only lends weights
        support = train_support_set(
            loaded.module, images.to(device), torch.from_numpy(labels).to(device), classes,
            epochs=o["epochs"], lr=o["learning_rate"], batch_size=BATCH, seed=record.seed,
            model_name=record.model, progress=progress,
        )  # fmt: skip
    path = support.save(
        default_support_path(support.fingerprint, classes, set_folder(training_scope(record)))
    )
    note(path, record, classes=list(classes), images=len(images), epochs=o["epochs"],
         alphas=list(support.alphas))  # fmt: skip
    push_trained_set(path)
    return {"scores": {"images": len(images), "networks": len(support.alphas)}}


WORK = {"patterns": estimate, "support_set": train}


def models_with_trained_sets(tenant: str | None) -> dict[str, set[str]]:
    """For each kind of trained set ('patterns', 'support_set'), the models that ``tenant`` has
    one for (its own or a shared one)."""
    return {need: {note["model"] for note in trained_sets(need, tenant)} for need in NEEDS}


def trained_sets(need: str, tenant: str | None) -> list[dict[str, Any]]:
    """The notes of the pattern sets ('patterns') or support sets ('support_set') that ``tenant``
    may use, its own first; ``shared``: a set of the shared scope that this tenant may use but
    not replace (listed without the job that made it, which is not the tenant's)."""
    listed = []
    for folder in usable_folders(tenant):
        shared = tenant is not None and folder == set_folder(None)
        notes = sorted((folder / NEEDS[need]).glob("*.json"))
        for path in notes:
            if path.with_suffix(".pt").is_file():
                note = json.loads(path.read_text()) | {"file": path.with_suffix(".pt").name}
                listed.append(({k: v for k, v in note.items() if k != "job"} if shared else note)
                              | {"shared": shared})  # fmt: skip
    return listed


def trained_set_files(
    model: str, need: str, classes: tuple[int, int] | None, tenant: str | None
) -> list[Path]:
    """The files of the set ``need`` ('patterns' or 'support_set') for ``model`` with its
    current weights (and this class pair, if given) that a job of ``tenant`` may use, in the
    order the engine prefers them; empty: none."""
    fingerprint = model_fingerprint(cached_model(model, None, "cpu").module)
    found = []
    for folder in usable_folders(tenant):
        if need == "patterns":
            found.append(default_pattern_path(fingerprint, folder))
        elif classes is not None:
            found.append(default_support_path(fingerprint, classes, folder))
        else:
            found.extend(saved_support_sets(fingerprint, folder))
    return [path for path in found if path.is_file()]
