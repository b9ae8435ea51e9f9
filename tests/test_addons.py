"""Pattern estimation and the pattern methods, CriGrad and GAD: analytic cases, hand computations
and the identities of the specs (A ≡ 1, ρ = 1), on toy networks and the digits CNN."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from engine.addons.crigrad import critical_mask
from engine.addons.gad import GAD, SupportSet, SupportSetError, train_support_set
from engine.addons.gad.support import offset_targets
from engine.addons.pattern import PatternError, PatternSet, estimate_patterns
from engine.explain import attribute
from engine.method import MethodError, OptionsError
from engine.models.digits import accuracy, load_digits_data, train_digits_cnn


@functools.cache
def digits(size: int = 8):
    data = load_digits_data(size=size)
    return data, train_digits_cnn(data, seed=0)


def ones_like(patterns: PatternSet, value=None) -> PatternSet:
    """The same set with every pattern replaced by 1 (or by the given per-layer tensors)."""
    replaced = value or {k: torch.ones_like(v) for k, v in patterns.patterns.items()}
    return PatternSet(
        "test", patterns.fingerprint, "linear", replaced, patterns.layer_estimators, 0
    )


def signal_and_distractor(count=20000, seed=0):
    """x = s·(1, 0) + d·(1, 1) (pgig's synthetic data); w = (1, −1) cancels the distractor."""
    generator = torch.Generator().manual_seed(seed)
    s, d = torch.randn(count, 1, generator=generator), torch.randn(count, 1, generator=generator)
    return s * torch.tensor([1.0, 0.0]) + d * torch.tensor([1.0, 1.0])


def test_digits_cnn_trains_in_seconds_to_high_accuracy():
    data, model = digits()
    assert (
        data.train_x.shape[1:] == (1, 8, 8) and 0 <= data.train_x.min() <= data.train_x.max() <= 1
    )
    assert accuracy(model, data.test_x, data.test_y) > 0.93


@pytest.mark.parametrize("bias", [0.0, 0.5])
def test_patterns_recover_the_signal_direction(bias):
    """Linear estimator (output layer) and two-component estimator (with a bias) → a ≈ (1, 0)."""
    layer = nn.Linear(2, 1, bias=bias != 0)
    layer.weight.data = torch.tensor([[1.0, -1.0]])
    model = nn.Sequential(layer) if bias == 0 else nn.Sequential(layer, nn.ReLU(), nn.Linear(1, 1))
    if bias:
        layer.bias.data = torch.tensor([bias])
    x = signal_and_distractor()
    patterns = estimate_patterns(model, x.split(7000))  # streaming over uneven batches
    assert patterns.layer_estimators["0"] == ("linear" if bias == 0 else "two_component")
    np.testing.assert_allclose(patterns.patterns["0"][0].numpy(), [1.0, 0.0], atol=0.03)


def test_conv_patterns_equal_a_hand_computation_with_stride_padding_groups():
    """Two-component patterns of a grouped, strided, padded conv with bias, from explicit loops."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 2))
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64)
    got = estimate_patterns(model, [x[:2].float(), x[2:].float()]).patterns["0"].double()

    w, b = conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros_like(w)
    for j in range(6):
        group = j // 3
        patches = [
            padded[n, 2 * group : 2 * group + 2, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3].ravel()
            for n in range(5)
            for r in range(3)
            for c in range(3)
        ]
        xs = np.array(patches)
        y = xs @ w[j].ravel()
        positive = y + b[j] > 0
        xp, yp = xs[positive], y[positive]
        covariance = (xp * yp[:, None]).mean(0) - xp.mean(0) * yp.mean()
        expected[j] = (covariance / (w[j].ravel() @ covariance)).reshape(w[j].shape)
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-4, atol=1e-5)


def test_layers_patterns_cannot_cover_are_refused():
    model = nn.Sequential(nn.ConvTranspose2d(1, 2, 2), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(PatternError, match="ConvTranspose2d"):
        estimate_patterns(model, [torch.rand(1, 1, 4, 4)])


def test_same_padding_is_seen_as_explicit_padding():
    """A conv with padding='same' gets the patterns of the equivalent padding=1 conv."""
    torch.manual_seed(0)
    explicit = nn.Conv2d(2, 3, 3, padding=1)
    same = nn.Conv2d(2, 3, 3, padding="same")
    same.load_state_dict(explicit.state_dict())
    x = torch.rand(4, 2, 5, 5)
    a = estimate_patterns(nn.Sequential(explicit, nn.ReLU(), nn.Flatten(), nn.Linear(75, 2)), [x])
    b = estimate_patterns(nn.Sequential(same, nn.ReLU(), nn.Flatten(), nn.Linear(75, 2)), [x])
    torch.testing.assert_close(a.patterns["0"], b.patterns["0"])


def test_pattern_attribution_by_hand_on_a_two_layer_net():
    """R = (W₁ ⊙ A₁)ᵀ (1[z₁ > 0] ⊙ (W₂ ⊙ A₂)ᵀ e_c); PatternNet the same with A alone."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 5)
    patterns = estimate_patterns(model, [torch.randn(300, 5)])
    a1, a2 = patterns.patterns["0"], patterns.patterns["2"]
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    gate = (model[0](x) > 0).float()
    targets = torch.tensor([0, 2])
    for method, first, second in [
        ("pattern_attribution", w1 * a1, w2 * a2),
        ("pattern_net", a1, a2),
    ]:
        expected = (gate * second[targets]) @ first
        got = attribute(model, x, method, targets=targets, extras={"patterns": patterns})
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_unit_patterns_give_the_gradient_and_ig():
    """With A ≡ 1: PatternAttribution = gradient, PGIG = IG; with A = W: PatternNet = gradient."""
    data, model = digits()
    x, y = data.test_x[:6], data.test_y[:6]
    patterns = estimate_patterns(model, [data.train_x[:200]])
    ones = ones_like(patterns)
    weights = dict(model.named_modules())
    as_weights = ones_like(patterns, {k: weights[k].weight.detach() for k in patterns.patterns})
    gradient = attribute(model, x, "saliency", targets=y)
    assert gradient.abs().max() > 0
    for method, pattern_set, reference in [
        ("pattern_attribution", ones, gradient),
        ("pattern_net", as_weights, gradient),
        ("pattern_guided_ig", ones, attribute(model, x, "integrated_gradients", targets=y)),
    ]:
        got = attribute(model, x, method, targets=y, extras={"patterns": pattern_set})
        torch.testing.assert_close(got, reference, rtol=0, atol=0)
    estimated = attribute(model, x, "pattern_attribution", targets=y, extras={"patterns": patterns})
    assert (estimated - gradient).abs().max() > 1e-3  # real patterns change the backward pass


def test_a_pattern_set_is_tied_to_its_model(tmp_path):
    data, model = digits()
    patterns = estimate_patterns(model, [data.train_x[:100]], model_name="digits")
    loaded = PatternSet.load(patterns.save(tmp_path / "p.pt"))
    assert loaded.fingerprint == patterns.fingerprint and loaded.model == "digits"
    for name in patterns.patterns:
        torch.testing.assert_close(loaded.patterns[name], patterns.patterns[name])
    other = train_digits_cnn(data, seed=1)
    with pytest.raises(PatternError, match="weights differ"):
        attribute(other, data.test_x[:2], "pattern_attribution", extras={"patterns": loaded})
    (tmp_path / "junk.pt").write_bytes(b"not a pattern file")
    with pytest.raises(PatternError, match="not a pattern file"):
        PatternSet.load(tmp_path / "junk.pt")


def test_an_overflowing_backward_pass_is_an_error_not_a_nan_map():
    data, model = digits()
    patterns = estimate_patterns(model, [data.train_x[:100]])
    huge = ones_like(patterns, {k: torch.full_like(v, 1e30) for k, v in patterns.patterns.items()})
    with pytest.raises(MethodError, match="non-finite"):
        attribute(model, data.test_x[:2], "pattern_net", extras={"patterns": huge})


def test_pattern_methods_need_patterns(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLAINER_CACHE_DIR", str(tmp_path))
    data, model = digits()
    with pytest.raises(PatternError, match="estimate-patterns"):
        attribute(model, data.test_x[:1], "pattern_net")


@pytest.mark.parametrize(
    "base",
    ["saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "guided_backprop"],
)
def test_crigrad_with_every_unit_kept_is_the_base_method(base):
    data, model = digits()
    x, y = data.test_x[:4], data.test_y[:4]
    reference = attribute(model, x, base, targets=y)
    kept_all = attribute(model, x, "crigrad", {"base": base, "keep": 1.0}, targets=y)
    torch.testing.assert_close(kept_all, reference, rtol=0, atol=0)
    filtered = attribute(model, x, "crigrad", {"base": base, "keep": 0.2}, targets=y)
    assert (filtered - reference).abs().max() > 1e-4


def test_crigrad_filters_by_hand_on_a_two_layer_net():
    """Keep the top ⌈ρ·4⌉ = 2 hidden units by a ⊙ g; the input gradient flows through them only."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(1, 3)
    hidden = torch.relu(model[0](x))
    g_hidden = model[2].weight[1].detach()
    importance = hidden[0] * g_hidden
    keep = torch.zeros(4)
    keep[importance.topk(2).indices] = 1
    expected = ((g_hidden * keep * (hidden[0] > 0)) @ model[0].weight.detach())[None]
    got = attribute(model, x, "crigrad", {"keep": 0.5}, targets=torch.tensor([1]))
    torch.testing.assert_close(got, expected)


def test_critical_mask_options():
    activation = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]]])  # (1,2,2,2)
    grad = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]]]])
    unit = critical_mask(activation, grad, 0.25, "gxi", "unit")  # a·g = [1, −2, 3, 4], [0, 0, 0, 5]
    assert unit.flatten().tolist() == [0, 0, 0, 1, 0, 0, 0, 1]  # the top 2 of 8: 5 and 4
    channel = critical_mask(activation, grad, 0.5, "gxi", "channel")  # Σ: 6 vs 5 → channel 0
    assert channel.shape == (1, 2, 1, 1) and channel.flatten().tolist() == [1.0, 0.0]
    by_grad = critical_mask(activation, grad, 0.5, "abs_grad", "channel")
    assert by_grad.flatten().tolist() == [0.0, 1.0]
    with pytest.raises(OptionsError):
        attribute(nn.Linear(2, 2), torch.zeros(1, 2), "crigrad", {"base": "gradcam"})


def test_offset_targets_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    labels = torch.tensor([0, 2, 1])
    got = offset_targets(logits, labels, (0, 2), alpha=4.0)
    expected = torch.tensor([[1.0, 2.0, -1.0], [0.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    torch.testing.assert_close(got, expected)


@functools.cache
def support_set():
    data, model = digits()
    return train_support_set(model, data.train_x, data.train_y, (3, 8), epochs=3)


@pytest.mark.parametrize("base", ["deconvolution", "gradient_x_input", "integrated_gradients"])
def test_gad_marks_nothing_the_original_map_does_not(base):
    data, model = digits()
    support = support_set()
    pair = (data.test_y == 3) | (data.test_y == 8)
    x, y = data.test_x[pair][:8], data.test_y[pair][:8]
    original = attribute(model, x, base, targets=y)
    got = attribute(model, x, "gad", {"base": base}, targets=y, extras={"support_set": support})
    important = original.abs().sum(1)
    top = important.flatten(1).sort(1, descending=True).values[:, 31:32]  # 32nd largest of 64
    outside = (important < top.view(-1, 1, 1)).unsqueeze(1)
    assert (got[outside] == 0).all()  # nothing outside the original top half
    kept = got != 0
    torch.testing.assert_close(got[kept], original[kept])  # and the original values inside
    assert 0 < kept.sum() <= outside.logical_not().sum()


def test_support_sets_train_save_and_refuse_other_models(tmp_path):
    data, model = digits()
    support = support_set()
    assert support.classes == (3, 8) and support.alphas == [2.0, 4.0, 6.0, 8.0]
    assert all(history[-1] < history[0] for history in support.losses)  # MSE falls
    loaded = SupportSet.load(support.save(tmp_path / "s.pt"))
    assert loaded.classes == (3, 8) and len(loaded.models(model)) == 4
    with pytest.raises(SupportSetError, match="weights differ"):
        loaded.models(train_digits_cnn(data, seed=1))
    x = data.test_x[data.test_y == 5][:1]
    with pytest.raises(SupportSetError, match="not in the pair"):
        attribute(model, x, "gad", targets=torch.tensor([5]), extras={"support_set": loaded})
    with pytest.raises(SupportSetError, match="two different classes"):
        train_support_set(model, data.train_x, data.train_y, (3, 3))


def test_gad_class_is_an_intersection():
    class Fixed:
        progress = None

        def __init__(self, value):
            self.value = value

        def attribute(self, x, targets):
            return self.value

    a = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
    b = torch.tensor([[[[0.0, 3.0], [2.0, 9.0]]]])
    gad = GAD([Fixed(a), Fixed(b)], "top_fraction", 0.5)
    got = gad.attribute(torch.zeros(1, 1, 2, 2), torch.tensor([0]))
    torch.testing.assert_close(got, torch.tensor([[[[0.0, 3.0], [0.0, 0.0]]]]))


def test_a_batchnorm_after_a_layer_is_folded_into_it():
    """Patterns and pattern methods of Linear → BatchNorm → ReLU equal those of the one Linear
    layer with the BatchNorm folded into its weights and bias (an independent construction)."""
    torch.manual_seed(3)
    layer, norm = nn.Linear(5, 4), nn.BatchNorm1d(4)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(-2, 2)  # negative scales included
    norm.bias.data.uniform_(-1, 1)
    head = nn.Linear(4, 3)
    with_norm = nn.Sequential(layer, norm, nn.ReLU(), head).eval()
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    folded_layer = nn.Linear(5, 4)
    folded_layer.weight.data = layer.weight * scale[:, None]
    folded_layer.bias.data = (layer.bias - norm.running_mean) * scale + norm.bias
    folded = nn.Sequential(folded_layer, nn.ReLU(), head).eval()
    data = [torch.randn(400, 5)]
    ours, reference = estimate_patterns(with_norm, data), estimate_patterns(folded, data)
    assert ours.layer_estimators["0"] == "two_component" and "0" in ours.scales
    torch.testing.assert_close(ours.patterns["0"], reference.patterns["0"], rtol=1e-4, atol=1e-5)
    x, targets = torch.randn(3, 5), torch.tensor([0, 1, 2])
    for method in ("pattern_attribution", "pattern_net"):
        got = attribute(with_norm, x, method, targets=targets, extras={"patterns": ours})
        expected = attribute(folded, x, method, targets=targets, extras={"patterns": reference})
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_pattern_methods_degrade_faster_than_the_gradient_on_digits():
    """The pgig claim on the digits CNN: removing the patches PatternAttribution and PGIG rank
    first (signed channel sum, 2×2 patches → their means) lowers the target probability faster
    than removing those the plain gradient ranks first (lower MoRF AUC)."""
    from engine.metrics.perturbation import degradation_curve, normalised_auc

    data, model = digits()
    x = data.test_x
    targets = model(x).argmax(1)
    patterns = estimate_patterns(model, data.train_x.split(256))
    auc = {}
    for method in ("saliency", "pattern_attribution", "pattern_guided_ig"):
        heat = attribute(model, x, method, targets=targets, extras={"patterns": patterns}).sum(1)
        auc[method] = normalised_auc(degradation_curve(model, x, targets, heat, patch=2)).mean()
    assert auc["pattern_attribution"] < auc["saliency"] - 0.02
    assert auc["pattern_guided_ig"] < auc["saliency"] - 0.02
