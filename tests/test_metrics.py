"""Quality metrics on constructed cases with known answers, the CoShREM edge measure against the
PyCoShREM package itself, and the metrics through explain()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from engine import explain
from engine.artifacts import write_artifacts
from engine.catalogue import parse_metrics
from engine.data import load_image
from engine.masks.representation import PixelRepresentation
from engine.masks.view import MaskView, heatmap_view
from engine.masks.wavelet import WaveletRepresentation
from engine.metrics.base import MetricError
from engine.metrics.convergence import (
    IterationsToTargetOptions,
    first_reaching,
    interquartile_mean,
    iterations_to_target,
    iterations_to_target_metric,
)
from engine.metrics.cp import StartGradCPOptions, cp_shearletx, cp_startgrad, entropy
from engine.metrics.edges import edge_measure
from engine.metrics.faithfulness import FaithfulnessOptions, faithfulness, faithfulness_curves
from engine.metrics.glossary import SCORES, UNDEFINED_WHEN
from engine.metrics.hallucination import (
    HallucinationOptions,
    hallucination,
    hallucination_score,
)
from engine.result import json_text


def pixel_view(model, x, mask, targets=None, seed=0) -> MaskView:
    representation = PixelRepresentation()
    targets = model(x).argmax(1) if targets is None else targets
    noise = representation.noise_model(x, [x], "uniform")
    return MaskView(model, x, targets, representation, [x], [mask], noise, seed)


# --- CoShREM edges ---------------------------------------------------------------------------


def pycoshrem_edges(image: np.ndarray, min_contrast: float) -> np.ndarray:
    """The reference: PyCoShREM 0.0.2, with the two NumPy aliases it needs restored."""
    np.float, np.complex_ = float, np.complex128  # removed in NumPy 1.24 / 2.0
    try:
        from coshrem.shearletsystem import EdgeSystem

        edges, _ = EdgeSystem(*image.shape).detect(image, min_contrast=min_contrast)
    finally:
        del np.float, np.complex_
    return edges


@pytest.mark.parametrize("case", ["disc_48", "disc_50x63", "chelsea_64"])
def test_edge_measure_equals_pycoshrem(case):
    """To 1e-5 (measured ≤ 5.4e-6), on constructed edges and on a photograph's integer grey
    image as the Hallucination score feeds it."""
    if case == "chelsea_64":
        image = np.trunc(85 * load_image("chelsea", (64, 64))[0].mean(0).double().numpy())
    else:
        rows, cols = (48, 48) if case == "disc_48" else (50, 63)
        yy, xx = np.mgrid[:rows, :cols]
        disc = 60.0 * ((yy - rows / 2) ** 2 + (xx - cols / 3) ** 2 < (rows / 4) ** 2)
        noise = 8 * np.random.default_rng(0).random((rows, cols))
        image = np.trunc(disc + 40.0 * (xx > 0.7 * cols) + noise)
    reference = pycoshrem_edges(image, 3)
    ours = edge_measure(torch.tensor(image), 3).numpy()
    assert reference.max() > 0.5  # there are edges to compare
    assert np.abs(ours - reference).max() < 1e-5


def test_step_edge_is_found_on_the_step_and_nowhere_else():
    image = torch.zeros(64, 64)
    image[:, 32:] = 80.0
    edges = edge_measure(image, 3) > 0.1
    # The FFT is circular: columns 63 → 0 are the image's second step; leave them out.
    inner = edges[:, 2:62]
    columns = inner.nonzero()[:, 1] + 2
    assert inner.any(1).all()  # every row crosses the edge
    assert ((columns >= 30) & (columns <= 33)).all()


def test_flat_image_has_no_edges_and_a_disc_has_a_ring():
    assert edge_measure(torch.full((64, 64), 40.0), 3).abs().max() == 0
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    radius = ((yy - 64) ** 2 + (xx - 64) ** 2).sqrt()
    edges = edge_measure(80.0 * (radius < 32), 3) > 0.1
    found = radius[edges]
    assert found.numel() > 150 and ((found - 32).abs() < 3).all()
    angles = torch.atan2(yy[edges] - 64, xx[edges] - 64)
    assert torch.histc(angles, bins=8, min=-math.pi, max=math.pi).min() > 0  # all round


# --- Hallucination ---------------------------------------------------------------------------


def test_hallucination_score_by_hand():
    image = torch.zeros(1, 5, 5, dtype=torch.bool)
    image[0, 2, 2] = True  # one edge pixel; dilated: the 3×3 block around it
    explanation = torch.zeros(1, 5, 5, dtype=torch.bool)
    explanation[0, 1, 1] = explanation[0, 0, 4] = explanation[0, 4, 0] = True
    score, hallucinated = hallucination_score(image, explanation)
    assert score.item() == 2.0  # (0,4) and (4,0) lie outside the dilation; (1,1) inside
    assert hallucinated[0].nonzero().tolist() == [[0, 4], [4, 0]]


def test_explanation_equal_to_image_has_no_hallucination_and_an_added_edge_is_found(lite0):
    x = torch.full((1, 3, 96, 96), 0.3)
    x[..., 20:70, 10:40] = 0.9  # an object
    model = lite0.module.eval()
    same = hallucination(pixel_view(model, x, torch.ones(1, 1, 96, 96)), HallucinationOptions())
    assert same["hallucination"].item() == 0 and same["image_edges"].item() > 50
    view = pixel_view(model, x, torch.ones(1, 1, 96, 96))
    view.masks = [torch.where(torch.arange(96) >= 70, 0.2, 1.0).expand(1, 1, 96, 96)]
    # the mask's step at column 70 lies in a flat part of the image: an artificial edge
    added = hallucination(view, HallucinationOptions())
    assert added["hallucination"].item() > 0.2


# --- CP scores -------------------------------------------------------------------------------


def test_entropy_by_hand():
    values = [torch.tensor([[1.0, 1.0, 0.0, 0.0]])]
    expected = -2 * 0.5 * math.log(0.5 + 1e-7) - 2 * 0 * math.log(1e-7)
    assert entropy(values).item() == pytest.approx(expected, rel=1e-6)


def test_explanation_equal_to_image_has_cp_one(lite0, chelsea):
    model = lite0.module.eval()
    x = chelsea / chelsea.max()  # max-normalisation leaves it unchanged
    with torch.no_grad():
        view = pixel_view(model, x, torch.ones(1, 1, 224, 224))
        sx = cp_shearletx(view, None)
        sg = cp_startgrad(view, StartGradCPOptions(noise_samples=2))
    for key in ("cp_l1_sx", "cp_l1_pixel_sx", "cp_entropy_sx"):
        assert sx[key].item() == pytest.approx(1.0, abs=1e-5), key
    for key in ("retained_probability_sg", "cp_l1_sg", "cp_pixel_sg"):
        assert sg[key].item() == pytest.approx(1.0, abs=1e-5), key


def test_startgrad_cp_of_a_half_mask_matches_the_formula(lite0, chelsea):
    """r by hand: x̃_i = m x + (1 − m)(μ + σ u_i), u_i ~ U[−1, 1) from the view's generator."""
    model = lite0.module.eval()
    mask = torch.zeros(1, 1, 224, 224)
    mask[..., :, :112] = 1.0  # keep the left half
    view = pixel_view(model, chelsea, mask)
    with torch.no_grad():
        scores = cp_startgrad(view, StartGradCPOptions(noise_samples=4))
        generator = view.generators()[0]
        u = torch.empty(4, 3, 224, 224).uniform_(-1, 1, generator=generator)
        mean, std = chelsea.mean(), chelsea.std()
        noisy = (mask * chelsea + (1 - mask) * (mean + std * u)).clamp(0, 1)
        target = view.targets.item()
        r = (model(noisy).softmax(1)[:, target] / model(chelsea).softmax(1)[0, target]).mean()
    share = (mask * chelsea).sum() / chelsea.sum()
    assert scores["retained_probability_sg"].item() == pytest.approx(r.item(), rel=1e-4)
    assert scores["cp_l1_sg"].item() == pytest.approx((r / share).item(), rel=1e-4)
    assert scores["cp_pixel_sg"].item() == pytest.approx((r / share).item(), rel=1e-4)


