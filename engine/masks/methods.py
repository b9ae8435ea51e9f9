"""Mask methods = representation + objective + initialisation + the shared loop; their registry
entries with the papers' defaults.

Defaults follow the ShearletX paper's experiments (Kolek et al., CVPR 2023): Adam lr 0.1, 300
iterations, 16 uniform noise samples, distortion towards probability 1, all-ones init;
PixelMask λ₁ = 1; WaveletX λ₁ = 2, λ₂ = 10; ShearletX λ₁ = 1, λ₂ = 2 with the published
obfuscation (shearlet coefficients clamped to [0, 1], no pixel clamp); CartoonX λ₁ = 1 (WaveletX
without the energy term); pixel and wavelet methods clamp the obfuscated image to [0, 1].
SmoothMask = PixelMask + total variation (the StartGrad paper's "smooth mask"; λ_tv = 300, the
ShearletX repository's PixelRDE setting), not the Extremal Perturbations of the ShearletX paper's
comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from engine.attribution.base import ScoreType
from engine.masks.inits import InitKind, initial_masks, startgrad
from engine.masks.loop import DistortionTarget, LoopSettings, MaskLoop, Objective, StopMetric
from engine.masks.representation import PixelRepresentation, Representation, image_generators
from engine.masks.shearlet import ShearletRepresentation
from engine.masks.view import MaskView
from engine.masks.wavelet import WaveletRepresentation, transform_refusal
from engine.method import (
    Attribution,
    MethodContext,
    MethodOptions,
    MethodSpec,
    basic_options,
    index,
)


class MaskOptions(MethodOptions):
    model_config = basic_options("init", "iterations", "image_size", "stop_metric", "stop_value")

    iterations: int = Field(300, ge=0, le=5000, description="Adam steps.")
    learning_rate: float = Field(0.1, gt=0, le=10)
    noise_samples: int = Field(16, ge=1, le=256, description="Obfuscations per step.")
    noise: Literal["uniform", "gaussian"] = Field(
        "uniform", description="Filling of deleted coefficients: U[μ−σ, μ+σ] or N(μ, σ²)."
    )
    distortion: DistortionTarget = Field(
        "one", description="Distortion towards probability 1 (ShearletX paper) or towards the "
        "original probability p_y(x) (StartGrad).",
    )  # fmt: skip
    init: InitKind = Field("ones", description="Starting mask; startgrad* are the StartGrad inits.")
    init_constant: float = Field(0.5, ge=0, le=1, description="Value of the 'constant' init.")
    startgrad_score: ScoreType = Field("logit", description="Score whose gradient StartGrad uses.")
    startgrad_samples: int = Field(10, ge=1, le=250, description="Samples of startgrad_smoothgrad.")
    normalize_gradient: bool = Field(False, description="Scale each mask gradient to unit norm.")
    pixel_clamp: bool = Field(
        True, description="Clamp every obfuscated image to [0, 1] after its reconstruction. "
        "ShearletX ignores it while its coefficient_clamp is on (that clamps the coefficients "
        "instead).",
    )  # fmt: skip
    image_size: int | None = Field(
        None, ge=32, le=2048, description="Explain at size×size (default: the model's size; "
        "at least 32, the smallest input the bundled networks' strides leave a map for).",
    )  # fmt: skip
    stop_metric: StopMetric | None = Field(
        None, description="Early stopping: stop before the last iteration once every image's "
        "value of this history entry reaches stop_value (retained probability and the StartGrad "
        "CP scores rising to it, distortion and loss falling to it). None: run every iteration.",
    )  # fmt: skip
    stop_value: float | None = Field(
        None, description="The value stop_metric must reach to stop early (used with "
        "stop_metric only).",
    )  # fmt: skip
    l1: float = Field(1.0, ge=0, description="λ₁: weight of the mean |mask|.")

    def coefficients_per_pixel(self) -> float:
        """Coefficients of the representation per pixel and colour (pixels: 1)."""
        return 1.0

    def input_size(self, model_size: tuple[int, int]) -> tuple[int, int]:
        """image_size × image_size where it is set, else the model's input size."""
        return (self.image_size, self.image_size) if self.image_size else model_size

    def objective(self) -> Objective:
        """The loss weights: distortion and λ₁ here; the methods with an energy (λ₂) or total
        variation (λ_tv) term add theirs."""
        return Objective(self.distortion, self.l1)

    def loop_settings(self) -> LoopSettings:
        """The shared loop's settings; ShearletX's coefficient clamp replaces the pixel clamp."""
        return LoopSettings(
            iterations=self.iterations,
            learning_rate=self.learning_rate,
            noise_samples=self.noise_samples,
            pixel_clamp=self.pixel_clamp,
            normalize_gradient=self.normalize_gradient,
            stop_metric=self.stop_metric,
            stop_value=self.stop_value,
        )

    def model_passes(self, height: int, width: int) -> int:
        """Every step passes each obfuscation; StartGrad's SmoothGrad init adds its samples."""
        init = self.startgrad_samples if self.init == "startgrad_smoothgrad" else 1
        return self.iterations * self.noise_samples + init

    def working_set_bytes(self, height: int, width: int) -> int:
        """Memory one image needs beyond the model's passes, about: float32 tensors the size of
        all coefficients (3 colours × coefficients per pixel), 6 for the image and 1.5 more
        per noise sample (masks, mixed coefficients, reconstructions, gradients). Fitted to
        peaks measured on the CPU (benchmarks/memory.py): ShearletX at 256² and 512² with 1
        and 4 samples, PixelMask and WaveletX at 512²; within 10 % with the model's passes."""
        coefficients = 3 * self.coefficients_per_pixel() * height * width
        tensors = TENSORS_PER_IMAGE + TENSORS_PER_SAMPLE * self.noise_samples
        return int(coefficients * 4 * tensors)

    def rows_per_pass(self) -> int:
        return self.noise_samples  # every obfuscation of a step goes through the model at once


