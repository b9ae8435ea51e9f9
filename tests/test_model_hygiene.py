"""Hook edge cases: in-place ReLUs, reused ReLU modules, functional ReLUs, and a model left exactly
as it was after every call (no hooks, same weights, same mode and grad flags)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import explain
from engine.addons.gad import train_support_set
from engine.addons.pattern import estimate_patterns
from engine.catalogue import all_methods
from engine.method import MethodError
from engine.models import load_model
from engine.models.series import SeriesClassifier

FAST_OPTIONS = {
    "integrated_gradients": {"steps": 2},
    "smoothgrad": {"samples": 2},
    "smoothgrad_sq": {"samples": 2},
    "vargrad": {"samples": 2},
    "smoothgrad_ig": {"steps": 2, "samples": 2},
    "expected_gradients": {"samples": 2},
    "pattern_guided_ig": {"steps": 2},
    # a plain module declares no CAM layer
    **{m.name: {"layer": "layer4"} for m in all_methods() if m.family == "cam"},
    "scorecam": {"layer": "layer2"},  # 128 channels: 128 forward passes per image
    **{
        mask: {"iterations": 2, "noise_samples": 2, "init": "startgrad"}
        for mask in ("pixelmask", "smoothmask", "cartoonx", "waveletx", "shearletx")
    },
}


def addon_extras(method: str, model: nn.Module) -> dict:
    """The pattern set or GAD support set a method needs, made from the model itself."""
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    if method.startswith("pattern"):
        return {"patterns": estimate_patterns(model, [images[:2], images[2:]])}
    if method == "gad":
        labels = torch.tensor([1, 2, 1, 2])
        support = train_support_set(model, images, labels, (1, 2), alphas=(2.0,), epochs=1)
        return {"support_set": support}
    return {}


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("method", [m.name for m in all_methods() if "image" in m.input_kinds])
def test_model_left_exactly_as_it_was(method):
    """A user's module in train mode with trainable weights, and in-place, reused ReLUs."""
    model = load_model("resnet18", weights="random:1").module
    model.train().requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    extras = addon_extras(method, model)  # estimation and fine-tuning leave the model as well
    explain(model, x, method, FAST_OPTIONS.get(method), target=[1, 2], resize="none", extras=extras)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert hook_count(model) == hooks
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched (eval)
    assert all(p.grad is None for p in model.parameters())


def test_series_model_left_exactly_as_it_was():
    """ExtremalMask trains its own perturbation net, never the classifier (BN stats included)."""
    model = SeriesClassifier("gru", hidden=8).train().requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    series = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(0))
    explain(model, series, "extremal_mask", {"iterations": 3, "init": "startgrad"})
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_inplace_and_reused_relu_give_the_guided_gradient_of_a_clean_copy():
    """ResNet18 uses one in-place ReLU twice per BasicBlock. The result must equal that of a copy
    with a separate, non-in-place ReLU module at every call site."""
    loaded = load_model("resnet18", weights="random:2")
    clean = load_model("resnet18", weights="random:2")
    for block in [m for m in clean.module.modules() if hasattr(m, "conv2")]:
        block.relu_a, block.relu_b = relu_a, relu_b = nn.ReLU(), nn.ReLU()

        def forward(x, block=block, relu_a=relu_a, relu_b=relu_b):
            identity = x if block.downsample is None else block.downsample(x)
            out = relu_a(block.bn1(block.conv1(x)))
            return relu_b(block.bn2(block.conv2(out)) + identity)

        block.forward = forward
    clean.module.classifier.relu = nn.ReLU()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for method in ("guided_backprop", "deconvolution"):
        ours = explain(loaded, x, method, target=3, resize="none").attribution
        reference = explain(clean, x, method, target=3, resize="none").attribution
        assert ours.abs().max() > 0
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
    # Guided Backprop differs from the plain gradient (the rule is really applied).
    plain = explain(loaded, x, "saliency", target=3, resize="none").attribution
    assert not torch.allclose(plain, ours)


class FunctionalReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvolution", "guided_gradcam"])
def test_functional_relu_is_refused(method):
    model = FunctionalReLUNet()
    options = {"layer": "conv"} if method == "guided_gradcam" else {}
    # No ReLU module at all: refused before it runs (it would equal the plain gradient).
    with pytest.raises(MethodError, match="has none"):
        explain(model, torch.rand(1, 3, 16, 16), method, options, resize="none")
    assert hook_count(model) == 0
    # Plain gradients are fine on the same model.
    explain(model, torch.rand(1, 3, 16, 16), "saliency", resize="none")


class SwitchableNet(nn.Module):
    """Calls its nn.ReLU module, or F.relu once ``functional`` is set (a forward that changes)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # weights that do not depend on the tests run before
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 3)
        self.relu = nn.ReLU()
        self.functional = False

    def forward(self, x):
        hidden = F.relu(self.conv(x)) if self.functional else self.relu(self.conv(x))
        return self.fc(hidden.mean((2, 3)))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvolution"])
def test_functional_relu_is_refused_after_earlier_clean_calls(method):
    """The guard runs on every call, not only a model's first one."""
    model = SwitchableNet()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    explain(model, x, method, resize="none")
    explain(model, x, method, resize="none")
    model.functional = True
    with pytest.raises(MethodError, match="functionally"):
        explain(model, x, method, resize="none")
    model.functional = False
    assert explain(model, x, method, resize="none").attribution.abs().max() > 0


@pytest.mark.parametrize("arch", ["vgg16", "mobilenet_v3_small"])
def test_other_torchvision_architectures(arch):
    loaded = load_model(arch, weights="random:0")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for method in ("guided_backprop", "gradcam"):
        result = explain(loaded, x, method, target=7, resize="none")
        assert torch.isfinite(result.attribution).all()
        assert result.attribution.shape[-2:] == (64, 64)
