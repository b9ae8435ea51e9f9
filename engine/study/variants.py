"""A study's method variants: a method with its options and a label that names it in tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class StudyError(ValueError):
    """A study the engine refuses before any work starts (a bad variant, duplicate labels,
    inputs that cannot batch)."""


@dataclass(frozen=True)
class Variant:
    """One column of a study: ``method`` with ``options`` (as given; the method's options model
    validates them), named ``label`` (unique within a study)."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, "options": dict(self.options)}


def default_label(method: str, options: dict[str, Any]) -> str:
    """``method``, or ``method[k=v,...]`` with the options in the order given (values as JSON)."""
    if not options:
        return method
    parts = [f"{key}={_text(value)}" for key, value in options.items()]
    return f"{method}[{','.join(parts)}]"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _scalar(text: str) -> Any:
    """A JSON scalar where ``text`` parses as one (10, 0.5, true, null), else the string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, bool | int | float | str) else text


def _nested(options: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target = options
    for part in parents:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise StudyError(f"option {dotted!r} sets a field inside {part!r}, which has a value")
        target = child
    target[last] = value


def parse_variant(value: str | dict[str, Any] | Variant) -> Variant:
    """A variant from ``'method'``, ``'method:key=value,key=value'`` (values parsed as JSON
    scalars where they parse, else kept as strings; dotted keys set nested options such as
    ``smoothing.samples=8``), ``{"method": ..., "options": {...}, "label": ...}`` (label
    optional) or a :class:`Variant`. The method and its options are checked by the study
    (:func:`check_variants`), not here."""
    if isinstance(value, Variant):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"method", "options", "label"}
        if unknown:
            raise StudyError(f"a variant has 'method', 'options' and 'label', not "
                             f"{', '.join(map(repr, sorted(unknown)))}")  # fmt: skip
        method, options, label = value.get("method"), value.get("options") or {}, value.get("label")
        if not isinstance(method, str) or not method:
            raise StudyError(f"a variant needs a method name, got {method!r}")
        if not isinstance(options, dict):
            raise StudyError(f"options of variant {method!r} must be an object")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise StudyError(f"the label of variant {method!r} must be a non-empty string")
        return Variant(label or default_label(method, options), method, dict(options))
    if not isinstance(value, str):
        raise StudyError(f"a variant is 'method:key=value,...' or an object, got {value!r}")
    method, _, rest = value.strip().partition(":")
    method = method.strip()
    if not method:
        raise StudyError(f"a variant needs a method name: {value!r}")
    options: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise StudyError(f"variant option {pair!r} is not key=value (in {value!r})")
        _nested(options, key.strip(), _scalar(text.strip()))
    return Variant(default_label(method, options), method, options)


def parse_variants(values: Sequence[str | dict[str, Any] | Variant]) -> list[Variant]:
    """Variants in order; at least one, labels unique."""
    variants = [parse_variant(v) for v in values]
    if not variants:
        raise StudyError("a study needs at least one variant")
    seen: set[str] = set()
    for variant in variants:
        if variant.label in seen:
            raise StudyError(f"two variants are labelled {variant.label!r}: give each a "
                             "distinct label")  # fmt: skip
        seen.add(variant.label)
    return variants
