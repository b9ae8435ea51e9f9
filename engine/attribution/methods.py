"""Registry entries of the gradient family: options models and builders.

Each builder composes the pieces of this package: a gradient function (optionally under a
backward rule), a method, and optionally a noise tunnel around it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from engine.attribution.base import InputGradient, ScoreType, stacked
from engine.attribution.expected_gradients import ExpectedGradients
from engine.attribution.gradient import GradientXInput, Saliency
from engine.attribution.integrated_gradients import (
    BaselineKind,
    IntegratedGradients,
    QuadratureRule,
    completeness_gap,
)
from engine.attribution.rectifier_rules import DeconvolutionRule, GuidedBackpropRule
from engine.attribution.smoothing import NoiseTunnel, SmoothGradIG, SmoothingKind
from engine.method import (
    Attribution,
    MethodContext,
    MethodOptions,
    MethodSpec,
    OptionsError,
    ServerPathField,
    index,
)
from engine.models.spec import InputKindName

BatchSize = Field(
    None,
    ge=1,
    le=4096,
    description="Rows per forward/backward pass (None: all at once); at "
    "most EXPLAINER_MAX_ROWS_PER_PASS of the process (default 32).",
)


class ScoreOptions(MethodOptions):
    score: ScoreType = Field(
        "logit", description="Explained scalar: logit, softmax or log_softmax."
    )


class SmoothingOptions(BaseModel):
    """A noise tunnel around any gradient method (Captum's NoiseTunnel)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: SmoothingKind = "smoothgrad"
    samples: int = Field(25, ge=1, le=1000, description="Noisy copies n.")
    noise_level: float = Field(
        0.15, ge=0, le=1, description="s in σ = s·(max x − min x), per image."
    )
    batch_size: int | None = BatchSize


class GradientOptions(ScoreOptions):
    smoothing: SmoothingOptions | None = Field(
        None, description="Wrap the method in a noise tunnel (SmoothGrad, SmoothGrad², VarGrad)."
    )

    def passes_per_sample(self) -> int:
        """Passes of the method itself, before a noise tunnel multiplies them."""
        return 1

    def model_passes(self, height: int, width: int) -> int:
        return self.passes_per_sample() * (self.smoothing.samples if self.smoothing else 1)


class IntegratedGradientsOptions(GradientOptions):
    steps: int = Field(50, ge=1, le=2000, description="Quadrature points m.")
    rule: QuadratureRule = "gausslegendre"
    baseline: BaselineKind = Field(
        "zero",
        description="zero (= black in [0,1] pixels), black, mean colour, blur, uniform noise.",
    )
    blur_sigma: float = Field(5.0, gt=0, le=100, description="σ in pixels of the blur baseline.")
    internal_batch_size: int | None = BatchSize

    def passes_per_sample(self) -> int:
        return self.steps

    def check_input_kind(self, kind: InputKindName) -> None:
        if kind == "timeseries" and self.baseline not in ("zero", "black"):
            raise OptionsError(f"the {self.baseline} baseline is for images; a series takes the "
                               "zero baseline")  # fmt: skip


class SmoothGradOptions(ScoreOptions):
    samples: int = Field(25, ge=1, le=1000, description="Noisy copies n.")
    noise_level: float = Field(
        0.15, ge=0, le=1, description="s in σ = s·(max x − min x), per image."
    )
    batch_size: int | None = BatchSize

    def model_passes(self, height: int, width: int) -> int:
        return self.samples


class SmoothGradIGOptions(ScoreOptions):
    steps: int = Field(25, ge=2, le=500, description="Path points m (pgig: 25).")
    rule: QuadratureRule = "riemann_right"
    samples: int = Field(25, ge=1, le=500, description="Noisy copies per path point (pgig: 25).")
    noise_level: float = Field(0.15, ge=0, le=1)
    baseline: BaselineKind = "zero"
    blur_sigma: float = Field(5.0, gt=0, le=100)
    internal_batch_size: int | None = BatchSize

    def model_passes(self, height: int, width: int) -> int:
        return self.steps * self.samples


class ExpectedGradientsOptions(GradientOptions):
    samples: int = Field(50, ge=1, le=5000, description="Draws k of (reference, α).")
    references: str = ServerPathField(
        "samples",
        description="Reference set: 'samples' (the bundled photographs at the model's input "
        "size) or, from the CLI or Python, a folder of images.",
    )
    internal_batch_size: int | None = BatchSize

    def passes_per_sample(self) -> int:
        return self.samples


def input_gradient(ctx: MethodContext, options: ScoreOptions, rule=None) -> InputGradient:
    return InputGradient(ctx.model, options.score, stacked(rule, *ctx.rules))


def smoothed(ctx: MethodContext, options: GradientOptions, method: Attribution) -> Attribution:
    if options.smoothing is None:
        return method
    s = options.smoothing
    return NoiseTunnel(method, s.kind, s.samples, s.noise_level, s.batch_size, ctx.seed)


def guided_backprop(ctx: MethodContext, options: ScoreOptions) -> Attribution:
    """Guided Backpropagation's gradient (also Guided Grad-CAM's first factor)."""
    return Saliency(input_gradient(ctx, options, GuidedBackpropRule()))


def build_integrated_gradients(
    ctx: MethodContext, options: IntegratedGradientsOptions
) -> Attribution:
    method = IntegratedGradients(
        input_gradient(ctx, options),
        options.baseline,
        options.steps,
        options.rule,
        options.internal_batch_size,
        options.blur_sigma,
        ctx.seed,
    )
    return smoothed(ctx, options, method)


def ig_scores(ctx, method, x, attribution, targets, options) -> dict[str, Tensor]:
    if not isinstance(method, IntegratedGradients):
        return {}  # a noise tunnel around IG has no completeness property
    gap = completeness_gap(ctx.model, x, method.last_baseline, attribution, targets, options.score)
    return {"completeness_gap": gap["gap"], "score_difference": gap["score_difference"]}


def _smoothgrad(kind: SmoothingKind):
    def build(ctx: MethodContext, options: SmoothGradOptions) -> Attribution:
        saliency = Saliency(input_gradient(ctx, options))
        return NoiseTunnel(
            saliency, kind, options.samples, options.noise_level, options.batch_size, ctx.seed
        )

    return build


def _smoothgrad_ig(ctx: MethodContext, options: SmoothGradIGOptions) -> Attribution:
    # Each path point expands to `samples` noisy rows: chunk the path so that a pass has at most
    # internal_batch_size rows.
    path_chunk = options.internal_batch_size and max(
        1, options.internal_batch_size // options.samples
    )
    return SmoothGradIG(
        input_gradient(ctx, options),
        options.samples,
        options.noise_level,
        baseline=options.baseline,
        steps=options.steps,
        rule=options.rule,
        internal_batch_size=path_chunk,
        blur_sigma=options.blur_sigma,
        seed=ctx.seed,
    )


def _expected_gradients(ctx: MethodContext, options: ExpectedGradientsOptions) -> Attribution:
    references = ctx.extras.get("references")
    if references is None:
        from engine.data import reference_set

        references = reference_set(options.references, ctx.input_size)
    method = ExpectedGradients(
        input_gradient(ctx, options),
        references,
        options.samples,
        options.internal_batch_size,
        ctx.seed,
    )
    return smoothed(ctx, options, method)


IMAGES_AND_SERIES: tuple[InputKindName, ...] = ("image", "timeseries")
NOISE_TUNNELS = [
    ("smoothgrad", "mean of gradients at noisy copies", "Smilkov et al., arXiv:1706.03825, 2017"),
    ("smoothgrad_sq", "mean of squared gradients at noisy copies", "Hooker et al., NeurIPS 2019"),
    ("vargrad", "variance of gradients at noisy copies", "Adebayo et al., ICLR Workshop 2018"),
]
GRADIENT_METHODS: dict[str, MethodSpec] = index(
    [
        MethodSpec(
            name="saliency",
            family="gradient",
            summary="Vanilla gradient ∂S_c/∂x (signed).",
            citation="Simonyan, Vedaldi & Zisserman, ICLR Workshop 2014",
            options=GradientOptions,
            build=lambda ctx, o: smoothed(ctx, o, Saliency(input_gradient(ctx, o))),
            input_kinds=IMAGES_AND_SERIES,
        ),
        MethodSpec(
            name="gradient_x_input",
            family="gradient",
            summary="Gradient × Input: x ⊙ ∂S_c/∂x.",
            citation="Shrikumar et al., arXiv:1605.01713, 2016",
            options=GradientOptions,
            build=lambda ctx, o: smoothed(ctx, o, GradientXInput(input_gradient(ctx, o))),
            input_kinds=IMAGES_AND_SERIES,
        ),
        MethodSpec(
            name="integrated_gradients",
            family="gradient",
            summary="Integrated Gradients along the straight path from a baseline; reports the "
            "completeness gap Σ IG − (S(x) − S(x')).",
            citation="Sundararajan, Taly & Yan, ICML 2017",
            options=IntegratedGradientsOptions,
            build=build_integrated_gradients,
            scores=ig_scores,
            input_kinds=IMAGES_AND_SERIES,
        ),
        *(
            MethodSpec(
                name=kind,
                family="gradient",
                summary=f"{kind}: {summary}; σ = s·(max x − min x) per image, seeded.",
                citation=citation,
                options=SmoothGradOptions,
                build=_smoothgrad(kind),
                stochastic=True,
                input_kinds=IMAGES_AND_SERIES,
            )
            for kind, summary, citation in NOISE_TUNNELS
        ),
        MethodSpec(
            name="smoothgrad_ig",
            family="gradient",
            summary="SmoothGrad-IG (pgig variant): IG whose path gradients are SmoothGrad "
            "estimates at each path point, σ from that point's range. Not NoiseTunnel(IG): for "
            "that use integrated_gradients with the 'smoothing' option.",
            citation="Schwarzenberg & Castle, ICML WHI 2020 (pgig)",
            options=SmoothGradIGOptions,
            build=_smoothgrad_ig,
            stochastic=True,
        ),
        MethodSpec(
            name="expected_gradients",
            family="gradient",
            summary="Expected Gradients: E over reference images x' and α~U(0,1) of "
            "(x − x') ⊙ ∇S(x' + α(x − x')).",
            citation="Erion et al., Nature Machine Intelligence 2021",
            options=ExpectedGradientsOptions,
            build=_expected_gradients,
            stochastic=True,
        ),
        MethodSpec(
            name="guided_backprop",
            family="gradient",
            summary="Guided Backpropagation: rectifier backward 1[x>0]·max(g,0).",
            citation="Springenberg et al., ICLR Workshop 2015",
            options=GradientOptions,
            build=lambda ctx, o: smoothed(ctx, o, guided_backprop(ctx, o)),
            requires=frozenset({"hooks", "rectifiers"}),
        ),
        MethodSpec(
            name="deconvolution",
            family="gradient",
            summary="Deconvolution: rectifier backward max(g,0), ignoring the forward mask.",
            citation="Zeiler & Fergus, ECCV 2014",
            options=GradientOptions,
            build=lambda ctx, o: smoothed(
                ctx, o, Saliency(input_gradient(ctx, o, DeconvolutionRule()))
            ),
            requires=frozenset({"hooks", "rectifiers"}),
        ),
    ]
)
