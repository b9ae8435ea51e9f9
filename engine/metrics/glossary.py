"""What every score key of a result means, which direction is better, and which score is its
random baseline: the one place the CLI, ``GET /scores``, the job JSON and the web page read it
from. A test checks that every key a method or metric writes is listed here."""

from __future__ import annotations

import math
from typing import Literal

Better = Literal["higher", "lower"] | None  # None: a property of the explanation, not a grade

SCORES: dict[str, tuple[str, Better]] = {
    # gradient methods along a path (IG, Pattern-Guided IG)
    "completeness_gap": ("Σ attribution − (S(x) − S(baseline)); 0 when the quadrature is exact "
                         "(IG's completeness axiom).", None),
    "score_difference": ("S(x) − S(baseline): what the attributions should add up to.", None),
    # mask methods (their own optimisation)
    "retained_probability": ("p(x̃)/p(x): the target probability of the masked input over the "
                             "original's, averaged over noise draws. A ratio from 0 up, not a "
                             "probability: 1 = as likely as the original, below 1 = the mask "
                             "lost evidence, above 1 = the masked input makes the class more "
                             "likely than the original did.", "higher"),
    "mask_mean": ("Mean mask value: the share of coefficients kept.", "lower"),
    "loss": ("Final value of the optimised loss.", "lower"),
    "iterations": ("Iterations the optimisation ran.", None),
    "distortion": ("Final distortion term of the loss.", "lower"),
    "attribution_mean": ("Mean attribution (the mask's size for a mask method).", None),
    # GAD
    "gad_rc": ("Relative coverage: area of the GAD hull over the original explanation's hull.",
               None),
    "gad_hull_degenerate": ("1 when a hull was degenerate (flat), so RC is unreliable.", None),
    "gad_rs": ("Occlusion sensitivity of the GAD region: score drop per occluded pixel.",
               "higher"),
    "gad_rs_supplementary": ("Occlusion sensitivity of the original region outside GAD's.",
                             "lower"),
    "gad_pixel_share": ("Share of pixels GAD keeps.", None),
    # quality metrics (GET /quality-metrics)
    "cp_l1_sx": ("CP-ℓ1: class probability per unit of kept ℓ1 (ShearletX paper).", "higher"),
    "cp_l1_pixel_sx": ("CP-ℓ1-pixel: class probability per unit of kept pixel ℓ1.", "higher"),
    "cp_entropy_sx": ("CP-Entropy: class probability per unit of the explanation's entropy.",
                      "higher"),
    "retained_probability_sg": ("p(x̃)/p(x) over noisy obfuscations (StartGrad paper): a "
                                "ratio from 0 up, 1 = as likely as the original, above 1 = "
                                "more likely.", "higher"),
    "cp_l1_sg": ("Retained probability per unit of kept coefficients (StartGrad).", "higher"),
    "cp_pixel_sg": ("Retained probability per unit of kept pixels (StartGrad).", "higher"),
    "hallucination": ("Edges the explanation shows away from the image's edges, per edge of the "
                      "image (0: none made up; above 1: more made-up edges than the image has).",
                      "lower"),
    "image_edges": ("Edge pixels found in the image (context for hallucination).", None),
    "faithfulness": ("AUC of damage with the top features removed minus with only them kept.",
                     "higher"),
    "auc_keep_top": ("AUC of the target probability keeping only the top fraction.", "higher"),
    "auc_remove_top": ("AUC of the target probability removing the top fraction.", "lower"),
    "iterations_to_target": ("First iteration at which the curve reached its target.", "lower"),
    "target_reached": ("1 when the curve reached its target at all.", "higher"),
    "degradation_morf": ("AUC of the probability removing the most relevant patches first.",
                         "lower"),
    "degradation_lerf": ("AUC of the probability removing the least relevant patches first.",
                         "higher"),
    "degradation_random": ("The same AUC for a random order: the baseline MoRF and LeRF are "
                           "judged by.", None),
    "pixel_perturbation": ("Fractional logit change removing the least salient pixels.",
                           "lower"),
    "pixel_perturbation_random": ("The same for as many random pixels (the baseline).", None),
    "sensitivity_n": ("Correlation of summed attribution with the logit drop (Sensitivity-n).",
                      "higher"),
    # time series: black box (top features masked)
    "comprehensiveness": ("Probability drop with the top features removed.", "higher"),
    "sufficiency": ("Probability drop with only the top features kept.", "lower"),
    "accuracy": ("Accuracy with the top features removed.", "lower"),
    "cross_entropy": ("Cross-entropy with the top features removed.", "higher"),
    "log_odds": ("Log-odds change with the top features removed.", "lower"),
    # time series: white box (against the ground truth)
    "aup": ("Area under precision over thresholds.", "higher"),
    "aur": ("Area under recall over thresholds.", "higher"),
    "information": ("Information of the salient entries, bits.", "higher"),
    "entropy": ("Entropy of the salient entries, bits.", "lower"),
    "auroc": ("Area under the ROC curve against the truth.", "higher"),
    "auprc": ("Average precision against the truth.", "higher"),
    "mae": ("Mean absolute error against the truth.", "lower"),
    "mse": ("Mean squared error against the truth.", "lower"),
}  # fmt: skip


