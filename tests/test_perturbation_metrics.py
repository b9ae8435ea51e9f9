"""Degradation, pixel perturbation, Sensitivity-n, ROAR/KAR and GAD's RC/RS on tiny cases whose
answers are computed by hand (linear models, so every output change is a sum of pixel terms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine import explain
from engine.metrics.gad import convex_hull, gad_scores, important_pixels, occlusion_sensitivity
from engine.metrics.perturbation import (
    degradation_curve,
    normalised_auc,
    pixel_perturbation,
    sensitivity_grid,
    sensitivity_n,
)
from engine.metrics.roar import degrade, roar
from engine.models.digits import DigitsCNN, load_digits_data, train_classifier


class LinearLogit(nn.Module):
    """Two classes: logit 0 = w·x, logit 1 = 0 (so S_0 is a sum of pixel terms)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = weights

    def forward(self, x):
        first = (x * self.weights).flatten(1).sum(1)
        return torch.stack([first, torch.zeros_like(first)], 1)


def test_normalised_auc_is_the_trapezoid_over_the_unit_interval():
    curve = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(normalised_auc(curve), torch.tensor([0.5, 1.0]))


def test_degradation_removes_the_top_patch_first_and_fills_negative_means():
    """4×4 image, 2×2 patches ranked by mean heat; step t replaces ranks 0…t−1 by patch means.
    One patch has a negative mean: it must be replaced too (pgig wrote only where mean > 0)."""
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 16
    x[..., 2:, 2:] = torch.tensor([[-1.0, -0.5], [0.0, -0.5]])  # mean −0.5
    weights = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.5, 3.0, 1.0, 1.0],
                            [2.0, 1.0, 4.0, 0.0], [1.0, 1.0, 0.0, 1.0]])  # fmt: skip
    weights = weights.view(1, 1, 4, 4)
    model = LinearLogit(weights)
    heat = torch.tensor([[3.0, 3.0, 1.0, 1.0], [3.0, 3.0, 1.0, 1.0],
                         [2.0, 2.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0]])[None]  # fmt: skip
    curve = degradation_curve(model, x, torch.tensor([0]), heat, patch=2, score="logit")
    order = [(2, 2), (0, 0), (2, 0), (0, 2)]  # patch corners by descending mean heat
    expected, image = [float((x * weights).sum())], x.clone()
    for r, c in order:
        block = image[..., r : r + 2, c : c + 2]
        image[..., r : r + 2, c : c + 2] = block.mean()
        expected.append(float((image * weights).sum()))
    torch.testing.assert_close(curve[0], torch.tensor(expected))
    assert curve[0, 1] != curve[0, 0]  # the top patch is removed at step 1
    lerf = degradation_curve(model, x, torch.tensor([0]), heat, patch=2, score="logit",
                             order="lerf")  # fmt: skip
    torch.testing.assert_close(lerf[0, -1], curve[0, -1])  # all removed: same end point
    torch.testing.assert_close(
        lerf[0, 1], torch.tensor(expected[0]) + _patch_change(x, weights, 0, 2)
    )


def _patch_change(x, weights, r, c):
    block = x[..., r : r + 2, c : c + 2]
    return float(((block.mean() - block) * weights[..., r : r + 2, c : c + 2]).sum())


def test_pixel_perturbation_by_hand():
    """Remove the 25% least salient of 16 pixels (4) with the channel mean: the fractional logit
    change is |Σ_removed w_i (μ − x_i)| / |w·x|."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 4, 4, generator=generator)
    weights = torch.rand(1, 1, 4, 4, generator=generator) + 0.1
    heat = torch.arange(16.0).flip(0).view(1, 4, 4)  # the last four pixels are least salient
    got = pixel_perturbation(LinearLogit(weights), x, torch.tensor([0]), heat, fraction=0.25)
    flat_x, flat_w = x.flatten(), weights.flatten()
    change = ((x.mean() - flat_x[12:]) * flat_w[12:]).sum()
    torch.testing.assert_close(got, (change.abs() / (flat_x * flat_w).sum()).view(1))
    black = pixel_perturbation(LinearLogit(weights), x, torch.tensor([0]), heat, fraction=0.25,
                               fill="black")  # fmt: skip
    torch.testing.assert_close(
        black, ((flat_x[12:] * flat_w[12:]).sum() / (flat_x * flat_w).sum()).view(1)
    )


def test_sensitivity_n_is_one_for_gradient_x_input_on_a_linear_model():
    """For S = w·x and baseline 0, Σ_{i∈S} w_i x_i is exactly the drop: correlation 1 at every n;
    a random attribution correlates far less."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 6, 6, generator=generator)
    weights = torch.randn(1, 1, 6, 6, generator=generator)
    model, targets = LinearLogit(weights), torch.tensor([0, 0])
    grid = sensitivity_grid(36, points=4)
    assert grid[0] == 1 and grid[-1] == 28 and grid == sorted(set(grid))
    exact = sensitivity_n(model, x, targets, (x * weights)[:, 0], grid, subsets=50,
                          seed=0)  # fmt: skip
    torch.testing.assert_close(exact[:, 1:], torch.ones(2, len(grid) - 1))
    torch.testing.assert_close(exact[:, 0], torch.ones(2))  # n = 1: still exact
    noise = torch.rand(2, 6, 6, generator=generator)
    random = sensitivity_n(model, x, targets, noise, grid, subsets=50, seed=0)
    assert random.mean() < 0.5


