"""The perturbation metrics against Quantus 0.6 on the same model, inputs and attributions.

- Degradation (our curve) = Quantus RegionPerturbation, given our fill (each removed patch gets
  its own per-channel mean; Quantus's "mean" baseline is the whole image's): to 1e-5.
- Pixel perturbation (the k least salient pixels → the channel mean, |ΔS|/|S| of the logit) =
  Quantus PixelFlipping of the negated map with k pixels in one step, same fill: to 1e-6.
- Sensitivity-n at one n (Ancona et al.: random subsets of n pixels set to 0, Pearson over the
  subsets per image) is Quantus FaithfulnessCorrelation; both draw their own random subsets,
  so with 1000 subsets they agree to 0.05 (sampling error ≈ 0.01 per image).
- Quantus SensitivityN is another definition: it removes features in descending order and
  correlates, across the images of a batch, each step's attribution sum with the cumulative
  change. On a linear model with R = x ⊙ ∇S (exact for a zero baseline) Ancona's score is 1 at
  every n; Quantus's is 1 at the first step only (where the two coincide) and lower after it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
from torch import nn

from engine.data import load_image
from engine.explain import attribute
from engine.metrics.perturbation import degradation_curve, pixel_perturbation, sensitivity_n
from engine.models.digits import load_digits_data, train_digits_cnn

warnings.filterwarnings("ignore", module="quantus")


@pytest.fixture(scope="module")
def digits():
    data = load_digits_data(size=8)
    model = train_digits_cnn(data, seed=0, epochs=10)
    x = data.test_x[:16]
    with torch.no_grad():
        targets = model(x).argmax(1)
    heat = attribute(model, x, "integrated_gradients", {"steps": 16}, targets=targets).sum(1)
    return model, x, targets, heat


def quantus_call(metric, model, x, targets, heat, softmax: bool) -> np.ndarray:
    batch = {"x_batch": x.numpy(), "y_batch": targets.numpy(), "a_batch": heat[:, None].numpy()}
    return np.array(metric(model=model, device="cpu", softmax=softmax, **batch))


def patch_channel_means(height: int, width: int):
    """Quantus perturb_func: every channel of the given (flattened) pixels → their mean."""

    def perturb(arr, indices, **kwargs):
        out = arr.copy()
        for b in range(arr.shape[0]):
            channel = indices[b] // (height * width)
            for c in np.unique(channel):
                chosen = indices[b][channel == c]
                out[b, chosen] = arr[b, chosen].mean()
        return out

    return perturb


def image_channel_means(height: int, width: int):
    """Quantus perturb_func: the given (flattened) entries → the mean of their channel over
    the whole image."""

    def perturb(arr, indices, **kwargs):
        out = arr.copy()
        for b in range(arr.shape[0]):
            channels = arr[b].reshape(-1, height * width).mean(1)
            out[b, indices[b]] = channels[indices[b] // (height * width)]
        return out

    return perturb


def test_degradation_equals_region_perturbation(lite0):
    x = torch.stack([load_image(n, (90, 90))[0] for n in ("chelsea", "coffee")])
    targets = torch.tensor([285, 967])
    heat = attribute(lite0, x, "saliency", targets=targets).abs().sum(1)
    ours = degradation_curve(lite0.module, x, targets, heat, patch=9, steps=12, order="morf")
    metric = quantus.RegionPerturbation(
        patch_size=9, order="morf", regions_evaluation=12, normalise=False, abs=False,
        perturb_func=patch_channel_means(90, 90), disable_warnings=True,
    )  # fmt: skip
    theirs = quantus_call(metric, lite0.module, x, targets, heat, softmax=True)  # p₀ − p_t
    drops = (ours[:, :1] - ours[:, 1:]).numpy()
    assert np.abs(drops - theirs).max() <= 1e-5 * np.abs(theirs).max()
    assert np.abs(theirs).max() > 0.1  # the removals matter


def test_pixel_perturbation_equals_pixel_flipping(digits):
    model, x, targets, heat = digits
    ours = pixel_perturbation(model, x, targets, heat, fraction=0.125, order="lerf").numpy()
    metric = quantus.PixelFlipping(
        features_in_step=8, perturb_func=image_channel_means(8, 8), normalise=False, abs=False,
        disable_warnings=True, return_auc_per_sample=False,
    )  # fmt: skip
    flipped = quantus_call(metric, model, x, targets, -heat, softmax=False)[:, 0]  # least first
    with torch.no_grad():
        clean = model(x).gather(1, targets[:, None]).squeeze(1).numpy()
    theirs = np.abs(flipped - clean) / np.abs(clean)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert theirs.max() > 0.05


def test_sensitivity_n_at_one_n_is_faithfulness_correlation(digits):
    model, x, targets, heat = (value[:8] if torch.is_tensor(value) else value for value in digits)
    ours = sensitivity_n(model, x, targets, heat, [8], subsets=1000,
                         seed=0)[:, 0].numpy()  # fmt: skip
    np.random.seed(0)
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=1000, subset_size=8, perturb_baseline="black", normalise=False, abs=False,
        disable_warnings=True, return_aggregate=False,
    )  # fmt: skip
    theirs = quantus_call(metric, model, x, targets, heat, softmax=False)
    assert np.abs(ours - theirs).max() < 0.05
    assert theirs.min() < 0.95  # a non-linear model: the correlation is not trivially 1


def test_quantus_sensitivity_n_is_another_definition(digits):
    _, x, _, _ = digits
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).requires_grad_(False).eval()
    with torch.no_grad():
        targets = linear(x).argmax(1)
    heat = attribute(linear, x, "gradient_x_input", targets=targets).sum(1)  # exact for linear
    grid = [1, 4, 16, 51]
    ours = sensitivity_n(linear, x, targets, heat, grid, subsets=64,
                         seed=0)  # fmt: skip
    assert torch.allclose(ours, torch.ones_like(ours), atol=1e-5)
    metric = quantus.SensitivityN(
        features_in_step=1, n_max_percentage=0.8, normalise=False, abs=False,
        disable_warnings=True, return_aggregate=False,
    )  # fmt: skip
    theirs = quantus_call(metric, linear, x, targets, heat, softmax=False)  # one value per step
    assert theirs[0] == pytest.approx(1.0, abs=1e-5)  # step 1: both are Σ_S R = ΔS
    assert max(theirs[3], theirs[15], theirs[50]) < 0.99
