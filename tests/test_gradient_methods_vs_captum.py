"""Every gradient method equals Captum (0.9) on EfficientNet-Lite0 and on ResNet18 (random weights).

Tolerance: max |ours − Captum| ≤ tol · max |Captum|, tol = 1e-5 (1e-4 for IG). Batches of two
real photographs with different per-image targets, explained through ``engine.explain``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import (
    Deconvolution,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from scipy.ndimage import gaussian_filter
from torch import nn

from engine import explain
from engine.attribution.base import InputGradient
from engine.attribution.expected_gradients import ExpectedGradients
from engine.attribution.integrated_gradients import IntegratedGradients as OurIG
from engine.attribution.integrated_gradients import quadrature
from engine.attribution.smoothing import noise_scale
from engine.models import load_model
from engine.provenance import memory_format
from testkit.captum import relu6_as_relu
from tests.conftest import assert_relative_close

TARGETS = [285, 409]  # Egyptian cat, analog clock: deliberately not both the predicted class


@pytest.fixture(params=["lite0", "resnet18_random"])
def model(request):
    return request.getfixturevalue(request.param)


def ours(model, x, method, options=None, target=TARGETS, seed=0):
    return explain(model, x, method, options or {}, target=list(target), seed=seed).attribution


@pytest.mark.parametrize("score", ["logit", "softmax", "log_softmax"])
def test_saliency(model, two_photos, score):
    forward = {
        "logit": model.module,
        "softmax": lambda x: model.module(x).softmax(1),
        "log_softmax": lambda x: model.module(x).log_softmax(1),
    }[score]
    reference = Saliency(forward).attribute(two_photos, target=TARGETS, abs=False)
    assert_relative_close(ours(model, two_photos, "saliency", {"score": score}), reference, 1e-5)


def test_gradient_x_input(model, two_photos):
    reference = InputXGradient(model.module).attribute(two_photos, target=TARGETS)
    assert_relative_close(ours(model, two_photos, "gradient_x_input"), reference, 1e-5)


@pytest.mark.parametrize(
    ("method", "captum_class"),
    [("guided_backprop", GuidedBackprop), ("deconvolution", Deconvolution)],
)
def test_rectifier_rules(model, two_photos, method, captum_class):
    reference = captum_class(relu6_as_relu(model.module)).attribute(two_photos, target=TARGETS)
    assert_relative_close(ours(model, two_photos, method), reference, 1e-5)


@pytest.mark.parametrize(
    "rule",
    ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"],
)
def test_integrated_gradients_rules(model, two_photos, rule):
    steps = 6
    options = {"steps": steps, "rule": rule, "internal_batch_size": 5}  # chunks cut across steps
    reference = IntegratedGradients(model.module).attribute(
        two_photos, target=TARGETS, n_steps=steps, method=rule, internal_batch_size=5
    )
    result = ours(model, two_photos, "integrated_gradients", options)
    if rule == "riemann_trapezoid":
        # Captum's trapezoid weights sum to (n−1)/n; ours are the textbook weights (sum 1).
        result = result * (steps - 1) / steps
    assert_relative_close(result, reference, 1e-4)


RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [7, 8, 50, 64])
def test_quadrature_points_are_captums(rule, steps):
    """Our α_k are Captum's bit for bit in float32 (the dtype they are applied in); weights too,
    except the trapezoid's, which are the textbook ones: Captum's × steps/(steps − 1)."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    captum_weights, captum_alphas = (f(steps) for f in approximation_parameters(rule))
    alphas, weights = quadrature(rule, steps)
    assert torch.equal(alphas.float(), torch.tensor(captum_alphas, dtype=torch.float64).float())
    expected = torch.tensor(captum_weights, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        expected = expected * steps / (steps - 1)
    assert torch.allclose(weights, expected, rtol=1e-12, atol=0)
    assert abs(float(weights.sum()) - 1) < 1e-12


def test_float64_grid_would_differ_at_the_tested_step_counts():
    """The counts above are ones where a float64 grid rounds to other float32 points than
    Captum's float32 linspace, so the point test would catch a float64 grid."""
    for steps in (7, 8, 50, 64):
        exact = torch.linspace(0, 1, steps, dtype=torch.float64).float()
        assert not torch.equal(exact, torch.linspace(0, 1, steps))


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES[:4])
def test_integrated_gradients_equals_captum_at_many_step_counts(resnet18_random, two_photos, rule):
    """ResNet18 has a max-pool and reuses an in-place ReLU in every block: there a grid one
    float32 step off Captum's changed IG by up to 0.9 % (8 trapezoid steps). The photographs at
    64² keep every layer and make the 129 steps × 2 rules' passes affordable."""
    photos = torch.nn.functional.interpolate(two_photos, size=(64, 64), mode="area")
    for steps in (7, 8, 50, 64):
        reference = IntegratedGradients(resnet18_random.module).attribute(
            photos, target=TARGETS, n_steps=steps, method=rule, internal_batch_size=48
        )
        options = {"steps": steps, "rule": rule, "internal_batch_size": 48}
        result = explain(resnet18_random, photos, "integrated_gradients", options,
                         target=TARGETS, resize="none").attribution  # fmt: skip
        if rule == "riemann_trapezoid":
            result = result * (steps - 1) / steps
        assert_relative_close(result, reference, 1e-5)


