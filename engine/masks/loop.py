"""The one optimisation loop of every mask method (RDE family: PixelMask, SmoothMask, CartoonX,
WaveletX, ShearletX).

For a representation T with coefficients c = T(x), a mask m ∈ [0,1] and noise v_i:
    x̃_i = T⁻¹(m ⊙ c + (1 − m) ⊙ v_i),   i = 1..n
    loss = mean_i (t − p_y(x̃_i))² + λ₁ Σ|m|/N + λ₂ Σ clamp(T⁻¹(m ⊙ c_grey), 0, 1)/(HW)
           + λ_tv TV(m)
with t = 1 (ShearletX paper) or p_y(x) (StartGrad), minimised by Adam on m with projection to
[0, 1] after every step (Kolek et al., CVPR 2023; Bükkaya et al., ICLR 2025). Images of a batch
are independent: each has its own target, noise generator and loss, so a batch gives the same
masks as one image at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from engine.attribution.base import class_scores
from engine.masks.representation import (
    Coefficients,
    NoiseModel,
    Representation,
    obfuscate,
    unit_clamp,
)
from engine.masks.view import l1_share, pixel_share
from engine.method import ProgressFn
from engine.runtime import checkpoint

DistortionTarget = Literal["one", "original"]
StopMetric = Literal["retained_probability", "cp_pixel_sg", "cp_l1_sg", "distortion", "loss"]
RISING_METRICS = ("retained_probability", "cp_pixel_sg", "cp_l1_sg")  # stop once ≥ the value


@dataclass
class Objective:
    """Weights of the loss terms and the distortion convention."""

    distortion_target: DistortionTarget = "one"
    l1: float = 1.0
    energy: float = 0.0  # spatial energy of the grey reconstruction (WaveletX, ShearletX)
    tv: float = 0.0  # total variation of a pixel mask (SmoothMask)


@dataclass
class LoopSettings:
    iterations: int = 300
    learning_rate: float = 0.1
    noise_samples: int = 16
    pixel_clamp: bool = True
    coefficient_clamp: bool = False  # ShearletX parity: clamp obfuscated coefficients to [0, 1]
    normalize_gradient: bool = False
    stop_metric: StopMetric | None = None
    stop_value: float | None = None


@dataclass
class MaskResult:
    masks: list[Tensor]  # final masks, (B, 1, ...) per coefficient group
    history: list[dict[str, list[float]]]  # per image: every loss term per iteration
    iterations_run: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


def total_variation(mask: Tensor) -> Tensor:
    """[Σ(m_{h+1,w} − m_{h,w})² + Σ(m_{h,w+1} − m_{h,w})²] / N per image."""
    dh = (mask[..., 1:, :] - mask[..., :-1, :]).pow(2).flatten(1).sum(1)
    dw = (mask[..., :, 1:] - mask[..., :, :-1]).pow(2).flatten(1).sum(1)
    return (dh + dw) / mask[0].numel()


class MaskLoop:
    def __init__(
        self,
        model: nn.Module,
        representation: Representation,
        objective: Objective,
        settings: LoopSettings,
        progress: ProgressFn | None = None,
    ):
        self.model = model
        self.representation = representation
        self.objective = objective
        self.settings = settings
        self.progress = progress

    def terms(
        self,
        coefficients: Coefficients,
        grey: Coefficients | None,
        masks: list[Tensor],
        noise: NoiseModel,
        unit: Coefficients,
        targets: Tensor,
        reference: Tensor,
        x: Tensor,
    ) -> dict[str, Tensor]:
        """Every loss term per image (B,), the retained probability and the StartGrad CP scores."""
        n = self.settings.noise_samples
        images, kept_image = obfuscate(
            self.representation, coefficients, masks, noise, unit,
            pixel_clamp=self.settings.pixel_clamp,
            coefficient_clamp=self.settings.coefficient_clamp,
        )  # fmt: skip
        kept = class_scores(self.model(images), targets.repeat_interleave(n), "softmax").view(-1, n)
        goal = (
            torch.ones_like(reference) if self.objective.distortion_target == "one" else reference
        )
        terms = {"distortion": (goal[:, None] - kept).pow(2).mean(1)}
        size = sum(m[0].numel() for m in masks)
        terms["l1"] = sum(m.abs().flatten(1).sum(1) for m in masks) / size
        if self.objective.energy:
            spatial = unit_clamp(
                self.representation.reconstruct([m * g for m, g in zip(masks, grey, strict=True)])
            )  # ≥ 0, so Σ|·| is Σ·
            terms["energy"] = spatial.flatten(1).sum(1) / spatial[0, 0].numel()
        if self.objective.tv:
            terms["tv"] = total_variation(masks[0])
        terms["loss"] = (
            terms["distortion"]
            + self.objective.l1 * terms["l1"]
            + self.objective.energy * terms.get("energy", 0)
            + self.objective.tv * terms.get("tv", 0)
        )
        retained = (kept / reference[:, None]).mean(1)
        terms["retained_probability"] = retained
        with torch.no_grad():  # the StartGrad paper's CP curves, logged for every iteration
            terms["cp_l1_sg"] = retained / l1_share(masks, coefficients)
            terms["cp_pixel_sg"] = retained / pixel_share(kept_image.clamp(0, 1), x)
        return terms

    def run(
        self,
        x: Tensor,
        targets: Tensor,
        coefficients: Coefficients,
        noise_model: NoiseModel,
        init: list[Tensor],
        generators: list[torch.Generator],
    ) -> MaskResult:
        with torch.no_grad():
            reference = class_scores(self.model(x), targets, "softmax")
        grey = None
        if self.objective.energy:
            grey = self.representation.decompose(x.mean(1, keepdim=True))
        masks = [m.detach().clone().requires_grad_(True) for m in init]
        optimizer = torch.optim.Adam(masks, lr=self.settings.learning_rate)
        history: list[dict[str, list[float]]] = [{} for _ in range(x.shape[0])]
        total = self.settings.iterations
        stopped, step = False, 0
        for step in range(total + 1):
            checkpoint()
            unit = noise_model.unit(coefficients, self.settings.noise_samples, generators)
            with torch.enable_grad():
                terms = self.terms(
                    coefficients, grey, masks, noise_model, unit, targets, reference, x
                )
            record = {**{k: v.detach() for k, v in terms.items()},
                      "mask_mean": sum(m.detach().flatten(1).sum(1) for m in masks)
                      / sum(m[0].numel() for m in masks)}  # fmt: skip
            for b, entry in enumerate(history):
                for name, values in record.items():
                    entry.setdefault(name, []).append(float(values[b]))
            if step == total or self._reached(record):
                stopped = step < total
                break
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].sum().backward()
            if self.settings.normalize_gradient:
                for m in masks:
                    norm = m.grad.flatten(1).norm(dim=1).view(-1, *[1] * (m.ndim - 1))
                    m.grad /= norm + 1e-7
            optimizer.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0, 1)
            if self.progress is not None:
                retained = float(record["retained_probability"].mean())
                loss = float(record["loss"].mean())
                self.progress(step + 1, total, loss=loss, retained_probability=retained)
        return MaskResult([m.detach() for m in masks], history, step, stopped)

    def _reached(self, record: dict[str, Tensor]) -> bool:
        metric, value = self.settings.stop_metric, self.settings.stop_value
        if metric is None or value is None or math.isnan(value):
            return False
        current = record[metric]
        return bool((current >= value if metric in RISING_METRICS else current <= value).all())
