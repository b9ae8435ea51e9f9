"""GAD, Gradient Artificial Distancing (Mazini Rodrigues, Boutry & Najman, Pattern Recognit. Lett.).

The base gradient method runs on the original model and on each support network of a class
pair (:mod:`engine.addons.gad.support`). Each map is binarised (|A| summed over channels; top
fraction q of pixels, paper's evaluation q = 50%, or A ≥ τ·max A); the GAD mask is the
intersection of all binary maps and the GAD map is E_orig ⊙ mask. So GAD never marks a pixel
the original map does not mark. The binarisation rule is not stated in the paper (a labelled
choice, specs §1.14).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field
from torch import Tensor

from engine.addons import AddonOptions, build_base, set_folders
from engine.addons.gad.support import (
    DEFAULT_ALPHAS,
    SupportSet,
    SupportSetError,
    default_support_path,
    saved_support_sets,
    train_support_set,
)
from engine.method import Attribution, MethodContext, MethodSpec, ServerPathField
from engine.metrics.gad import gad_scores, important_pixels
from engine.models.spec import model_fingerprint

Binarisation = Literal["top_fraction", "threshold"]


class GAD(Attribution):
    """E_orig ⊙ ∩_k B(E_k): the base method on the original (first) and the support models."""

    def __init__(self, methods: list[Attribution], binarisation: Binarisation = "top_fraction",
                 top_fraction: float = 0.5, threshold: float = 0.1):  # fmt: skip
        self.methods = methods
        self.binarise = (binarisation, top_fraction, threshold)
        self.gad_mask: Tensor | None = None  # (B, H, W) pixels important on every model
        self.original_mask: Tensor | None = None  # (B, H, W) pixels important on the original

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        original = None
        for index, method in enumerate(self.methods):
            attribution = method.attribute(x, targets)
            kept = important_pixels(attribution.abs().sum(1), *self.binarise)
            if index == 0:
                original, original_kept, mask = attribution, kept, kept.clone()
            else:
                mask &= kept
            self._report(index + 1, len(self.methods))
        self.gad_mask, self.original_mask = mask, original_kept
        return original * mask.unsqueeze(1).to(original.dtype)


class GADOptions(AddonOptions):
    classes: tuple[int, int] | None = Field(
        None,
        description="The class pair of the support set; default: the one saved set of this "
        "model whose pair holds the target class.",
    )
    support_set: str | None = ServerPathField(
        None, description="Support set file (python -m engine train-gad); default: the cache's."
    )
    binarisation: Binarisation = "top_fraction"
    top_fraction: float = Field(0.5, gt=0, le=1, description="q: share of pixels kept per map.")
    threshold: float = Field(0.1, gt=0, le=1, description="τ for binarisation='threshold'.")

    def trained_set(self) -> Literal["support_set"] | None:
        return "support_set" if self.support_set is None else None

    def trained_set_classes(self) -> tuple[int, int] | None:
        return self.classes

    def model_copies(self) -> int:
        """The original and the default support set's networks (one per α of train-gad)."""
        return 1 + len(DEFAULT_ALPHAS)


def resolve_support_set(ctx: MethodContext, options: GADOptions, targets: Tensor) -> SupportSet:
    """The support set given in ``ctx.extras``, at ``options.support_set``, or in the first cache
    folder of :func:`~engine.addons.set_folders` that has one for the model's weights and the
    class pair (``options.classes``, else the one pair that holds every target)."""
    given = ctx.extras.get("support_set")
    if isinstance(given, SupportSet):
        return given
    if options.support_set:
        return SupportSet.load(options.support_set)
    fingerprint = model_fingerprint(ctx.model)
    wanted = set(targets.tolist()) if options.classes is None else set(options.classes)
    for folder in set_folders(ctx):
        if options.classes is not None:
            pair = default_support_path(fingerprint, options.classes, folder)
            matching = [pair] if pair.is_file() else []
        else:
            matching = [p for p in saved_support_sets(fingerprint, folder)
                        if wanted <= {int(c) for c in p.stem.split("-")[1:]}]  # fmt: skip
        if len(matching) > 1:
            raise SupportSetError(
                f"{len(matching)} saved GAD support sets of model {ctx.model_spec.name!r} hold "
                f"class(es) {sorted(wanted)}; pass 'classes' to choose one"
            )
        if matching:
            return SupportSet.load(matching[0])
    raise SupportSetError(
        f"no saved GAD support set of model {ctx.model_spec.name!r} with these weights holds "
        f"class(es) {sorted(wanted)}; train one with `python -m engine train-gad` (or POST "
        "/support-sets)"
    )


class _GADWithSupportSet(Attribution):
    """Resolves the support set once the targets are known, then runs :class:`GAD`."""

    def __init__(self, ctx: MethodContext, options: GADOptions):
        self.ctx, self.options = ctx, options
        self.gad: GAD | None = None

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        ctx, o = self.ctx, self.options
        support = resolve_support_set(ctx, o, targets)
        outside = set(targets.tolist()) - set(support.classes)
        if outside:
            raise SupportSetError(
                f"the support set is for classes {support.classes}; target(s) {sorted(outside)} "
                "are not in the pair"
            )
        models = [ctx.model, *[m.to(x.device) for m in support.models(ctx.model)]]
        methods = [build_base(replace(ctx, model=m), o.base, o.base_options) for m in models]
        self.gad = GAD(methods, o.binarisation, o.top_fraction, o.threshold)
        self.gad.progress = self.progress
        return self.gad.attribute(x, targets)


def _scores(ctx, method, x, attribution, targets, options) -> dict[str, Tensor]:
    return gad_scores(ctx.model, x, targets, method.gad.gad_mask, method.gad.original_mask)


GAD_METHOD = MethodSpec(
    name="gad",
    family="addon",
    summary="GAD: the base gradient method's map kept only where it is important on the "
    "original model and on every support regression network of a class pair (trained "
    "with `python -m engine train-gad`); scores RC and RS.",
    citation="Mazini Rodrigues, Boutry & Najman, Pattern Recognition Letters (GAD)",
    options=GADOptions,
    requires=frozenset({"modules"}),
    build=_GADWithSupportSet,
    scores=_scores,
)

__all__ = ["GAD", "SupportSet", "SupportSetError", "train_support_set"]
