"""Iterations-to-target: how many optimisation steps one initialisation needs to reach what
another reaches at the end (Bükkaya et al., ICLR 2025, "reaching target metrics faster").

Across images, a per-iteration statistic S_t of a metric curve (default: the interquartile mean)
is computed for a candidate init and for a reference init. The target is the reference's final
value S_T; the candidate needs idx = min{t : S_t ≥ S_T} iterations (T if never), a speed-up of
T / max(idx, 1). Bootstrap resamples of the images give mean ± std of both. (The original code
also averages each S_t over 500 inner resamples; that only smooths S_t and is left out.)

Per request, ``iterations_to_target`` gives one image's first iteration at which a curve of its
history reaches a given value (e.g. the other init's final CP-pixel).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from scipy.stats import trim_mean
from torch import Tensor

from engine.masks.view import MaskView
from engine.metrics.base import MetricOptions, MetricSpec


def interquartile_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean after dropping the lowest and the highest ⌊n/4⌋ values along ``axis``."""
    return trim_mean(values, 0.25, axis=axis)


STATISTICS = {"iqm": interquartile_mean, "median": lambda v, axis=0: np.median(v, axis=axis),
              "mean": lambda v, axis=0: np.mean(v, axis=axis)}  # fmt: skip


def first_reaching(curve: np.ndarray, target: float, increasing: bool = True) -> int:
    """First index where ``curve`` ≥ target (≤ when not ``increasing``); len(curve) if never."""
    hits = np.flatnonzero(curve >= target if increasing else curve <= target)
    return int(hits[0]) if hits.size else len(curve)


def iterations_to_target(
    candidate: np.ndarray,
    reference: np.ndarray,
    statistic: str = "iqm",
    bootstrap: int = 250,
    seed: int = 0,
) -> dict[str, float]:
    """Curves (images, T + 1) of two inits on the same images → iterations the candidate needs
    to reach the reference's final statistic, and the speed-up, with bootstrap mean ± std."""
    candidate, reference = np.asarray(candidate, float), np.asarray(reference, float)
    if candidate.shape != reference.shape or candidate.ndim != 2:
        raise ValueError("candidate and reference must be (images, iterations) of one shape")
    summarise = STATISTICS[statistic]
    last = candidate.shape[1] - 1

    def measure(rows: np.ndarray) -> tuple[int, float]:
        threshold = summarise(reference[rows], axis=0)[-1]
        index = min(first_reaching(summarise(candidate[rows], axis=0), threshold), last)
        return index, last / max(index, 1)

    index, speedup = measure(np.arange(len(candidate)))
    rng = np.random.default_rng(seed)
    draws = np.array([measure(rng.integers(0, len(candidate), len(candidate)))
                      for _ in range(bootstrap)])  # fmt: skip
    return {
        "iterations": float(index),
        "speedup": float(speedup),
        "iterations_mean": float(draws[:, 0].mean()),
        "iterations_std": float(draws[:, 0].std()),
        "speedup_mean": float(draws[:, 1].mean()),
        "speedup_std": float(draws[:, 1].std()),
        "reference_final": float(summarise(reference, axis=0)[-1]),
        "candidate_final": float(summarise(candidate, axis=0)[-1]),
    }


Curve = Literal["cp_pixel_sg", "cp_l1_sg", "retained_probability", "distortion", "loss"]


class IterationsToTargetOptions(MetricOptions):
    target: float = Field(..., description="The value to reach, e.g. another init's final.")
    curve: Curve = Field("cp_pixel_sg", description="History curve; losses must fall to it.")

    def model_passes(self, height: int, width: int) -> int:
        return 0  # reads the mask method's history


def iterations_to_target_metric(
    view: MaskView, options: IterationsToTargetOptions
) -> dict[str, Tensor]:
    increasing = options.curve not in ("distortion", "loss")
    found = [
        first_reaching(np.asarray(h[options.curve]), options.target, increasing)
        for h in view.history
    ]
    reached = [float(i < len(h[options.curve])) for i, h in zip(found, view.history, strict=True)]
    return {
        "iterations_to_target": torch.tensor(found, dtype=torch.float32),
        "target_reached": torch.tensor(reached),
    }


ITERATIONS_TO_TARGET = MetricSpec(
    name="iterations_to_target",
    summary="First iteration at which a history curve reaches a target value (the number "
    "of iterations run + 1 when it never does; see target_reached).",
    definition="Iterations to target (Bükkaya et al., ICLR 2025)",
    options=IterationsToTargetOptions,
    compute=iterations_to_target_metric,
    keys=("iterations_to_target", "target_reached"),
    needs_history=True,
)
