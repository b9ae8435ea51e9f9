"""ExtremalMask for time-series classifiers (Enguehard, ICML 2023), as the StartGrad paper runs it
(Bükkaya et al., ICLR 2025; spec time_series.md §3–4).

A mask M ∈ [0, 1]^{B×T×D} mixes the series with a learned perturbation NN(x) (a bidirectional
GRU, trained jointly with the mask): x̃ = M ⊙ x + (1 − M) ⊙ NN(x). Per series b, with z = f(·)
the logits of every time step,

  preservation:  L_b = Σ_t (f(x̃)_t − f(x)_t)² + λ₁ Σ|M| + λ₂ Σ|NN(x)|            (attribution M)
  deletion:      L_b = Σ_t (f(x̃)_t − f(x_ref)_t)² + λ₁ Σ|1 − M| + λ₂ Σ(NN(x) − x)²  (1 − M)

minimised on mean_b L_b by Adam (lr 0.01) over M and NN's weights, M clamped to [0, 1] after
every step. Inits: ``ones``, ``uniform`` (the constant ½, as in the code), ``zeros``, and StartGrad:
the signed gradient of Σ_t z_t, rank-transformed per series to [0, 1] (1 − that for deletion,
so that the step-0 attribution is the init in both games). The perturbation net is built from
the seed alone, so every init starts from the same net (the original code reused one net).

On CUDA, cuDNN computes an RNN's backward only in training mode; the classifier's recurrent
layers are put in training mode (identical output for one-layer RNNs without inter-layer
dropout) while BatchNorm and Dropout stay in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from engine.attribution.smoothing import noise_scale
from engine.masks.inits import rank_transform
from engine.method import Attribution, MethodContext, MethodOptions, MethodSpec, basic_options

Game = Literal["preservation", "deletion"]
SeriesInit = Literal["ones", "uniform", "zeros", "startgrad", "startgrad_smoothgrad"]


class PerturbationNet(nn.Module):
    """NN(x): bidirectional GRU (D per direction), L2-normalised over features, Linear(2D → D)."""

    def __init__(self, features: int):
        super().__init__()
        self.rnn = nn.GRU(features, features, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * features, features)

    def forward(self, x: Tensor) -> Tensor:
        states, _ = self.rnn(x)
        return self.out(nn.functional.normalize(states, dim=-1))


@contextlib.contextmanager
def recurrent_backward_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    """On CUDA, RNN layers in training mode for the duration (cuDNN needs it for backward)."""
    layers = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    if device.type != "cuda" or not layers:
        yield
        return
    states = [m.training for m in layers]
    for m in layers:
        m.train()
    try:
        yield
    finally:
        for m, state in zip(layers, states, strict=True):
            m.train(state)


def startgrad_series(
    model: nn.Module, x: Tensor, samples: int = 0, generator: torch.Generator | None = None,
    absolute: bool = False, noise_level: float = 0.15,
) -> Tensor:  # fmt: skip
    """m₀ = rank transform per series of ∂(Σ_t z_t)/∂x (signed by default); with ``samples`` > 0
    the gradient is the mean over x + N(0, σ²), σ = noise_level·(max − min of the series)
    (SmoothGrad's rule)."""
    points = [x]
    if samples:
        spread = noise_scale(x, noise_level)
        points = [
            x + spread * torch.randn(x.shape, generator=generator).to(x) for _ in range(samples)
        ]
    total = torch.zeros_like(x)
    for point in points:
        leaf = point.detach().requires_grad_(True)
        with torch.enable_grad():
            total += torch.autograd.grad(model(leaf).sum(), leaf)[0]
    gradient = total / len(points)
    return rank_transform(gradient.abs() if absolute else gradient, map_dims=2)


class ExtremalMaskOptions(MethodOptions):
    model_config = basic_options("game", "init", "iterations")

    game: Game = Field("preservation", description="Keep little (preservation) or delete little.")
    iterations: int = Field(500, ge=0, le=5000, description="Adam steps.")
    learning_rate: float = Field(0.01, gt=0, le=10)
    l1: float = Field(1.0, ge=0, description="λ₁: mask size Σ|M| (deletion: Σ|1 − M|).")
    perturbation: float = Field(1.0, ge=0, description="λ₂: Σ|NN(x)| (deletion: Σ(NN(x) − x)²).")
    init: SeriesInit = Field("uniform", description="Starting mask; startgrad* = StartGrad.")
    startgrad_samples: int = Field(25, ge=1, le=250, description="Samples of startgrad_smoothgrad.")
    startgrad_absolute: bool = Field(False, description="Rank |∇| instead of the signed gradient.")
    deletion_baseline: Literal["zeros", "mean"] = Field(
        "zeros", description="x_ref of the deletion game: zeros or the series' global mean."
    )
    checkpoint_every: int = Field(50, ge=1, description="Keep the attribution every N steps.")

    def model_passes(self, height: int, width: int) -> int:
        init = self.startgrad_samples if self.init == "startgrad_smoothgrad" else 1
        return self.iterations + init


@dataclass
class SeriesMaskOutputs:
    """What ExtremalMask gives besides the attribution, per series b of the batch."""

    history: list[dict[str, list[float]]]  # per series: every loss term per iteration
    checkpoints: dict[int, Tensor]  # iteration → attribution (B, T, D) at that step
    game: Game


class ExtremalMask(Attribution):
    """Attribution (B, T, D) in [0, 1]; the loss per iteration and the attributions at the
    checkpoints are its :class:`SeriesMaskOutputs`."""

    def __init__(self, ctx: MethodContext, options: ExtremalMaskOptions):
        self.ctx, self.options = ctx, options
        self.outputs: SeriesMaskOutputs | None = None

    def initial_mask(self, x: Tensor) -> Tensor:
        o = self.options
        if o.init in ("ones", "uniform", "zeros"):
            return torch.full_like(x, {"ones": 1.0, "uniform": 0.5, "zeros": 0.0}[o.init])
        samples = o.startgrad_samples if o.init == "startgrad_smoothgrad" else 0
        generator = torch.Generator().manual_seed(self.ctx.seed)
        ranks = startgrad_series(self.ctx.model, x, samples, generator, o.startgrad_absolute)
        return 1 - ranks if o.game == "deletion" else ranks

    def attribute(self, x: Tensor, targets: Tensor | None = None) -> Tensor:
        o, model = self.options, self.ctx.model
        deletion = o.game == "deletion"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)  # the same net for every init
            perturbation = PerturbationNet(x.shape[-1]).to(x)
        with torch.no_grad():
            if deletion:
                reference = torch.zeros_like(x) if o.deletion_baseline == "zeros" else (
                    torch.full_like(x, float(x.mean()))
                )  # fmt: skip
                goal = model(reference)
            else:
                goal = model(x)
        mask = self.initial_mask(x).clamp(0, 1).detach().requires_grad_(True)
        optimizer = torch.optim.Adam([mask, *perturbation.parameters()], lr=o.learning_rate)
        attribution = (lambda m: 1 - m) if deletion else (lambda m: m)
        checkpoints = {0: attribution(mask.detach().clone()).cpu()}
        terms: dict[str, list[Tensor]] = {"loss": [], "distortion": [], "size": [],
                                          "perturbation": []}  # fmt: skip
        with recurrent_backward_mode(model, x.device), torch.enable_grad():
            for step in range(o.iterations + 1):
                filler = perturbation(x)
                mixed = mask * x + (1 - mask) * filler
                distortion = (model(mixed) - goal).pow(2).sum(1)
                if deletion:
                    size = (1 - mask).abs().flatten(1).sum(1)
                    penalty = (filler - x).pow(2).flatten(1).sum(1)
                else:
                    size = mask.abs().flatten(1).sum(1)
                    penalty = filler.abs().flatten(1).sum(1)
                per_series = distortion + o.l1 * size + o.perturbation * penalty
                for name, value in zip(terms, (per_series, distortion, size, penalty), strict=True):
                    terms[name].append(value.detach())
                if step == o.iterations:
                    break
                optimizer.zero_grad(set_to_none=True)
                per_series.mean().backward()
                optimizer.step()
                with torch.no_grad():
                    mask.clamp_(0, 1)
                if (step + 1) % o.checkpoint_every == 0:
                    checkpoints[step + 1] = attribution(mask.detach().clone()).cpu()
                if self.progress is not None:
                    self.progress(step + 1, o.iterations, loss=float(per_series.detach().mean()))
        stacked = {name: torch.stack(values, 1).cpu() for name, values in terms.items()}
        self.outputs = SeriesMaskOutputs(
            history=[
                {name: v[b].tolist() for name, v in stacked.items()} for b in range(x.shape[0])
            ],
            checkpoints=checkpoints,
            game=o.game,
        )
        return attribution(mask.detach())


def _scores(ctx, method, x, attribution, targets, options) -> dict[str, Tensor]:
    """Final loss and distortion, and the mean attribution."""
    final = {name: torch.tensor([h[name][-1] for h in method.outputs.history])
             for name in ("loss", "distortion")}  # fmt: skip
    return {**final, "attribution_mean": attribution.flatten(1).mean(1).cpu()}


EXTREMAL_MASK = MethodSpec(
    name="extremal_mask",
    family="mask",
    summary="ExtremalMask: a mask over time and features, with a learned perturbation, that "
    "keeps (or removes) the prediction of every time step.",
    citation="Enguehard, ICML 2023; Bükkaya et al., ICLR 2025 (StartGrad init)",
    options=ExtremalMaskOptions,
    build=ExtremalMask,
    input_kinds=("timeseries",),
    explains="steps",
    stochastic=True,
    scores=_scores,
    has_history=True,
)
