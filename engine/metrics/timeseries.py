"""Time-series explanation metrics (spec time_series.md §5; Crabbé & van der Schaar, Dynamask,
ICML 2021; Enguehard, tint).

White-box, against the ground truth A ∈ {0, 1}^{B×T×D}: every series' attribution is min-max
normalised, ã = (a − min)/(max − min + 1e-5), then all B·T·D entries are pooled.
  AUP, AUR: areas under precision p(τ) and recall r(τ) over the thresholds τ (the distinct
  scores; not the PR-AUC); 0 for a constant attribution.
  information I = Σ_{A=1} −log₂ ρ(1 − ã) (↑);  entropy H = Σ_{A=1} −[ã log₂ ρ(ã) +
  (1 − ã) log₂ ρ(1 − ã)] (↓), with ρ(p) = (p + ε)/(1 + ε), ε = 1e-5; AUROC, AUPRC (average
  precision), MAE, MSE. The published ρ(p) = p + ε makes both slightly negative for a constant
  mask (−1.4e-5 bits per entry); dividing by 1 + ε keeps ρ ≤ 1, so I, H ≥ 0 and a constant mask
  scores exactly 0, while other values move by at most 1.4e-5 bits per entry.
Black-box, per series the k = ⌊top·T·D⌋ largest attributions replaced by a baseline (zeros or the
series' mean over time). The classifiers give one logit per step, so p_c = σ(z_t) for the step's
predicted class c (1 − σ(z_t) when c = 0), averaged over series and steps:
  comprehensiveness p_c − p'_c (top removed, ↑), sufficiency p_c − p'_c (only the top kept, ↓),
  accuracy 1[p'_c ≥ ½] (↓), cross-entropy −log p'_c (↑), log-odds log p'_c − log p_c (↓).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from torch import Tensor, nn

EPS = 1e-5


def normalise_per_series(attribution: Tensor) -> Tensor:
    flat = attribution.flatten(1)
    low = flat.min(1, keepdim=True).values
    high = flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low + EPS)).view_as(attribution)


def _log2_regularised(p: np.ndarray) -> np.ndarray:
    """log₂((p + ε)/(1 + ε)): finite at p = 0 and exactly 0 at p = 1."""
    return np.log2((p + EPS) / (1 + EPS))


def white_box(attribution: Tensor, truth: Tensor) -> dict[str, float]:
    """AUP, AUR, information, entropy, AUROC, AUPRC, MAE, MSE of an attribution (B, T, D)."""
    scores = normalise_per_series(attribution.detach().double()).flatten().cpu().numpy()
    truth = truth.flatten().cpu().numpy().astype(int)
    salient = scores[truth == 1]
    information = float(-_log2_regularised(1 - salient).sum()) + 0.0  # + 0.0: no −0.0
    entropy = float(-(salient * _log2_regularised(salient)
                      + (1 - salient) * _log2_regularised(1 - salient)).sum()) + 0.0  # fmt: skip
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    if len(thresholds) < 2:
        aup = aur = 0.0
    else:  # drop the final (p = 1, r = 0) point that has no threshold
        aup = float(np.trapezoid(precision[:-1], thresholds))
        aur = float(np.trapezoid(recall[:-1], thresholds))
    constant = len(thresholds) < 2
    return {
        "aup": aup,
        "aur": aur,
        "information": information,
        "entropy": entropy,
        "auroc": 0.5 if constant else float(roc_auc_score(truth, scores)),
        "auprc": float(average_precision_score(truth, scores)),
        "mae": float(np.abs(truth - scores).mean()),
        "mse": float(((truth - scores) ** 2).mean()),
    }


def _class_probability(logits: Tensor, classes: Tensor) -> Tensor:
    positive = torch.sigmoid(logits)
    return torch.where(classes, positive, 1 - positive)


def black_box(
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    top: float = 0.2,
    baseline: Literal["zeros", "mean"] = "zeros",
) -> dict[str, Tensor]:
    """Comprehensiveness, sufficiency, accuracy, cross-entropy and log-odds under top-k masking,
    per series (B,) (averaged over its time steps)."""
    k = int(top * x[0].numel())
    order = attribution.flatten(1).argsort(1, descending=True)
    top_k = torch.zeros_like(x.flatten(1), dtype=torch.bool)
    top_k.scatter_(1, order[:, :k], True)
    top_k = top_k.view_as(x)
    fill = torch.zeros_like(x) if baseline == "zeros" else x.mean(1, keepdim=True).expand_as(x)
    with torch.no_grad():
        logits = model(x)
        classes = logits > 0
        p = _class_probability(logits, classes)
        removed = _class_probability(model(torch.where(top_k, fill, x)), classes)
        kept_only = _class_probability(model(torch.where(top_k, x, fill)), classes)
    return {
        "comprehensiveness": (p - removed).mean(1),
        "sufficiency": (p - kept_only).mean(1),
        "accuracy": (removed >= 0.5).float().mean(1),
        "cross_entropy": -removed.clamp_min(1e-12).log().mean(1),
        "log_odds": (removed.clamp_min(1e-12).log() - p.log()).mean(1),
    }
