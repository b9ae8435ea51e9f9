"""Training jobs: the pattern sets that PatternNet, PatternAttribution and Pattern-Guided IG need,
and the GAD support networks of a class pair. A job's images are stored with it as one ``.npz``
(uint8, N × H × W × 3 at the model's input size, and the labels of a support set), or it takes
the bundled photographs. The result goes to the shared engine cache (``Settings.cache_path``),
where every worker's explain jobs find it, with a small JSON note beside it that
``GET /patterns`` and ``GET /support-sets`` list.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.addons.gad.support import default_support_path, train_support_set
from engine.addons.pattern import default_pattern_path, estimate_patterns
from engine.attribution.base import model_lock, prepared
from engine.data import reference_set
from engine.explain import cached_model
from engine.method import ProgressFn
from engine.models.spec import model_fingerprint
from engine.storage import cache_dir
from jobs.artifacts import ArtifactStore
from jobs.records import JobRecord

BATCH = 16


def images_as_npz(images: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    """What a training job stores: uint8 images (N, H, W, 3) and, for support sets, labels."""
    buffer = io.BytesIO()
    arrays = {"images": images} | ({"labels": labels} if labels is not None else {})
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] (engine.data.load_image, reference_set) as stored: uint8
    (N, H, W, 3)."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def job_images(record: JobRecord, artifacts: ArtifactStore) -> tuple[torch.Tensor, np.ndarray]:
    """The job's images as floats in [0, 1] (N, 3, H, W), and their labels (or an empty array)."""
    if record.input["kind"] == "samples":
        size = cached_model(record.model, None, "cpu").spec.input_size
        images, labels = as_uint8(reference_set("samples", size)), np.zeros(0, dtype=np.int64)
    else:
        with np.load(io.BytesIO(artifacts.load_input(record.id)), allow_pickle=False) as stored:
            images, labels = stored["images"], stored.get("labels", np.zeros(0, dtype=np.int64))
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
    path = patterns.save(default_pattern_path(patterns.fingerprint))
    note(path, record, images=len(images), layers=len(patterns.patterns),
         estimator=record.options["estimator"])  # fmt: skip
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
    path = support.save(default_support_path(support.fingerprint, classes))
    note(path, record, classes=list(classes), images=len(images), epochs=o["epochs"],
         alphas=list(support.alphas))  # fmt: skip
    return {"scores": {"images": len(images), "networks": len(support.alphas)}}


WORK = {"patterns": estimate, "support_set": train}


CACHE_FOLDERS = {"patterns": "patterns", "support_set": "gad"}  # trained set → cache folder


def models_with_trained_sets() -> dict[str, set[str]]:
    """For each kind of trained set ('patterns', 'support_set'), the models that have one."""
    return {need: {note["model"] for note in trained_sets(folder)}
            for need, folder in CACHE_FOLDERS.items()}  # fmt: skip


def trained_sets(kind: str) -> list[dict[str, Any]]:
    """The notes of every trained pattern set ('patterns') or support set ('gad')."""
    folder = cache_dir(kind)
    notes = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [json.loads(p.read_text()) | {"file": p.with_suffix(".pt").name} for p in notes
            if p.with_suffix(".pt").is_file()]  # fmt: skip


def has_trained_set(model: str, need: str, classes: tuple[int, int] | None) -> bool:
    """Whether the cache holds the set ``need`` ('patterns' or 'support_set') for ``model``
    with its current weights (and this class pair, if given)."""
    fingerprint = model_fingerprint(cached_model(model, None, "cpu").module)
    if need == "patterns":
        return default_pattern_path(fingerprint).is_file()
    if classes is not None:
        return default_support_path(fingerprint, classes).is_file()
    return any(cache_dir("gad").glob(f"{fingerprint[:24]}-*.pt"))
