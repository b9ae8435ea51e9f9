"""The memory layout chosen at load (engine.models.layout): recorded in every explanation, forced
by EXPLAINER_MEMORY_FORMAT, and never a failure for a model that cannot change layout
(TorchScript, one input channel, a forward that views its maps as contiguous)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from engine import explain
from engine.models import load_model
from engine.models.layout import in_preferred_layout, preferred_memory_format
from engine.provenance import memory_format
from tests.tiny_models import tiny_cnn

EXAMPLE = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class ViewsItsMaps(nn.Module):
    """Flattens a (B, 4, 32, 32) map with ``view``, which needs a contiguous tensor: in
    channels_last the forward raises."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 2)

    def forward(self, x):
        out = self.conv(x)
        return self.fc(out.view(out.shape[0], -1))


def one_channel_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))  # fmt: skip


@pytest.mark.parametrize("wanted", ["auto", "channels_last"])
@pytest.mark.parametrize(
    "build",
    [lambda: torch.jit.script(tiny_cnn().eval()), ViewsItsMaps, one_channel_cnn],
    ids=["torchscript", "views_its_maps", "one_channel"],
)
def test_a_model_that_cannot_change_layout_keeps_working(build, wanted, monkeypatch):
    monkeypatch.setenv("EXPLAINER_MEMORY_FORMAT", wanted)
    model = build().eval()
    channels = next(p for p in model.parameters() if p.ndim == 4).shape[1]
    x = EXAMPLE[:, :channels]
    before = model(x).detach()
    model, layout = in_preferred_layout(model, EXAMPLE)
    assert layout == memory_format(model)
    torch.testing.assert_close(model(x).detach(), before, rtol=1e-5, atol=1e-6)
    if isinstance(model, ViewsItsMaps) or channels == 1:
        assert layout == "contiguous"


def test_a_layout_dependent_model_is_probed_contiguous():
    model = ViewsItsMaps().eval()
    assert preferred_memory_format(model, EXAMPLE) == torch.contiguous_format
    assert memory_format(model) == "contiguous"  # the probe left it as loaded
    assert preferred_memory_format(model, EXAMPLE[0]) == torch.contiguous_format  # not a batch


@pytest.mark.parametrize("wanted", ["contiguous", "channels_last"])
def test_the_layout_is_recorded_in_the_explanation(wanted, monkeypatch, two_photos):
    monkeypatch.setenv("EXPLAINER_MEMORY_FORMAT", wanted)
    model = load_model("resnet18", weights="random:0")
    assert memory_format(model.module) == wanted
    result = explain(model, two_photos, "saliency")
    assert result.metadata["memory_format"] == wanted
    assert json.loads(json.dumps(result.metadata))["memory_format"] == wanted
    assert result.attribution.is_contiguous()


def test_the_probe_keeps_what_it_measured_faster(monkeypatch, two_photos):
    """auto: the probe's choice is what the loaded model runs in and what the record says; the
    explanation equals the contiguous model's (saliency of ResNet18: rounding only)."""
    monkeypatch.setenv("EXPLAINER_MEMORY_FORMAT", "auto")
    probed = load_model("resnet18", weights="random:0")
    monkeypatch.setenv("EXPLAINER_MEMORY_FORMAT", "contiguous")
    contiguous = load_model("resnet18", weights="random:0")
    result = explain(probed, two_photos, "saliency", target=[1, 2])
    assert result.metadata["memory_format"] == memory_format(probed.module)
    expected = explain(contiguous, two_photos, "saliency", target=[1, 2]).attribution
    scale = expected.abs().max()
    assert (result.attribution - expected).abs().max() <= 1e-5 * scale


def test_an_unknown_memory_format_setting_is_refused(monkeypatch):
    monkeypatch.setenv("EXPLAINER_MEMORY_FORMAT", "nhwc")
    with pytest.raises(ValueError, match="EXPLAINER_MEMORY_FORMAT"):
        in_preferred_layout(tiny_cnn(), EXAMPLE)