def test_wavelet_all_ones_mask_has_cp_one(lite0):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    representation = WaveletRepresentation()
    coefficients = representation.decompose(x)
    masks = [torch.ones(1, 1, *c.shape[2:]) for c in coefficients]
    model = lite0.module.eval()
    noise = representation.noise_model(x, coefficients, "uniform")
    view = MaskView(model, x, model(x).argmax(1), representation, coefficients, masks, noise)
    with torch.no_grad():
        scores = cp_startgrad(view, StartGradCPOptions(noise_samples=2))
    assert scores["cp_l1_sg"].item() == pytest.approx(1.0, abs=1e-5)
    assert scores["cp_pixel_sg"].item() == pytest.approx(1.0, abs=1e-3)


def test_heatmap_view_is_the_min_max_normalised_map(lite0, chelsea):
    heatmap = torch.arange(224 * 224, dtype=torch.float32).view(1, 224, 224) + 5
    view = heatmap_view(lite0.module, chelsea, torch.tensor([285]), heatmap)
    assert view.masks[0].min() == 0 and view.masks[0].max() == 1
    torch.testing.assert_close(view.explanation(), view.masks[0] * chelsea)


# --- Faithfulness ----------------------------------------------------------------------------


class RegionModel(nn.Module):
    """Two classes; class 0's logit falls with the squared change of the pixels in a region, so
    only that region matters: p₀ = σ(−50 · mean_R (x − x₀)²) (p₀ = ½ on x₀)."""

    def __init__(self, original: torch.Tensor, region: torch.Tensor):
        super().__init__()
        self.original, self.region = original, region

    def forward(self, x):
        change = ((x - self.original) ** 2 * self.region).sum((1, 2, 3)) / self.region.sum()
        return torch.stack([-50 * change, torch.zeros_like(change)], dim=1)


