"""PatternNet, PatternAttribution and Pattern-Guided IG: gradient methods under a pattern rule.

- PatternNet (Kindermans et al., ICLR 2018): the backward pass with every weight W replaced by
  its pattern A, an estimate of the signal in input space.
- PatternAttribution (same paper): the backward pass with W ⊙ A.
- Pattern-Guided IG (Schwarzenberg & Castle, ICML WHI 2020): Integrated Gradients whose path
  gradients are PatternAttribution gradients; with A ≡ 1 it is IG.

Each needs a pattern set estimated for the model's exact weights (``estimate_patterns``, or
``python -m engine estimate-patterns``); by default the set stored in the cache for this model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from engine.addons import set_folders, with_rule
from engine.addons.pattern.estimate import PatternError, PatternSet, estimate_patterns
from engine.addons.pattern.rule import PatternKind, PatternRule
from engine.attribution.gradient import Saliency
from engine.attribution.methods import (
    GradientOptions,
    IntegratedGradientsOptions,
    build_integrated_gradients,
    ig_scores,
    input_gradient,
    smoothed,
)
from engine.method import MethodContext, MethodSpec, ServerPathField, index
from engine.models.spec import model_fingerprint
from engine.storage import cache_dir

PatternsField = ServerPathField(
    None,
    description="Pattern file from `python -m engine estimate-patterns`; default: the set "
    "stored in the cache for this model's weights (over the API only the default).",
)


class UsesPatterns:
    """Options of a method that needs the cache's pattern set unless ``patterns`` names one."""

    patterns: str | None

    def trained_set(self) -> Literal["patterns"] | None:
        return "patterns" if self.patterns is None else None


class PatternOptions(UsesPatterns, GradientOptions):
    patterns: str | None = PatternsField


class PatternIGOptions(UsesPatterns, IntegratedGradientsOptions):
    patterns: str | None = PatternsField


def default_pattern_path(fingerprint: str, folder: Path | None = None) -> Path:
    """Where a cache folder (default: the engine cache) keeps the pattern set of the model with
    these weights."""
    return (folder or cache_dir()) / "patterns" / f"{fingerprint[:24]}.pt"


def resolve_patterns(ctx: MethodContext, path: str | None) -> PatternSet:
    """The pattern set given in ``ctx.extras['patterns']``, at ``path``, or in the first cache
    folder of :func:`~engine.addons.set_folders` that has one for the model's weights."""
    given = ctx.extras.get("patterns")
    if isinstance(given, PatternSet):
        return given
    if path is None:
        fingerprint = model_fingerprint(ctx.model)
        found = [candidate for folder in set_folders(ctx)
                 if (candidate := default_pattern_path(fingerprint, folder)).is_file()]  # fmt: skip
        if not found:
            raise PatternError(
                f"no patterns estimated for model {ctx.model_spec.name!r} with these weights; "
                f"run `python -m engine estimate-patterns --model {ctx.model_spec.name} "
                "IMAGE_FOLDER` (or POST /patterns) first"
            )
        path = str(found[0])
    return PatternSet.load(path)


def _pattern_gradient(kind: PatternKind):
    def build(ctx: MethodContext, options: PatternOptions):
        rule = PatternRule(resolve_patterns(ctx, options.patterns), kind)
        return smoothed(ctx, options, Saliency(input_gradient(with_rule(ctx, rule), options)))

    return build


def _pattern_guided_ig(ctx: MethodContext, options: PatternIGOptions):
    rule = PatternRule(resolve_patterns(ctx, options.patterns), "attribution")
    return build_integrated_gradients(with_rule(ctx, rule), options)


_CITATION = "Kindermans et al., ICLR 2018 (Learning how to explain neural networks)"
_PATTERN_NET = MethodSpec(
    name="pattern_net",
    family="pattern",
    summary="PatternNet: the backward pass with weights replaced by their patterns A; a "
    "signal estimate in input space. Needs a pattern set for the model.",
    citation=_CITATION,
    options=PatternOptions,
    requires=frozenset({"modules"}),
    build=_pattern_gradient("net"),
)
_PATTERN_ATTRIBUTION = MethodSpec(
    name="pattern_attribution",
    family="pattern",
    summary="PatternAttribution: the backward pass with weights W ⊙ A. Needs a pattern set.",
    citation=_CITATION,
    options=PatternOptions,
    requires=frozenset({"modules"}),
    build=_pattern_gradient("attribution"),
)
_PATTERN_GUIDED_IG = MethodSpec(
    name="pattern_guided_ig",
    family="pattern",
    summary="Pattern-Guided IG: Integrated Gradients with PatternAttribution path "
    "gradients (equal to IG when A ≡ 1). Needs a pattern set.",
    citation="Schwarzenberg & Castle, ICML WHI 2020 (Pattern-Guided Integrated Gradients)",
    options=PatternIGOptions,
    requires=frozenset({"modules"}),
    build=_pattern_guided_ig,
    scores=ig_scores,
)
PATTERN_METHODS: dict[str, MethodSpec] = index(
    [_PATTERN_NET, _PATTERN_ATTRIBUTION, _PATTERN_GUIDED_IG]
)

__all__ = [
    "PatternError",
    "PatternRule",
    "PatternSet",
    "default_pattern_path",
    "estimate_patterns",
]
