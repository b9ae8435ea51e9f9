"""The model store: models added over the API, in a directory that the API and every worker share
(``EXPLAINER_MODEL_DIR``; in distributed mode the artifact volume). One folder per model holds
``model.json`` (the engine's model config format), its weight file and ``inspection.json`` (what
the probe found: capabilities, CAM layer, layer names). Each process registers the stored models
in the engine's registry and reads the folder again when it changes, so a worker started after
an upload, or running while it happened, can run the new model. With an S3 store
(``EXPLAINER_STORE_URL``) the objects ``models/<name>/...`` are the truth and the folder is each
process's mirror of them (:class:`jobs.objects.Mirror`, by ETag): a worker on another host, with
an empty folder, downloads a model uploaded before it started.

A model is checked before it is stored, in a process of its own (:mod:`jobs.model_probe`): its
name is free, its factory is on the operator's allow-list, its weights load without pickled code
(``weights_only``; TorchScript archives and exported programs hold no Python objects and call
only operators on the operator allow-list, :mod:`engine.models.operators`), and it answers a
probe batch of its declared size with one finite score per label (images) or per time step
(series). Refusals are in the uploader's terms (:func:`jobs.model_probe.in_user_terms`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from engine.models import MODELS, ModelError, ModelSpec, cached_model, register_model
from engine.models.builtin import builtin_specs
from engine.models.config import TIMM_REFUSED_KWARGS, spec_from_config
from jobs.objects import LocalObjects, ObjectStore

log = logging.getLogger(__name__)
CONFIG = "model.json"
INSPECTION = "inspection.json"
WEIGHTS = "weights.pt"
BUILT_IN = frozenset(spec.name for spec in builtin_specs())
PROBE_TIMEOUT_S = 600
PREFIX = "models/"  # the model store's objects in the object store

Source = Literal["torchscript", "export", "state_dict", "timm", "series"]


NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Side = Annotated[int, Field(ge=32, le=8192)]  # pixels; smaller images are never explained
Positive = Annotated[float, Field(gt=1e-6)]
Label = Annotated[str, Field(min_length=1, max_length=500)]
TORCHVISION_REFUSED_KWARGS = frozenset({"weights", "weights_backbone", "progress"})
CONFIG_RULE = "model_config_rule"  # the error type of a rule between an upload's fields


def config_rule(message: str) -> PydanticCustomError:
    return PydanticCustomError(CONFIG_RULE, message)


class ModelUpload(BaseModel):
    """What ``POST /models`` takes besides the weight file (the engine's config fields)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., pattern=NAME_PATTERN, description="A new model name.")
    source: Source = Field(
        ..., description="The weight file: a TorchScript archive, a torch.export program "
        "(torch.export.save, with a dynamic batch size), a state dict for 'factory' (a function "
        "importable on the server) or for a timm 'architecture', or a series classifier saved "
        "by train-series.",
    )  # fmt: skip
    factory: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    architecture: str | None = Field(
        None, pattern=r"^[\w.]+$", description="The timm architecture (source 'timm'), e.g. "
        "vit_tiny_patch16_224; its pretrained_cfg gives mean, std and input size.",
    )  # fmt: skip
    factory_kwargs: dict[str, Any] = Field(
        {}, description="Keyword arguments of the factory or of timm.create_model (e.g. "
        "num_classes).",
    )  # fmt: skip
    description: str = Field("uploaded model", max_length=500)
    input_size: tuple[Side, Side] | None = Field(
        None, description="[H, W] of its input images; default: the timm architecture's, or 224²."
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="Normalisation the model expects: (x − mean) / std of [0, 1] pixels. "
        "Required for image models (with std), except for timm (its pretrained_cfg) or with "
        "normalize false.",
    )  # fmt: skip
    std: tuple[Positive, Positive, Positive] | None = None
    normalize: bool = Field(True, description="false: the model takes [0, 1] pixels as they are.")
    labels: list[Label] = Field([], max_length=100_000, description="One per output class")
    cam_layer: str | None = Field(
        None, max_length=500, description="The model's module name for the CAM family; default: "
        "found by the probe (a transformer's last block norm, else the last spatial map).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _explicit(self) -> ModelUpload:
        """Rules between fields that the JSON schema does not state (their own error type)."""
        if (self.factory is not None) != (self.source == "state_dict"):
            raise config_rule("'factory' goes with source 'state_dict', which needs it")
        if (self.architecture is not None) != (self.source == "timm"):
            raise config_rule("'architecture' goes with source 'timm', which needs it")
        downloads = TIMM_REFUSED_KWARGS if self.source == "timm" else TORCHVISION_REFUSED_KWARGS
        if refused := downloads & set(self.factory_kwargs):
            raise config_rule(f"factory_kwargs may not set {', '.join(sorted(refused))}: weights "
                              "come from the uploaded state dict")  # fmt: skip
        if (self.mean is None) != (self.std is None):
            raise config_rule("give both 'mean' and 'std', or neither")
        if not self.normalize and self.mean is not None:
            raise config_rule("'normalize': false takes no 'mean' and 'std'")
        if len(set(self.labels)) != len(self.labels):
            raise config_rule("labels must differ from each other (targets may name them)")
        implicit = self.source not in ("timm", "series") and self.normalize and self.mean is None
        if implicit:
            raise config_rule(
                "say how the model normalises its input: 'mean' and 'std', or 'normalize': "
                "false for a model that takes [0, 1] pixels"
            )
        return self

    def config(self) -> dict[str, Any]:
        """The engine's model config (``engine.models.config``) for this upload's weight file."""
        config = self.model_dump(exclude={"source", "architecture"}, exclude_none=True)
        if self.source not in ("state_dict", "timm"):
            config.pop("factory_kwargs", None)
        if self.source == "state_dict":
            config["state_dict"] = WEIGHTS
        elif self.source == "timm":
            config |= {"timm": self.architecture, "state_dict": WEIGHTS}
        else:
            config[self.source] = WEIGHTS
        return config


class ModelRefused(ValueError):
    """An upload that cannot become a model; ``status`` is the HTTP status it deserves."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def factory_allowed(factory: str, allowed: tuple[str, ...]) -> bool:
    """Whether an upload may name ``factory`` ('module:function'): listed as it is, or a
    torchvision classification builder where 'torchvision' is listed. Nothing is imported."""
    if factory in allowed:
        return True
    module, _, name = factory.partition(":")
    if "torchvision" not in allowed or module != "torchvision.models":
        return False
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


class ModelStore:
    def __init__(
        self,
        root: str | Path,
        max_probe_pixels: int = 4096 * 4096,
        allowed_factories: tuple[str, ...] = ("torchvision",),
        objects: ObjectStore | None = None,
    ):
        """``objects``: the object store whose ``models/`` objects this folder mirrors (an S3
        bucket: each process downloads what changed, by ETag); None or a local store: the
        folder itself is the store (a shared volume)."""
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._mirror = (objects or LocalObjects(self.root)).mirror(PREFIX, self.root)
        self.max_probe_pixels = max_probe_pixels
        self.allowed_factories = allowed_factories
        self._lock = threading.Lock()
        self._probing = threading.Semaphore(1)  # one probe process at a time: each holds a model
        self._seen: dict[str, tuple[int, ...]] = {}  # name → _stamp of what this process registered

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG).is_file())

    def refresh(self) -> None:
        """Register what the store holds now; forget what was removed or replaced."""
        with self._lock:
            self._mirror.pull()
            current = {name: self._stamp(name) for name in self.names()}
            if current == self._seen:
                return
            for name in set(self._seen) - set(current):
                MODELS.pop(name, None)
            for name, stamp in current.items():
                if self._seen.get(name) == stamp:
                    continue
                try:
                    register_model(self._stored_spec(self.root / name))
                except ModelError as error:  # a broken folder must not take the others down
                    log.warning("stored model %s cannot be loaded: %s", name, error)
            cached_model.cache_clear()
            self._seen = current

    def _stamp(self, name: str) -> tuple[int, ...]:
        """When the model's files last changed: a model deleted and added again elsewhere with
        the same config but new weights is registered anew (its mirror rewrote the weights)."""
        files = (self.root / name / part for part in (CONFIG, INSPECTION, WEIGHTS))
        return tuple(path.stat().st_mtime_ns for path in files if path.exists())

    def _stored_spec(self, folder: Path) -> ModelSpec:
        """The model's spec with what its probe found (capabilities, CAM layer, layer names,
        the memory of a pass per pixel)."""
        spec = spec_from_config(folder / CONFIG)
        inspection = folder / INSPECTION
        if not inspection.is_file():
            return spec
        found = json.loads(inspection.read_text())
        return dataclasses.replace(
            spec,
            cam_layer=found.get("cam_layer"),
            capabilities=frozenset(found.get("capabilities", ())),
            layers=tuple(found.get("layers", ())),
            map_layers=tuple(found.get("map_layers", ())),
            bytes_per_pixel=found.get("bytes_per_pixel"),
            revision=found.get("revision"),
        )

    def incoming(self) -> Path:
        """A fresh folder for an upload's files, inside the store (same disk, atomic rename)."""
        folder = self.root / f".incoming-{uuid.uuid4().hex}"
        folder.mkdir()
        return folder

    def weights_path(self, incoming: Path) -> Path:
        return incoming / WEIGHTS

    def add(self, upload: ModelUpload, incoming: Path) -> ModelSpec:
        """Check and store a model whose weight file is already in ``incoming`` (from
        :meth:`incoming`, moved into the store or removed); ModelRefused says why not."""
        try:
            if upload.name in BUILT_IN:
                raise ModelRefused(409, f"{upload.name} is a built-in model's name")
            if (self.root / upload.name).exists():
                raise ModelRefused(409, f"a model {upload.name} exists; delete it first")
            if upload.factory and not factory_allowed(upload.factory, self.allowed_factories):
                raise ModelRefused(
                    422, f"factory {upload.factory} is not on this server's allow-list "
                    "(EXPLAINER_ALLOWED_FACTORIES, set by its operator)",
                )  # fmt: skip
            (incoming / CONFIG).write_text(json.dumps(upload.config(), indent=2))
            found = self._probe(incoming / CONFIG) | {"revision": uuid.uuid4().hex}
            (incoming / INSPECTION).write_text(json.dumps(found))
            with self._lock:
                self._mirror.pull(force=True)  # a model of that name stored by another host
                try:
                    incoming.rename(self.root / upload.name)
                except OSError:  # stored by a concurrent upload while this one was probed
                    raise ModelRefused(409, f"a model {upload.name} exists; delete it "
                                       "first") from None  # fmt: skip
                try:  # the config last: a model without it is not listed
                    self._mirror.push(self.root / upload.name / f for f in (WEIGHTS, INSPECTION,
                                                                           CONFIG))  # fmt: skip
                except BaseException:
                    shutil.rmtree(self.root / upload.name, ignore_errors=True)
                    raise
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        self.refresh()
        return MODELS[upload.name]

    def remove(self, name: str) -> None:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ModelRefused(404, "no stored model of that name")
        if name in BUILT_IN:
            raise ModelRefused(409, f"{name} is built in; it cannot be deleted")
        folder = self.root / name
        self._mirror.pull(force=True)
        if not (folder / CONFIG).is_file():
            raise ModelRefused(404, f"no stored model {name}")
        self._mirror.remove(f"{name}/")
        shutil.rmtree(folder)
        self.refresh()

    def _probe(self, config: Path) -> dict[str, Any]:
        """Build the model and run it on a probe batch, in a process of its own."""
        answer_file = config.parent / "probe.json"
        command = [sys.executable, "-m", "jobs.model_probe", str(config),
                   str(self.max_probe_pixels), str(answer_file)]  # fmt: skip
        try:
            with self._probing:
                done = subprocess.run(command, capture_output=True, text=True,
                                      timeout=PROBE_TIMEOUT_S)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ModelRefused(422, f"the model's probe took over {PROBE_TIMEOUT_S} s") from None
        try:
            answer = json.loads(answer_file.read_text())
            answer_file.unlink()
        except (OSError, json.JSONDecodeError):
            log.error("model probe failed (exit %s): %s", done.returncode, done.stderr[-2000:])
            raise ModelRefused(422, "the model's probe process ended without an answer (it "
                               "crashed or ran out of memory)") from None  # fmt: skip
        if not answer.get("ok"):
            if answer.get("detail"):
                log.info("model probe refused %s: %s", config.parent.name, answer["detail"])
            raise ModelRefused(answer.get("status", 422), answer.get("message", "refused"))
        return answer
