"""An input's result does not depend on where it sits in a batch: every random draw (noise
tunnels, IG's uniform baseline, Expected Gradients' references and α, the random orders and
subsets of the perturbation metrics) comes from a generator per input seeded with the seed
alone (the mask methods' batches: tests/test_masks.py::test_batch_equals_one_at_a_time). The
same photograph at positions 0 and 5 of a 6-image batch gets the same map and scores, equal to
those it gets explained alone."""

from __future__ import annotations

import pytest
import torch

from engine import explain
from engine.data import SAMPLES, load_image

SIZE = 64
SEED = 5
METRICS = [
    {"name": "degradation", "patch": 16, "fraction": 0.25},
    "pixel_perturbation",
    {"name": "sensitivity_n", "points": 1, "subsets": 3, "patch": 16},
]
RANDOM_SCORES = ("degradation_random", "pixel_perturbation_random", "sensitivity_n")


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Five different photographs at 64², with the first one repeated at position 5."""
    images = [load_image(name, (SIZE, SIZE))[0] for name in list(SAMPLES)[:5]]
    return torch.stack([*images, images[0]])


CASES = [
    ("smoothgrad", {"samples": 2}),
    ("integrated_gradients", {"steps": 2, "baseline": "uniform"}),
    ("expected_gradients", {"samples": 2}),
]


@pytest.mark.parametrize(("method", "options"), CASES, ids=[c[0] for c in CASES])
def test_positions_0_and_5_equal_the_image_alone(lite0, batch, method, options):
    metrics = METRICS if method == "smoothgrad" else []  # the metrics once: they cost the most
    together = explain(lite0, batch, method, options, seed=SEED, resize="none", metrics=metrics)
    alone = explain(lite0, batch[:1], method, options, seed=SEED, resize="none", metrics=metrics)
    first, last = together.attribution[0], together.attribution[5]
    scale = alone.attribution.abs().max()
    assert scale > 0
    torch.testing.assert_close(first, last, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(first, alone.attribution[0], rtol=0, atol=1e-5 * scale)
    # a different image of the batch gets another map (the draws are not simply shared)
    assert (together.attribution[1] - first).abs().max() > 1e-3 * scale
    for key, value in alone.scores[0].items():
        assert together.scores[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert together.scores[5][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if metrics:
        assert set(RANDOM_SCORES) <= set(alone.scores[0])


def test_another_seed_draws_other_noise(lite0, batch):
    """The seed, not the position, decides the draws: another seed gives another map."""
    options = {"samples": 2}
    five = explain(lite0, batch[:1], "smoothgrad", options, seed=SEED, resize="none")
    six = explain(lite0, batch[:1], "smoothgrad", options, seed=SEED + 1, resize="none")
    scale = five.attribution.abs().max()
    assert (five.attribution - six.attribution).abs().max() > 1e-2 * scale