# The random-baseline counterpart of a graded score, written by the same metric: a score worse
# than its counterpart ranks features no better than chance.
BASELINES: dict[str, str] = {
    "degradation_morf": "degradation_random",
    "degradation_lerf": "degradation_random",
    "pixel_perturbation": "pixel_perturbation_random",
}


def score_baselines(
    scores: dict[str, float | None],
) -> dict[str, dict[str, str | float | bool | None]]:
    """Each score of ``scores`` that has a random-baseline counterpart in ``scores`` →
    ``{"baseline": counterpart key, "value": its value, "worse": bool}``. ``worse``: a
    lower-is-better score above its baseline, or a higher-is-better one below it; absent when
    either value is undefined (None, NaN or ±∞). The job JSON, summary.json and the CLI carry
    this as ``baselines``."""
    found: dict[str, dict[str, str | float | bool | None]] = {}
    for key, other in BASELINES.items():
        if key not in scores or other not in scores:
            continue
        value, baseline = scores[key], scores[other]
        defined = baseline is not None and math.isfinite(baseline)
        entry: dict[str, str | float | bool | None] = {
            "baseline": other, "value": baseline if defined else None,
        }  # fmt: skip
        if defined and value is not None and math.isfinite(value):
            better = SCORES[key][1]
            entry["worse"] = value > baseline if better == "lower" else value < baseline
        found[key] = entry
    return found


# Why a score can have no value: a ratio whose denominator is the image's own information is 0/0
# on an image without any (all black). JSON has no NaN: such a score is null, and the result's
# ``undefined_scores`` gives the reason (finite_scores).
_NO_ENERGY = "the image has no energy (all black), so "
UNDEFINED_WHEN: dict[str, str] = {
    "cp_l1_sx": _NO_ENERGY + "the kept share Σ|m ⊙ c| / Σ|c| is 0/0",
    "cp_l1_pixel_sx": _NO_ENERGY + "the kept share Σ|E| / Σ|x| is 0/0",
    "cp_entropy_sx": _NO_ENERGY + "the entropy ratio H(kept) / H(image) is 0/0",
    "cp_l1_sg": _NO_ENERGY + "the kept share Σ|m ⊙ c| / Σ|c| is 0/0",
    "cp_pixel_sg": _NO_ENERGY + "the kept share Σ|P| / Σ|x| is 0/0",
}
UNDEFINED_OTHERWISE = "the computation gave no finite number (NaN or ±∞) for this input"


def undefined_reason(key: str) -> str:
    """Why score ``key`` can be undefined (null in JSON)."""
    return UNDEFINED_WHEN.get(key, UNDEFINED_OTHERWISE)


def finite_scores(
    scores: dict[str, float | None],
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Scores as JSON can hold them: an undefined score (NaN, ±∞ or already None) becomes None,
    and the second dict gives each such key's reason (:func:`undefined_reason`)."""
    finite = {key: value if value is not None and math.isfinite(value) else None
              for key, value in scores.items()}  # fmt: skip
    reasons = {key: undefined_reason(key) for key, value in finite.items() if value is None}
    return finite, reasons


def describe_scores() -> dict[str, dict[str, str | None]]:
    """Every score key → ``{"meaning": ..., "better": "higher" | "lower" | None, "baseline":
    the key of its random-baseline counterpart, or None}``."""
    return {key: {"meaning": meaning, "better": better, "baseline": BASELINES.get(key)}
            for key, (meaning, better) in SCORES.items()}  # fmt: skip
