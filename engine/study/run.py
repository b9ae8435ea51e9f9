"""``study(model, inputs, variants, metrics)``: every variant over every input, in engine batches.

A variant explains the inputs ``batch_size`` at a time, one :func:`engine.explain` call per batch
with a target per input; every random draw is made per input from a generator seeded by ``seed``
alone, so each row equals what a single-input ``explain(..., seed=seed)`` gives. Variants and
metrics are checked before any work starts.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.storage import holds_files, write_staged
from engine.study.aggregate import rows_to_csv, score_rows, summarize
from engine.study.report import write_report
from engine.study.variants import StudyError, Variant, parse_variants

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SERIES_SUFFIXES = (".npy", ".csv")
StudyProgress = Callable[[int, int], None]  # (input × variant results done, total)


@dataclass(frozen=True)
class StudyInput:
    """One input of a study: its name in the tables and what ``explain`` takes."""

    name: str
    source: Any


@dataclass
class Study:
    """A finished study: ``rows`` (one per input × variant × score key, :data:`STUDY_COLUMNS`)
    and their ``summary`` (:func:`summarize`)."""

    model: str
    variants: list[Variant]
    inputs: list[str]
    metrics: list[dict[str, Any]]
    seed: int
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # out_dir's entries, name → path

    def to_csv(self) -> str:
        return rows_to_csv(self.rows)


def _suffix(name: str) -> str:
    return Path(name).suffix.lower()


def _zip_inputs(path: Path) -> list[StudyInput]:
    """The images and series files of a zip (folders inside it included), by entry name."""
    from engine.data.archives import read_zip_entry
    from engine.data.timeseries import read_npy

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise StudyError(f"{path} is not a readable zip file") from None
    found = []
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            base = Path(info.filename).name
            hidden = base.startswith(".") or "__MACOSX" in info.filename
            if info.is_dir() or hidden or _suffix(base) not in IMAGE_SUFFIXES + SERIES_SUFFIXES:
                continue
            data = read_zip_entry(archive, info)
            if _suffix(base) == ".npy":
                source: Any = read_npy(data)
            elif _suffix(base) == ".csv":
                try:
                    source = np.loadtxt(io.BytesIO(data), delimiter=",", ndmin=2)
                except ValueError as error:
                    raise StudyError(f"zip entry {base!r} is not a numeric CSV: {error}") from None
            else:
                source = data
            found.append(StudyInput(info.filename, source))
    return found


def study_inputs(inputs: str | Path | Sequence[Any]) -> list[StudyInput]:
    """Named inputs from a folder (its images or series files, sorted by name), a ``.zip`` of
    them, or a list of sample names, paths, PIL images, arrays or tensors (names: the sample's
    or file's name, else ``input-<i>``)."""
    if isinstance(inputs, str | Path) and Path(inputs).is_dir():
        known = IMAGE_SUFFIXES + SERIES_SUFFIXES
        files = sorted(p for p in Path(inputs).iterdir() if _suffix(p.name) in known)
        found = [StudyInput(p.name, str(p)) for p in files if p.is_file()]
        where = f"folder {inputs}"
    elif isinstance(inputs, str | Path) and _suffix(str(inputs)) == ".zip":
        if not Path(inputs).is_file():
            raise StudyError(f"no zip file {inputs}")
        found, where = _zip_inputs(Path(inputs)), f"zip {inputs}"
    elif isinstance(inputs, str | Path):
        raise StudyError(f"{inputs} is neither a folder nor a .zip of images or series files")
    else:
        found, where = [], "the list of inputs"
        for i, item in enumerate(inputs):
            if isinstance(item, str | Path):
                name = Path(item).name if Path(item).is_file() else str(item)
                found.append(StudyInput(name, str(item)))
            elif isinstance(item, Image.Image | np.ndarray | torch.Tensor):
                found.append(StudyInput(f"input-{i}", item))
            else:
                raise StudyError(f"input {i} is of type {type(item).__name__}: give a sample "
                                 "name, a path, a PIL image or an array")  # fmt: skip
    if not found:
        raise StudyError(f"no inputs in {where} (images: {', '.join(IMAGE_SUFFIXES)}; series: "
                         f"{', '.join(SERIES_SUFFIXES)})")  # fmt: skip
    names = [item.name for item in found]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise StudyError(f"inputs must have distinct names; twice: {', '.join(twice)}")
    return found


def study_targets(targets: Any, count: int) -> list[Any]:
    """A target per input: None / "predicted" (each input's predicted class), one class index
    or label for all, or a list with one per input."""
    if isinstance(targets, list | tuple):
        if len(targets) != count:
            raise StudyError(f"{len(targets)} targets for {count} inputs: give one per input, "
                             "one for all, or 'predicted'")  # fmt: skip
        return [None if t == "predicted" else t for t in targets]
    return [None if targets == "predicted" else targets] * count


def check_variants(
    variants: Sequence[Variant],
    loaded: Any,
    metrics: Sequence[str | dict[str, Any]],
    resize: str,
    targets: Sequence[Any],
) -> None:
    """Each variant with the metrics and every target, through the engine's pre-flight plan
    (:func:`engine.plan.plan`: the method exists, with the catalogue's did-you-mean message,
    its options parse and apply to the model and its input kind, the metrics apply to it, the
    targets are classes of the model). A refusal keeps its type and code, its message names the
    variant."""
    from engine.plan import PlanError, plan

    distinct = list(dict.fromkeys(t for t in targets if t is not None)) or [None]
    for variant in variants:
        try:
            for target in distinct:
                plan(loaded, variant.method, variant.options, metrics=metrics, resize=resize,
                     target=target)  # fmt: skip
        except PlanError as error:
            raise type(error)(error.code, f"variant {variant.label!r}: {error.message}",
                              error.status, error.details) from None  # fmt: skip


def check_sizes(items: Sequence[StudyInput], resize: str, kind: str) -> None:
    """Inputs that can share a batch: series of one length and feature count; with
    ``resize='none'`` (images keep their sizes) images of one size."""
    if kind == "image" and resize != "none":
        return
    from engine.data import load_image
    from engine.data.timeseries import load_series

    sizes: dict[tuple[int, ...], str] = {}
    for item in items:
        if kind == "image":
            shape = tuple(load_image(item.source)[0].shape[1:])
        else:
            shape = tuple(load_series(item.source).shape)
        sizes.setdefault(shape, item.name)
    if len(sizes) > 1:
        shown = ", ".join(f"{name} {'×'.join(map(str, shape))}"
                          for shape, name in list(sizes.items())[:3])  # fmt: skip
        if kind == "image":
            raise StudyError(f"resize 'none' keeps each image's size, and these differ ({shown})"
                             ": use resize 'center_crop' or 'resize' for a study")  # fmt: skip
        raise StudyError(f"the series of a study must share one length and feature count; these "
                         f"differ (time steps × features: {shown})")  # fmt: skip


def folder_name(text: str) -> str:
    """A file-system-safe folder name for an input or variant label."""
    safe = re.sub(r"[^A-Za-z0-9._=,+\-\[\]]+", "_", text).strip("._") or "input"
    return safe[:120]


def study(
    model: Any,
    inputs: str | Path | Sequence[Any],
    variants: Sequence[str | dict[str, Any] | Variant],
    metrics: Sequence[str | dict[str, Any]] = (),
    *,
    targets: Any = None,
    seed: int = 0,
    device: str | None = None,
    weights: str | None = None,
    resize: str = "center_crop",
    batch_size: int = 8,
    progress: StudyProgress | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Study:
    """Explain every input with every variant and score it with ``metrics``.

    ``model``: as :func:`engine.explain` takes it; ``inputs``: a folder or ``.zip`` of images or
    series files, or a list of sample names, paths, PIL images or arrays; ``variants``:
    ``'method:key=value,...'`` strings, ``{"method", "options", "label"}`` objects or
    :class:`Variant`; ``targets``: ``None``/``"predicted"``, one class index or label for all,
    or a list with one per input. ``progress(done, total)`` counts input × variant results.
    With ``out_dir``, each input's files (``engine.artifacts``) go to
    ``out_dir/<variant>/<input>/`` and the report (:func:`write_report`) to ``out_dir``, all or
    none (:func:`engine.storage.write_staged`); a folder that already holds files is refused
    unless ``overwrite`` (then the entries of the same names are replaced). Applies the
    process's allocator setting first, as :func:`engine.explain` does.
    """
    from engine.catalogue import parse_metrics
    from engine.explain import resolve_model
    from engine.runtime import apply_process_settings

    apply_process_settings()

    if batch_size < 1:
        raise StudyError(f"batch_size must be at least 1, got {batch_size}")
    if resize not in ("center_crop", "resize", "none"):
        raise StudyError(f"unknown resize {resize!r}; use center_crop, resize or none")
    parsed = parse_variants(variants)
    requests = parse_metrics(metrics)
    items = study_inputs(inputs)
    per_input = study_targets(targets, len(items))
    loaded = resolve_model(model, weights, device)
    check_variants(parsed, loaded, metrics, resize, per_input)
    check_sizes(items, resize, loaded.spec.input_kind)
    rows: list[dict[str, Any]] = []
    labels = [variant.label for variant in parsed]
    files: dict[str, Path] = {}
    if out_dir is None:
        run_variants(loaded, parsed, items, per_input, metrics, seed, resize, batch_size,
                     progress, rows, None)  # fmt: skip
    else:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise StudyError(f"out_dir {out} is a file, not a folder")
        if holds_files(out) and not overwrite:
            raise StudyError(f"out_dir {out} already holds files; choose another folder, or "
                             "pass overwrite=True to write into it")  # fmt: skip

        def run(staging: Path) -> None:
            run_variants(loaded, parsed, items, per_input, metrics, seed, resize, batch_size,
                         progress, rows, staging)  # fmt: skip
            write_report(rows, staging, labels)

        files = write_staged(out, run)
    return Study(
        model=loaded.spec.name,
        variants=parsed,
        inputs=[item.name for item in items],
        metrics=[request.record() for request in requests],
        seed=seed,
        rows=rows,
        summary=summarize(rows, labels),
        files=files,
    )


def run_variants(
    loaded: Any, parsed: list[Variant], items: list[StudyInput], per_input: list[Any],
    metrics: Sequence[str | dict[str, Any]], seed: int, resize: str, batch_size: int,
    progress: StudyProgress | None, rows: list[dict[str, Any]], out: Path | None,
) -> None:  # fmt: skip
    """Every variant over the items in ``explain()`` batches of ``batch_size``: their rows
    appended to ``rows``, each input's files written under ``out`` where given."""
    from engine.artifacts import write_artifacts
    from engine.explain import explain

    done, total = 0, len(parsed) * len(items)
    for variant in parsed:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            result = explain(
                loaded, [item.source for item in batch], variant.method, variant.options,
                target=per_input[start : start + len(batch)], seed=seed, resize=resize,
                metrics=metrics,
            )  # fmt: skip
            names = [(start + i, item.name) for i, item in enumerate(batch)]
            rows.extend(score_rows(result, variant, names))
            if out is not None:
                for i, item in enumerate(batch):
                    folder = out / folder_name(variant.label) / folder_name(item.name)
                    write_artifacts(result, folder, i)
            done += len(batch)
            if progress is not None:
                progress(done, total)
