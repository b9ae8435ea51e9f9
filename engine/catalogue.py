"""The catalogue: every explanation method and quality metric there is, listed in one place.

Each family defines its specs in its own module; this module collects them, in the order the
CLI and ``GET /methods`` show them, and answers lookups. It sits above every family, and nothing
in the families imports it: adding a method is its module plus one line here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from engine.addons.crigrad import CRIGRAD_METHOD
from engine.addons.gad import GAD_METHOD
from engine.addons.pattern import PATTERN_METHODS
from engine.attribution.cam import CAM_METHODS
from engine.attribution.methods import GRADIENT_METHODS
from engine.masks.extremal import EXTREMAL_MASK
from engine.masks.methods import MASK_METHODS
from engine.method import MethodSpec, OptionsError, index
from engine.metrics.base import MetricError, MetricRequest, MetricSpec
from engine.metrics.convergence import ITERATIONS_TO_TARGET
from engine.metrics.cp import CP_SHEARLETX, CP_STARTGRAD
from engine.metrics.faithfulness import FAITHFULNESS
from engine.metrics.hallucination import HALLUCINATION
from engine.metrics.perturbation import DEGRADATION, PIXEL_PERTURBATION, SENSITIVITY_N
from engine.models.spec import ModelSpec

METHODS: dict[str, MethodSpec] = index(
    [
        *GRADIENT_METHODS.values(),
        *CAM_METHODS.values(),
        *MASK_METHODS.values(),
        EXTREMAL_MASK,
        *PATTERN_METHODS.values(),
        CRIGRAD_METHOD,
        GAD_METHOD,
    ]
)
METRICS: dict[str, MetricSpec] = index(
    [
        CP_SHEARLETX,
        CP_STARTGRAD,
        HALLUCINATION,
        FAITHFULNESS,
        ITERATIONS_TO_TARGET,
        DEGRADATION,
        PIXEL_PERTURBATION,
        SENSITIVITY_N,
    ]
)


SHOWN_NAME = 60  # characters of an unknown name repeated in a message


def close_names(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """The known names closest to ``name``, best first: the one "did you mean" rule of the CLI
    and the API (difflib's ratio of at least 0.6, ignoring case, ``-`` versus ``_`` and spaces,
    so that ``Grad-CAM`` finds ``gradcam``)."""

    def folded(text: str) -> str:
        return text.lower().replace("-", "_").replace(" ", "_")

    by_folded: dict[str, str] = {}
    for candidate in known:
        by_folded.setdefault(folded(candidate), candidate)
    key = folded(name)
    if key in by_folded:
        return [by_folded[key]]
    matches = difflib.get_close_matches(key, list(by_folded), n=limit, cutoff=0.6)
    squeezed = {k.replace("_", ""): k for k in by_folded}  # gradcam_plusplus for gradcamplusplus
    if not matches and key.replace("_", "") in squeezed:
        matches = [squeezed[key.replace("_", "")]]
    return [by_folded[match] for match in matches]


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown method 'saliancy'; did you mean 'saliency'?``, or the known names when none is
    close: the message for a name the catalogue (or the model registry) does not have."""
    known = list(known)
    shown = name if len(name) <= SHOWN_NAME else name[:SHOWN_NAME] + "…"
    if close := close_names(name, known):
        return f"unknown {kind} {shown!r}; did you mean {' or '.join(map(repr, close))}?"
    return f"unknown {kind} {shown!r}; known: {', '.join(sorted(known))}"


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise OptionsError(unknown_name("method", name, METHODS))
    return METHODS[name]


def all_methods() -> list[MethodSpec]:
    return list(METHODS.values())


def applicable_methods(model: ModelSpec) -> list[MethodSpec]:
    """The methods that run on ``model`` with their default options (its input kind and
    capabilities; a model whose capabilities are not recorded is taken to have them all)."""
    return [m for m in METHODS.values()
            if m.refusal(m.options(), model.input_kind, model.allows) is None]  # fmt: skip


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise MetricError(unknown_name("metric", name, METRICS))
    return METRICS[name]


def all_metrics() -> list[MetricSpec]:
    return list(METRICS.values())


def parse_metrics(requested: Sequence[str | dict[str, Any]] | None) -> list[MetricRequest]:
    """Names, or ``{"name": ..., **parameters}`` objects → validated requests (each once)."""
    parsed: dict[str, MetricRequest] = {}
    for item in requested or []:
        if isinstance(item, str):
            name, parameters = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            parameters = {k: v for k, v in item.items() if k != "name"}
            name = item["name"]
        else:
            raise MetricError(f"a metric is a name or an object with a 'name', got {item!r}")
        spec = get_metric(name)
        if name in parsed:
            raise MetricError(f"metric {name!r} requested twice")
        parsed[name] = MetricRequest(spec, spec.parse_options(parameters))
    return list(parsed.values())
