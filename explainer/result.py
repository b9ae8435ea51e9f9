"""A finished job with its artifacts downloaded: numpy arrays, PIL images, the prediction and
the scores (with their meanings), ``save(dir)``, and an HTML view for notebooks."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from explainer.types import Job, Prediction, ScoreMeaning


@dataclass
class Result:
    """A succeeded job and the bytes of each of its artifacts (``files``: name → bytes, as the
    server sent them). The arrays and pictures are decoded from them on first use."""

    job: Job
    files: dict[str, bytes]
    score_meanings: Mapping[str, ScoreMeaning] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        """The job's id."""
        return self.job.id

    @property
    def prediction(self) -> Prediction | None:
        """The predicted class, its probability, and the class explained (``target``)."""
        return self.job.prediction

    @property
    def scores(self) -> dict[str, float | None]:
        """Score name → value (None where undefined for this input: ``job.undefined_scores``
        says why)."""
        return self.job.scores

    def array(self, name: str) -> np.ndarray | None:
        """An ``.npy`` artifact as an array (None if the job has none of that name)."""
        data = self.files.get(name)
        return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)

    def image(self, name: str) -> Image.Image | None:
        """A ``.png`` artifact as a PIL image (None if the job has none of that name)."""
        data = self.files.get(name)
        if data is None:
            return None
        picture = Image.open(io.BytesIO(data))
        picture.load()
        return picture

    def json(self, name: str) -> Any:
        """A ``.json`` artifact, parsed (None if the job has none of that name)."""
        data = self.files.get(name)
        return None if data is None else json.loads(data)

    @cached_property
    def attribution(self) -> np.ndarray:
        """The attribution: C×H×W for images (w.r.t. [0, 1] pixels), time × features for series;
        for mask methods the pixel-space mask."""
        array = self.array("attribution.npy")
        if array is None:
            raise KeyError(f"job {self.id} has no attribution.npy")
        return array

    @cached_property
    def heatmap(self) -> np.ndarray | None:
        """The H×W heat map (images only)."""
        return self.array("heatmap.npy")

    @cached_property
    def mask(self) -> dict[str, np.ndarray] | None:
        """A mask method's mask in its own representation, one array per coefficient group
        (``group0`` for pixels; ``yl``, ``yh0``, … for wavelets); None for other methods."""
        data = self.files.get("mask.npz")
        if data is None:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    @cached_property
    def overlay(self) -> Image.Image | None:
        """The heat map over the input (images), or the series with its attribution shaded."""
        name = "overlay.png" if "overlay.png" in self.files else "series.png"
        return self.image(name)

    @cached_property
    def explanation(self) -> Image.Image | None:
        """A mask method's masked reconstruction of the image; None for other methods."""
        return self.image("explanation.png")

    @cached_property
    def summary(self) -> dict[str, Any] | None:
        """``summary.json``: options with defaults, seed, device, versions, timings, input."""
        return self.json("summary.json")

    @cached_property
    def history(self) -> Any:
        """A mask method's ``history.json`` (loss terms per iteration); None otherwise."""
        return self.json("history.json")

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write every artifact as the server sent it, and the job's view as ``job.json``, into
        ``folder`` (created if missing). Returns the folder. A file already there of one of
        those names is not replaced unless ``overwrite`` (FileExistsError naming them, before
        anything is written); a ``folder`` that is a file is a NotADirectoryError."""
        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"cannot save into {out}: it is a file, not a folder")
        contents = {Path(name).name: data for name, data in self.files.items()}
        contents["job.json"] = json.dumps(self.job.raw, indent=2).encode()
        present = sorted(name for name in contents if (out / name).exists())
        if present and not overwrite:
            shown = ", ".join(present[:5]) + (
                f" and {len(present) - 5} more" if present[5:] else ""
            )
            raise FileExistsError(f"{out} already holds {shown}; save into another folder, or "
                                  "pass overwrite=True to replace them")  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            (out / name).write_bytes(data)
        return out

    def __repr__(self) -> str:
        label = self.prediction.label if self.prediction else None
        return (f"Result(id={self.id!r}, model={self.job.model!r}, method={self.job.method!r}, "
                f"prediction={label!r}, artifacts={sorted(self.files)})")  # fmt: skip

    def _repr_html_(self) -> str:
        """Jupyter's view: the overlay (and explanation) inline, the prediction, the scores with
        their meanings."""
        escape = html.escape
        pictures = []
        for name in ("overlay.png", "series.png", "explanation.png"):
            if name in self.files:
                uri = "data:image/png;base64," + base64.b64encode(self.files[name]).decode()
                pictures.append(f'<figure style="display:inline-block;margin:4px">'
                                f'<img src="{uri}" style="max-width:320px" alt="{escape(name)}">'
                                f"<figcaption>{escape(name)}</figcaption></figure>")  # fmt: skip
        head = f"<b>{escape(str(self.job.method))}</b> on <b>{escape(str(self.job.model))}</b>"
        if (p := self.prediction) is not None:
            head += (f": predicted {escape(str(p.label))} ({p.class_index}, "
                     f"p = {p.probability:.3f})")  # fmt: skip
            if p.target is not None and p.target != p.class_index:
                head += f", explained {escape(str(p.target_label))} ({p.target})"
        rows = []
        for key, value in self.scores.items():
            meaning = self.score_meanings.get(key)
            shown = "–" if value is None else f"{value:.4g}"
            why = self.job.undefined_scores.get(key, meaning.meaning if meaning else "")
            better = meaning.better if meaning and meaning.better else ""
            rows.append(f"<tr><td><code>{escape(key)}</code></td><td>{shown}</td>"
                        f"<td>{escape(better)}</td><td>{escape(why)}</td></tr>")  # fmt: skip
        table = ""
        if rows:
            table = ("<table><thead><tr><th>score</th><th>value</th><th>better</th>"
                     "<th>meaning</th></tr></thead><tbody>" + "".join(rows)
                     + "</tbody></table>")  # fmt: skip
        ident = f"<small>(job <code>{escape(self.id)}</code>)</small>"
        body = f"<p>{head} {ident}</p>{''.join(pictures)}{table}"
        return f'<div class="explainer-result">{body}</div>'
