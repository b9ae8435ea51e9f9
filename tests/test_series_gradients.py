"""Gradient methods on the bundled GRU series model equal Captum's on S = Σ_t z_t (the class
'step positive'; −S for 'step negative'), for one series and a batch of two."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

from engine import explain
from engine.attribution.smoothing import noise_scale
from engine.data.timeseries import series_sample
from engine.method import OptionsError
from engine.models import load_model


@pytest.fixture(scope="module")
def gru():
    return load_model("state_gru")


@pytest.fixture(scope="module")
def series():
    return torch.stack([series_sample("state:0")[0], series_sample("state:5")[0]])


def summed(model, sign: float = 1.0):
    return lambda x: sign * model.module(x).sum(1)


def assert_close(result, reference, rtol=1e-5):
    scale = reference.abs().max()
    assert scale > 0
    assert (result - reference).abs().max() <= rtol * scale


@pytest.mark.parametrize("target", [1, 0])
@pytest.mark.parametrize(("method", "captum"), [("saliency", Saliency),
                                                ("gradient_x_input", InputXGradient)])  # fmt: skip
def test_gradients_equal_captum(gru, series, method, captum, target):
    sign = 1.0 if target == 1 else -1.0
    kwargs = {"abs": False} if captum is Saliency else {}
    reference = captum(summed(gru, sign)).attribute(series.clone(), **kwargs)
    result = explain(gru, series, method, target=[target] * 2).attribution
    assert result.shape == series.shape == (2, 100, 3)
    assert_close(result, reference)


@pytest.mark.parametrize("steps", [7, 32])
def test_integrated_gradients_equal_captum(gru, series, steps):
    reference = IntegratedGradients(summed(gru)).attribute(
        series.clone(), baselines=torch.zeros_like(series), n_steps=steps, method="gausslegendre"
    )
    result = explain(gru, series, "integrated_gradients", {"steps": steps}, target=[1, 1])
    assert_close(result.attribution, reference, 1e-4)
    # completeness: Σ IG = S(x) − S(0), up to the quadrature error
    assert all(abs(s["completeness_gap"]) < 0.05 * abs(s["score_difference"]) + 1e-3
               for s in result.scores)  # fmt: skip


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnels_equal_captum(gru, series, kind):
    one = series[:1]
    samples, seed = 4, 3
    torch.manual_seed(seed)
    reference = NoiseTunnel(Saliency(summed(gru))).attribute(
        one.clone(), nt_type=kind, nt_samples=samples,
        stdevs=float(noise_scale(one, 0.15)), abs=False,
    )  # fmt: skip
    result = explain(gru, one, kind, {"samples": samples}, target=[1], seed=seed).attribution
    assert_close(result, reference)


def test_image_baselines_are_refused_for_series(gru, series):
    with pytest.raises(OptionsError, match="blur baseline is for images"):
        explain(gru, series, "integrated_gradients", {"baseline": "blur"})