class KeptPixelsModel(nn.Module):
    """Class 0's logit is Σ_i w_i · [pixel i is its original 0.1 or 0.9 in every channel]; the
    noise U[μ−σ, μ+σ] of an image of 0.1s and 0.9s never hits those values, so the logit says
    exactly which pixels an obfuscation kept."""

    def __init__(self, original: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        self.original, self.weights = original, weights

    def forward(self, x):
        kept = (x == self.original).all(1).flatten(1).float()  # (B, pixels)
        logit = kept @ self.weights
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def test_faithfulness_by_hand():
    """Four pixels with logit weights 3, 2, 1, 0, ranked in that order; 3 keep-fractions
    (0, ½, 1 → 0, 2, 4 pixels). With d(q) = (σ(6) − p(q))², by hand:
    keep top:   p = σ(0), σ(5), σ(6)  → d = (σ6 − ½)², (σ6 − σ5)², 0
    remove top: p = σ(6), σ(1), σ(0)  → d = 0, (σ6 − σ1)², (σ6 − ½)²
    and each area is ½·(d₀/2 + d₁ + d₂/2)."""
    x = torch.tensor([0.9, 0.1, 0.9, 0.1]).view(1, 1, 2, 2).expand(1, 3, 2, 2).contiguous()
    model = KeptPixelsModel(x, torch.tensor([3.0, 2.0, 1.0, 0.0]))
    mask = torch.tensor([0.9, 0.6, 0.3, 0.0]).view(1, 1, 2, 2)  # ranks pixels 0, 1, 2, 3
    scores = faithfulness(pixel_view(model, x, mask, torch.tensor([0])),
                          FaithfulnessOptions(steps=3, noise_samples=3))  # fmt: skip
    s = torch.sigmoid
    full = s(torch.tensor(6.0))
    keep = [(full - 0.5) ** 2, (full - s(torch.tensor(5.0))) ** 2, 0.0]
    remove = [0.0, (full - s(torch.tensor(1.0))) ** 2, (full - 0.5) ** 2]
    area = lambda d: 0.5 * (d[0] / 2 + d[1] + d[2] / 2)  # noqa: E731
    assert scores["auc_keep_top"].item() == pytest.approx(float(area(keep)), rel=1e-5)
    assert scores["auc_remove_top"].item() == pytest.approx(float(area(remove)), rel=1e-5)
    assert scores["faithfulness"].item() == pytest.approx(float(area(remove) - area(keep)),
                                                          rel=1e-5)  # fmt: skip


def test_faithfulness_of_the_true_ranking_and_its_reverse():
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    region = torch.zeros(1, 1, 20, 20)
    region[..., 5:10, 5:10] = 1  # 25 of 400 pixels
    model = RegionModel(x, region)
    targets = torch.tensor([0])
    right = pixel_view(model, x, region + 0.01 * x[:, :1], targets)
    curves = faithfulness_curves(right, steps=21, noise_samples=2)
    keep, remove = curves["keep_top"][0], curves["remove_top"][0]
    # keeping the top 10 % (40 pixels ⊇ the region) leaves p₀ unchanged; removing any does not
    assert (keep[2:] == 0).all() and keep[0] > 0.05
    assert remove[0] == 0 and (remove[1:] > 0.05).all()
    reverse = pixel_view(model, x, 1 - region, targets)
    scores = faithfulness(right, FaithfulnessOptions(noise_samples=2))
    reversed_scores = faithfulness(reverse, FaithfulnessOptions(noise_samples=2))
    assert scores["faithfulness"].item() > 0.15 > -0.15 > reversed_scores["faithfulness"].item()
    assert scores["faithfulness"] == scores["auc_remove_top"] - scores["auc_keep_top"]


def test_wavelet_faithfulness_ranks_within_subbands(lite0):
    """Per subband, keep-fraction 1/2 keeps half of every group."""
    from engine.metrics.faithfulness import rank_positions

    values = [torch.rand(1, 4, 4), torch.rand(3, 8, 8) + 5]
    ranks = rank_positions(values, True, torch.Generator().manual_seed(0))
    assert [r.max().item() for r in ranks] == [15, 191]
    joint = rank_positions(values, False, torch.Generator().manual_seed(0))
    assert joint[1].max().item() == 191 and joint[0].min().item() == 192  # all below group 1


# --- Iterations to target --------------------------------------------------------------------


def test_interquartile_mean_and_first_reaching_by_hand():
    values = np.array([1.0, 2, 3, 4, 100, -50, 5, 6])
    assert interquartile_mean(values) == pytest.approx(3.5)  # mean of 2, 3, 4, 5
    assert first_reaching(np.array([0.0, 1, 2, 3]), 2) == 2
    assert first_reaching(np.array([3.0, 2, 1]), 1.5, increasing=False) == 2
    assert first_reaching(np.array([0.0, 1]), 5) == 2


def test_iterations_to_target_on_constructed_curves():
    steps = np.arange(11.0)
    reference = np.tile(steps / 2, (6, 1))  # reaches 5 at step 10 (its final)
    candidate = np.tile(np.minimum(steps * 2.5, 8), (6, 1))  # ≥ 5 from step 2
    found = iterations_to_target(candidate, reference, bootstrap=20)
    assert found["iterations"] == 2 and found["speedup"] == 5
    assert found["iterations_std"] == 0 and found["speedup_mean"] == 5
    never = iterations_to_target(reference * 0.1, reference, bootstrap=5)
    assert never["iterations"] == 10 and never["speedup"] == 1


def test_iterations_to_target_metric_reads_the_history():
    history = [{"cp_pixel_sg": [1.0, 3.0, 7.0]}, {"cp_pixel_sg": [1.0, 2.0, 2.5]}]
    view = MaskView(None, torch.zeros(2, 3, 4, 4), torch.zeros(2), None, [], [], None,
                    history=history)  # fmt: skip
    scores = iterations_to_target_metric(view, IterationsToTargetOptions(target=3.0))
    assert scores["iterations_to_target"].tolist() == [1, 3]
    assert scores["target_reached"].tolist() == [1, 0]


# --- Through explain() -----------------------------------------------------------------------


def test_metric_requests_are_validated():
    with pytest.raises(MetricError, match="unknown metric"):
        parse_metrics(["nope"])
    with pytest.raises(MetricError, match="steps"):
        parse_metrics([{"name": "faithfulness", "steps": 1}])
    with pytest.raises(MetricError, match="twice"):
        parse_metrics(["hallucination", {"name": "hallucination"}])
    with pytest.raises(MetricError, match="target"):
        parse_metrics(["iterations_to_target"])  # the target has no default


def test_mask_history_logs_startgrad_cp_and_metrics_land_in_scores(lite0):
    metrics = ["cp_shearletx", {"name": "iterations_to_target", "target": 0.5}]
    options = {"iterations": 3, "noise_samples": 2, "image_size": 64}
    result = explain(lite0, "chelsea", "pixelmask", options, metrics=metrics)
    history = result.outputs.history[0]
    assert history["cp_l1_sg"][0] == pytest.approx(1.0, abs=1e-5)  # all-ones mask at step 0
    assert history["cp_pixel_sg"][0] == pytest.approx(1.0, abs=1e-5)
    scores = result.scores[0]
    assert scores["iterations_to_target"] == 0 and scores["target_reached"] == 1
    assert scores["cp_l1_sx"] > 0
    assert [m["name"] for m in result.metadata["metrics"]] == [
        "cp_shearletx",
        "iterations_to_target",
    ]
    with pytest.raises(MetricError, match="history"):
        explain(lite0, "chelsea", "saliency", metrics=[{"name": "iterations_to_target",
                                                        "target": 1}])  # fmt: skip


def strict_json(text: str):
    """JSON as the standard defines it: a bare NaN or Infinity fails the test."""

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


CP_RATIOS = {"cp_l1_sx", "cp_l1_pixel_sx", "cp_entropy_sx", "cp_l1_sg", "cp_pixel_sg"}


def test_cp_ratios_of_a_black_image_are_null_with_a_reason_in_strict_json(lite0, tmp_path):
    """Every CP ratio of an all-black image divides by the image's own information, 0: 0/0.
    summary.json and history.json held bare NaN (not JSON); now such a score is null with its
    reason in undefined_scores, and the retained probability, which is defined, stays."""
    black = torch.zeros(3, 64, 64)
    options = {"iterations": 2, "noise_samples": 2, "image_size": 64}
    result = explain(lite0, black, "pixelmask", options, metrics=["cp_shearletx", "cp_startgrad"])
    assert {key for key, value in result.scores[0].items() if math.isnan(value)} == CP_RATIOS
    paths = write_artifacts(result, tmp_path)
    summary = strict_json(paths["summary.json"].read_text())
    assert {key for key, value in summary["scores"].items() if value is None} == CP_RATIOS
    assert summary["undefined_scores"] == {key: UNDEFINED_WHEN[key] for key in CP_RATIOS}
    assert "0/0" in summary["undefined_scores"]["cp_l1_sx"]
    assert summary["scores"]["retained_probability_sg"] == pytest.approx(1.0)
    history = strict_json(paths["history.json"].read_text())
    assert history["cp_pixel_sg"] == [None] * 3 and None not in history["retained_probability"]
    with pytest.raises(ValueError, match="not JSON compliant"):  # none can slip out again
        json_text({"score": math.nan})
    assert set(UNDEFINED_WHEN) <= set(SCORES)  # every key that can be undefined is documented


# --- Passes: batched, as listed, independent of batch and rows per pass ------------------------


class RowCounter(nn.Module):
    """A small real classifier (stride-8 convolution, pooling, 10 classes) that records the rows
    of every pass it runs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(16, 10))  # fmt: skip
        self.passes: list[int] = []

    def forward(self, x):
        self.passes.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize(
    "metric",
    ["cp_shearletx", "cp_startgrad", "hallucination", "faithfulness", "degradation",
     "pixel_perturbation", "sensitivity_n"],
)  # fmt: skip
def test_each_metric_runs_the_rows_its_listing_states_in_full_passes(metric):
    """The listing's cost (``model_passes_224``) is the rows the metric puts through the model
    at 224², and they go through in passes of the rows-per-pass budget (every pass but the last
    of a stream full)."""
    from engine.catalogue import get_metric
    from engine.metrics.base import compute_metrics
    from engine.runtime import max_rows_per_pass

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model = RowCounter().eval()
    heat = torch.rand(1, 224, 224, generator=torch.Generator().manual_seed(1))
    view = heatmap_view(model, x, torch.tensor([3]), heat)
    scores = compute_metrics(view, parse_metrics([metric]))
    assert all(torch.isfinite(v).all() for v in scores.values())
    listed = get_metric(metric).describe()["model_passes_224"]
    assert sum(model.passes) == listed
    budget = max_rows_per_pass()
    assert all(rows <= budget for rows in model.passes)
    assert len(model.passes) <= math.ceil(listed / budget) + 1  # + 1: a separate reference pass


def test_faithfulness_of_an_image_does_not_depend_on_its_batch_nor_the_rows_per_pass():
    """A wavelet mask (several coefficient groups, each drawing noise): image 1's curves scored
    in a batch of two, three rows per pass, equal its curves scored alone at the default budget."""
    from engine.runtime import rows_per_pass_at_most

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)).eval()
    representation = WaveletRepresentation()
    coefficients = representation.decompose(x)
    masks = [torch.rand(2, 1, *c.shape[2:], generator=generator) for c in coefficients]
    noise = representation.noise_model(x, coefficients, "uniform")
    targets = torch.tensor([0, 2])
    both = MaskView(model, x, targets, representation, coefficients, masks, noise, seed=5)
    second = [c[1:] for c in coefficients]
    alone = MaskView(model, x[1:], targets[1:], representation, second, [m[1:] for m in masks],
                     representation.noise_model(x[1:], second, "uniform"), seed=5)  # fmt: skip
    with torch.no_grad(), rows_per_pass_at_most(3):
        batched = faithfulness_curves(both, steps=6, noise_samples=2)
    with torch.no_grad():
        single = faithfulness_curves(alone, steps=6, noise_samples=2)
    for curve in ("keep_top", "remove_top"):
        torch.testing.assert_close(batched[curve][1], single[curve][0], rtol=1e-5, atol=1e-7)
        assert single[curve][0].abs().max() > 0  # the noise matters to this model