def independent_baseline(x: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The baseline by its definition, computed without our code (None: checked otherwise)."""
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x)
    if kind == "blur":  # σ = 5 px, radius ⌈3σ⌉ = 15, mirrored borders
        blurred = gaussian_filter(x.double().numpy(), sigma=(0, 0, 5, 5), mode="mirror",
                                  radius=(0, 0, 15, 15))  # fmt: skip
        return torch.from_numpy(blurred).float()
    return None


@pytest.mark.parametrize("baseline", ["black", "mean", "blur", "uniform"])
def test_integrated_gradients_baselines(lite0, two_photos, baseline):
    """The baseline equals its definition (blur: scipy's Gaussian filter, to float32 rounding);
    IG from it equals Captum's IG from the same baseline (the same points: a rounding-level
    change of the path can flip a ReLU6 and move a gradient by 1 %)."""
    method = OurIG(
        InputGradient(lite0.module),
        baseline,
        steps=5,
        seed=3,
    )
    targets = torch.tensor(TARGETS)
    result = method.attribute(two_photos, targets)
    used = method.last_baseline
    expected = independent_baseline(two_photos, baseline)
    if expected is None:  # uniform noise U[0, 1): image b's from its own generator seeded 3
        expected = torch.stack([torch.rand(image.shape, generator=torch.Generator().manual_seed(3))
                                for image in two_photos])  # fmt: skip
        assert used.min() >= 0 and used.max() < 1
        assert abs(used.mean().item() - 0.5) < 0.01 and abs(used.var().item() - 1 / 12) < 0.01
    torch.testing.assert_close(used, expected, rtol=0, atol=1e-6)
    reference = IntegratedGradients(lite0.module).attribute(
        two_photos, baselines=used, target=TARGETS, n_steps=5, method="gausslegendre"
    )
    assert_relative_close(result, reference, 1e-4)


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_same_noise(model, chelsea, kind):
    """Same seed → the same injected noise as Captum's NoiseTunnel (σ from our per-image rule)."""
    samples, seed = 4, 7
    sigma = float(noise_scale(chelsea, 0.15))
    torch.manual_seed(seed)
    reference = NoiseTunnel(Saliency(model.module)).attribute(
        chelsea, nt_type=kind, nt_samples=samples, stdevs=sigma, target=285, abs=False
    )
    result = ours(model, chelsea, kind, {"samples": samples}, target=[285], seed=seed)
    assert_relative_close(result, reference, 1e-5)


def test_smoothing_wraps_any_method(lite0, chelsea):
    """The generic 'smoothing' option equals Captum's NoiseTunnel around the same method."""
    seed = 11
    sigma = float(noise_scale(chelsea, 0.1))
    torch.manual_seed(seed)
    reference = NoiseTunnel(InputXGradient(lite0.module)).attribute(
        chelsea, nt_type="smoothgrad", nt_samples=3, stdevs=sigma, target=285
    )
    smoothing = {"kind": "smoothgrad", "samples": 3, "noise_level": 0.1}
    result = ours(lite0, chelsea, "gradient_x_input", {"smoothing": smoothing}, [285], seed)
    assert_relative_close(result, reference, 1e-5)


def test_expected_gradients_same_draws(model, two_photos):
    """EG given Captum's draws equals Captum's GradientShap (stdevs 0): per row a reference
    index (np.random.choice), then α (np.random.uniform), rows b·k … b·k + k − 1 image b's."""
    references = torch.rand(3, *two_photos.shape[1:], generator=torch.Generator().manual_seed(0))
    samples = 3
    np.random.seed(5)
    reference = GradientShap(model.module).attribute(
        two_photos, baselines=references, target=TARGETS, n_samples=samples, stdevs=0.0
    )
    np.random.seed(5)
    index = np.random.choice(len(references), 2 * samples)
    alpha = np.random.uniform(0.0, 1.0, 2 * samples)
    method = ExpectedGradients(InputGradient(model.module), references, samples)
    method.draws = (torch.tensor(index), torch.tensor(alpha, dtype=torch.float32))
    result = method.attribute(two_photos, torch.tensor(TARGETS))
    assert_relative_close(result, reference, 1e-5)


def test_gradcam(model, two_photos):
    layer = model.classifier.get_submodule(model.spec.cam_layer)
    cam = LayerGradCam(model.module, layer).attribute(
        two_photos, target=TARGETS, relu_attributions=True
    )
    reference = LayerAttribution.interpolate(cam, (224, 224), "bilinear")
    result = ours(model, two_photos, "gradcam")
    assert result.shape == (2, 1, 224, 224)
    assert_relative_close(result, reference, 1e-5)


@pytest.fixture(scope="module")
def random_torchvision():
    return {
        name: load_model(name, weights="random:0")
        for name in ("resnet18", "vgg16", "mobilenet_v3_small")
    }


# Layers whose output an in-place operation overwrites later in the forward pass.
IN_PLACE_FOLLOWED = [
    ("resnet18", "layer4.1.bn2"),  # out += identity; relu(inplace) follow
    ("resnet18", "layer4.0.bn1"),  # relu(inplace) follows
    ("resnet18", "layer3.1.bn2"),
    ("vgg16", "features.28"),  # ReLU(inplace=True) follows
    ("mobilenet_v3_small", "features.0.1"),  # Hardswish(inplace=True) follows
    ("resnet18", "layer4"),  # the default layer (nothing in place after it)
]


@pytest.mark.parametrize(("name", "layer"), IN_PLACE_FOLLOWED)
def test_gradcam_on_a_layer_followed_by_an_in_place_operation(random_torchvision, name, layer):
    model = random_torchvision[name]
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    cam = LayerGradCam(model.module, model.classifier.get_submodule(layer)).attribute(
        x, target=TARGETS, relu_attributions=True
    )
    reference = LayerAttribution.interpolate(cam, (128, 128), "bilinear")
    result = explain(model, x, "gradcam", {"layer": layer}, target=TARGETS, resize="none")
    assert_relative_close(result.attribution, reference, 1e-5)


def test_guided_gradcam_on_a_layer_followed_by_an_in_place_operation(resnet18_random, two_photos):
    path = "layer4.1.bn2"
    reference = GuidedGradCam(
        resnet18_random.module, resnet18_random.classifier.get_submodule(path)
    )
    expected = reference.attribute(two_photos, target=TARGETS, interpolate_mode="bilinear")
    assert_relative_close(ours(resnet18_random, two_photos, "guided_gradcam", {"layer": path}),
                          expected, 1e-5)  # fmt: skip


def test_guided_gradcam(model, two_photos):
    rewritten = relu6_as_relu(model.module)
    layer = rewritten.get_submodule("classifier." + model.spec.cam_layer)
    reference = GuidedGradCam(rewritten, layer).attribute(
        two_photos, target=TARGETS, interpolate_mode="bilinear"
    )
    assert_relative_close(ours(model, two_photos, "guided_gradcam"), reference, 1e-5)


def test_smoothgrad_ig_noisy_path_equals_an_independent_computation(lite0, two_photos):
    """pgig's SmoothGrad-IG by its definition, with the same draws: the path points α_k·x
    (zero baseline, riemann_right), at each n noisy copies x_k + σ_k ε with σ_k = s·(max − min)
    of that point, image b's ε from its own generator seeded with the seed (n draws per step,
    step after step), Captum's gradient at each, averaged, weighted 1/m and times x."""
    steps, samples, level, seed = 3, 2, 0.2, 4
    options = {"steps": steps, "samples": samples, "noise_level": level, "rule": "riemann_right"}
    result = ours(lite0, two_photos, "smoothgrad_ig", options, seed=seed)
    alphas = torch.linspace(1 / steps, 1, steps)
    saliency = Saliency(lite0.module)
    expected = torch.zeros_like(two_photos)
    for b in range(two_photos.shape[0]):
        generator = torch.Generator().manual_seed(seed)
        for step in range(steps):
            point = alphas[step] * two_photos[b : b + 1]
            sigma = level * (point.max() - point.min())
            noise = torch.randn((samples, *two_photos.shape[1:]), generator=generator)
            gradients = saliency.attribute(point + sigma * noise, target=TARGETS[b], abs=False)
            expected[b] += gradients.mean(0) / steps
    expected *= two_photos
    assert_relative_close(result, expected, 1e-4)
    without_noise = ours(lite0, two_photos, "smoothgrad_ig", {**options, "noise_level": 0.0})
    assert (result - without_noise).abs().max() > 0.05 * without_noise.abs().max()


def test_smoothgrad_ig_without_noise_is_ig(lite0, chelsea):
    """SmoothGrad-IG with noise level 0 reduces to IG with the same rule (Captum)."""
    options = {"steps": 4, "samples": 2, "noise_level": 0.0, "rule": "riemann_right"}
    reference = IntegratedGradients(lite0.module).attribute(
        chelsea, target=285, n_steps=4, method="riemann_right"
    )
    assert_relative_close(ours(lite0, chelsea, "smoothgrad_ig", options, [285]), reference, 1e-4)


class _ReluAndGelu(nn.Module):
    """A small CNN with an in-place ReLU, a ReLU6 and a GELU: the rule changes the rectifiers'
    backward only, never the GELU's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize(
    ("method", "captum_class"),
    [("guided_backprop", GuidedBackprop), ("deconvolution", Deconvolution)],
)
def test_rectifier_rules_on_a_net_with_gelu(method, captum_class):
    """Equal to Captum's (on the copy whose ReLU6 is min(·, 6) then ReLU), different from the
    plain gradient, and the model's own forward is back afterwards (saliency unchanged)."""
    net = _ReluAndGelu().eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [1, 3]

    def ours(model, x, method, target):
        return explain(model, x, method, target=target, resize="none").attribution

    before = ours(net, x, "saliency", target=targets)
    result = ours(net, x, method, target=targets)
    reference = captum_class(relu6_as_relu(net)).attribute(x, target=targets)
    assert_relative_close(result, reference, 1e-5)
    assert (result - before).abs().max() > 0.1 * before.abs().max()
    assert all("forward" not in vars(m) for m in net.modules())
    assert torch.equal(ours(net, x, "saliency", target=targets), before)


def test_channels_last_gives_the_contiguous_results(resnet18_random, two_photos):
    """The layout the probe may choose changes rounding only: ResNet18's saliency, guided
    backprop and Grad-CAM in channels_last equal the contiguous model's to 1e-5. IG's path points
    near the black baseline sit at ReLU kinks, where rounding flips some (7e-4 apart): there
    both layouts are as far from a float64 run of the same model."""
    contiguous = copy.deepcopy(resnet18_random.module).to(memory_format=torch.contiguous_format)
    nhwc = copy.deepcopy(resnet18_random.module).to(memory_format=torch.channels_last)
    assert (memory_format(contiguous), memory_format(nhwc)) == ("contiguous", "channels_last")
    for method, options in [
        ("saliency", {}),
        ("guided_backprop", {}),
        ("gradcam", {"layer": "layer4"}),
    ]:
        expected = ours(contiguous, two_photos, method, options)
        result = ours(nhwc, two_photos, method, options)
        assert result.is_contiguous()
        assert_relative_close(result, expected, 1e-5)
    options = {"steps": 4}
    exact = ours(contiguous.double(), two_photos.double(), "integrated_gradients", options)
    errors = [(ours(m, two_photos, "integrated_gradients", options) - exact).abs().max()
              for m in (contiguous.float(), nhwc)]  # fmt: skip
    assert errors[1] <= 1.01 * errors[0] + 1e-5 * exact.abs().max()