TENSORS_PER_IMAGE, TENSORS_PER_SAMPLE = 6, 1.5


class PixelMaskOptions(MaskOptions):
    tv: float = Field(0.0, ge=0, description="λ_tv: total variation of the mask.")

    def objective(self) -> Objective:
        return replace(super().objective(), tv=self.tv)


class SmoothMaskOptions(PixelMaskOptions):
    tv: float = Field(300.0, ge=0, description="λ_tv: total variation of the mask.")


BIORTHOGONAL = ("1.1", "1.3", "1.5", "2.2", "2.4", "2.6", "2.8", "3.1", "3.3", "3.5", "3.7", "3.9",
                "4.4", "5.5", "6.8")  # fmt: skip
# PyWavelets' discrete wavelets, but dmey, whose FIR approximation gives an image back to 1e-2 only
WAVELETS = (
    "haar",
    *(f"db{n}" for n in range(1, 39)),
    *(f"sym{n}" for n in range(2, 21)),
    *(f"coif{n}" for n in range(1, 18)),
    *(f"bior{n}" for n in BIORTHOGONAL),
    *(f"rbio{n}" for n in BIORTHOGONAL),
)


class WaveletOptions(MaskOptions):
    wave: Literal[WAVELETS] = Field("db3", description="The wavelet (PyWavelets' names).")
    levels: int = Field(5, ge=1, le=8)
    mode: Literal["zero", "symmetric", "periodization", "reflect"] = Field(
        "zero",
        description="How the transform extends the image at its borders; 'periodization' "
        "needs every level at least as long as the wavelet's filter, 'reflect' longer than "
        "its padding.",
    )

    def size_refusal(self, height: int, width: int) -> str | None:
        return transform_refusal(self.wave, self.levels, self.mode, height, width)

    def coefficients_per_pixel(self) -> float:
        return 2.0  # a DWT keeps about one coefficient per pixel, plus borders of padded modes


class CartoonXOptions(WaveletOptions):
    pass


class WaveletXOptions(WaveletOptions):
    l1: float = Field(2.0, ge=0, description="λ₁: weight of the mean |mask|.")
    energy: float = Field(10.0, ge=0, description="λ₂: spatial energy of the grey explanation.")

    def objective(self) -> Objective:
        return replace(super().objective(), energy=self.energy)


class ShearletXOptions(MaskOptions):
    energy: float = Field(2.0, ge=0, description="λ₂: spatial energy of the grey explanation.")
    scales: int = Field(4, ge=1, le=5, description="Shearlet scales (fewer where unavailable).")
    coefficient_clamp: bool = Field(
        True, description="The published ShearletX obfuscation (Kolek et al.'s code): clamp the "
        "mixed shearlet coefficients m⊙c + (1−m)⊙v to [0, 1]; pixel_clamp is then ignored. "
        "Off: pixel_clamp applies instead, which keeps the image under an all-ones mask and "
        "costs about ¾ of the time on a CPU; the explanations differ (in the project's "
        "benchmarks a Hallucination score 3.5× higher after 60 iterations on one image, about "
        "equal after 300 iterations on 8 images).",
    )  # fmt: skip

    def objective(self) -> Objective:
        return replace(super().objective(), energy=self.energy)

    def loop_settings(self) -> LoopSettings:
        if not self.coefficient_clamp:
            return super().loop_settings()
        return replace(super().loop_settings(), pixel_clamp=False, coefficient_clamp=True)

    def coefficients_per_pixel(self) -> float:
        """K shearlets at most: 1 low-pass + 2^(⌈j/2⌉+2) per scale j (49 for 4 scales)."""
        return 1 + sum(2 ** (math.ceil(j / 2) + 2) for j in range(1, self.scales + 1))


@dataclass
class MaskOutputs:
    """What a mask method gives besides its pixel-space map, per image b of the batch."""

    masks: list[Tensor]  # final mask per coefficient group (B, 1, ...), in the user's layout
    initial_masks: list[Tensor]  # the init, same layout
    explanation: Tensor  # (B, 3, H, W) clamp(T⁻¹(m ⊙ c), 0, 1): the kept part of the image
    history: list[dict[str, list[float]]]  # per image: every loss term per iteration
    representation: dict  # what the representation was (scales used, padding, ...)
    iterations_run: int
    stopped_early: bool