def test_roar_and_kar_degrade_the_named_pixels():
    images = torch.arange(8.0).view(2, 1, 2, 2)
    heat = torch.tensor([[[4.0, 3.0], [2.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]]])
    fill = torch.tensor([-1.0])
    removed = degrade(images, heat, 0.5, fill, keep=False)
    expected = torch.tensor([[-1.0, -1.0, 2.0, 3.0], [4.0, 5.0, -1.0, -1.0]])
    torch.testing.assert_close(removed.flatten(1), expected)
    kept = degrade(images, heat, 0.25, fill, keep=True)
    torch.testing.assert_close(kept.flatten(1), torch.tensor([[0.0, -1.0, -1.0, -1.0],
                                                             [-1.0, -1.0, -1.0, 7.0]]))  # fmt: skip


def test_roar_on_digits_keeps_accuracy_at_zero_and_reaches_chance_at_all_pixels():
    data = load_digits_data()

    def train(images, labels):
        torch.manual_seed(0)
        return train_classifier(DigitsCNN(), images, labels, epochs=8)

    random_heat = lambda images, labels: torch.rand(images.shape[0], 8, 8)  # noqa: E731
    result = roar((data.train_x, data.train_y), (data.test_x, data.test_y), random_heat, train,
                  fractions=(0.0, 1.0))  # fmt: skip
    assert result[0.0] > 0.9  # nothing removed: a normal model
    assert result[1.0] < 0.2  # every pixel is the mean colour: chance (0.1)


def test_convex_hulls_and_relative_coverage_by_hand():
    corners = np.zeros((6, 6), bool)
    corners[[1, 1, 4, 4], [1, 4, 1, 4]] = True
    hull, degenerate = convex_hull(corners)
    assert not degenerate and hull.sum() == 16 and hull[1:5, 1:5].all()
    line = np.zeros((6, 6), bool)
    line[2, 1:5] = True
    hull, degenerate = convex_hull(line)
    assert degenerate and hull.sum() == 4
    small = np.zeros((6, 6), bool)
    small[[2, 2, 3, 3], [2, 3, 2, 3]] = True
    gad, original = torch.from_numpy(small)[None], torch.from_numpy(corners)[None]
    model = LinearLogit(torch.ones(1, 1, 6, 6))
    x = torch.full((1, 1, 6, 6), 0.5)
    scores = gad_scores(model, x, torch.tensor([0]), gad, original)
    torch.testing.assert_close(scores["gad_rc"], torch.tensor([4 / 16]))
    assert scores["gad_hull_degenerate"].item() == 0
    # RS = |Σ w x over the occluded hull| / its area = 0.5 for GAD (4 px) and supplementary (12).
    torch.testing.assert_close(scores["gad_rs"], torch.tensor([0.5]))
    torch.testing.assert_close(scores["gad_rs_supplementary"], torch.tensor([0.5]))


def test_occlusion_sensitivity_and_important_pixels_by_hand():
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    x = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[[True, False], [False, True]]])
    got = occlusion_sensitivity(LinearLogit(weights), x, torch.tensor([0]), mask)
    torch.testing.assert_close(got, torch.tensor([(1.0 + 4.0) / 2]))
    heat = torch.tensor([[[0.0, 0.0], [3.0, 1.0]]])
    assert important_pixels(heat, "top_fraction", 0.75).flatten().tolist() == [0, 0, 1, 1]
    assert important_pixels(heat, "threshold", threshold=0.5).flatten().tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("metric", ["degradation", "pixel_perturbation", "sensitivity_n"])
def test_perturbation_metrics_through_explain(metric):
    """On the real model and photograph: finite scores under every key, recorded in metadata."""
    small = {"sensitivity_n": {"subsets": 8, "points": 2}, "degradation": {"patch": 32}}
    request = {"name": metric, **small.get(metric, {})}
    result = explain("efficientnet_lite0", "chelsea", "saliency", metrics=[request])
    keys = {k for k in result.scores[0] if k.startswith(metric.split("_")[0])}
    assert keys and all(np.isfinite(result.scores[0][k]) for k in keys)
    assert result.metadata["metrics"][0]["name"] == metric