class MaskMethod(Attribution):
    """Runs the loop and returns a pixel-space heat map (B, 1, H, W); the mask in its
    representation, the explanation image and the history are its :class:`MaskOutputs`."""

    def __init__(
        self,
        ctx: MethodContext,
        options: MaskOptions,
        representation: Representation,
        objective: Objective,
    ):
        self.ctx, self.options = ctx, options
        self.representation, self.objective = representation, objective
        self.outputs: MaskOutputs | None = None

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        o = self.options
        representation = self.representation
        coefficients = representation.decompose(x)
        noise_model = representation.noise_model(x, coefficients, o.noise)
        generators = image_generators(self.ctx.seed, x.shape[0], x.device)
        shapes = representation.mask_shapes(coefficients)
        startgrad_masks = None
        if o.init.startswith("startgrad"):
            startgrad_masks = startgrad(
                self.ctx.model, representation, coefficients, targets, o.init,
                o.startgrad_score, o.startgrad_samples, generators=generators,
            )  # fmt: skip
        init = initial_masks(o.init, shapes, x, constant=o.init_constant,
                             generators=generators, startgrad_masks=startgrad_masks)  # fmt: skip
        settings = o.loop_settings()
        loop = MaskLoop(self.ctx.model, representation, self.objective, settings, self.progress)
        result = loop.run(x, targets, coefficients, noise_model, init, generators)
        with torch.no_grad():
            kept = [m * c for m, c in zip(result.masks, coefficients, strict=True)]
            explanation = representation.reconstruct(kept).clamp(0, 1)
        pixel_space = (
            result.masks[0]
            if representation.name == "pixel"
            else (explanation.mean(1, keepdim=True))
        )
        self._view = MaskView(
            self.ctx.model, x, targets, representation, coefficients, result.masks, noise_model,
            self.ctx.seed, settings.pixel_clamp, settings.coefficient_clamp, result.history,
        )  # fmt: skip
        self.outputs = MaskOutputs(
            masks=representation.output_masks(result.masks),
            initial_masks=representation.output_masks(init),
            explanation=explanation,
            history=result.history,
            representation=representation.describe(),
            iterations_run=result.iterations_run,
            stopped_early=result.stopped_early,
        )
        return pixel_space

    def mask_view(self) -> MaskView:
        """The final mask on its representation, for the quality metrics."""
        return self._view


def _scores(ctx, method, x, attribution, targets, options) -> dict[str, Tensor]:
    history = method.outputs.history
    final = {name: torch.tensor([h[name][-1] for h in history]) for name in history[0]}
    return {
        "retained_probability": final["retained_probability"],
        "mask_mean": final["mask_mean"],
        "loss": final["loss"],
        "iterations": torch.full((len(history),), float(method.outputs.iterations_run)),
    }


def _builder(representation: Callable[[MaskOptions], Representation]):
    def build(ctx: MethodContext, o: MaskOptions) -> Attribution:
        return MaskMethod(ctx, o, representation(o), o.objective())

    return build


def _pixels(o: MaskOptions) -> Representation:
    return PixelRepresentation()


def _wavelets(o: WaveletOptions) -> Representation:
    return WaveletRepresentation(o.wave, o.levels, o.mode)


def _shearlets(o: ShearletXOptions) -> Representation:
    return ShearletRepresentation(o.scales)


# (name, summary, citation, options, representation)
_FAMILY = [
    ("pixelmask", "Pixel mask (RDE): keep few pixels, fill the rest with noise, keep the class.",
     "Macdonald et al. 2019; Kolek et al., CVPR 2023", PixelMaskOptions, _pixels),
    ("smoothmask", "PixelMask plus a total-variation penalty for smooth masks.",
     "Fong & Vedaldi 2017; Bükkaya et al., ICLR 2025", SmoothMaskOptions, _pixels),
    ("cartoonx", "CartoonX: a sparse mask on the image's wavelet (DWT) coefficients.",
     "Kolek et al., ECCV 2022", CartoonXOptions, _wavelets),
    ("waveletx", "WaveletX: CartoonX plus a spatial energy penalty on the explanation.",
     "Kolek et al., CVPR 2023", WaveletXOptions, _wavelets),
    ("shearletx", "ShearletX: a sparse mask on shearlet coefficients plus a spatial energy "
     "penalty.", "Kolek et al., CVPR 2023", ShearletXOptions, _shearlets),
]  # fmt: skip
MASK_METHODS: dict[str, MethodSpec] = index(
    [
        MethodSpec(
            name=name,
            family="mask",
            summary=summary,
            citation=citation,
            options=options,
            build=_builder(representation),
            stochastic=True,
            scores=_scores,
            has_history=True,
        )
        for name, summary, citation, options, representation in _FAMILY
    ]
)
