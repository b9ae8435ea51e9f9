"""A ``torch.export`` program (ResNet18, random weights) loaded from a model config: the gradient
methods equal Captum run on the same exported program (1e-5), Grad-CAM equals Captum's
LayerGradCam hooked on the exported ``layer4``, and the rectifier rules, which Captum can only
apply to eager nn.ReLU modules, equal Captum's on the eager model the program was exported from.
A TorchScript archive loads without PyTorch's deprecation notice.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import warnings
import zipfile

import pytest
import torch
import torchvision
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)

from engine import explain
from engine.attribution.smoothing import draw_noise, noise_scale
from engine.models import ModelError, load_model
from engine.models.spec import Normalized
from tests.conftest import assert_relative_close

TARGETS = [1, 4]
SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eager_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def write_config(folder, name: str, source: str, file: str) -> str:
    config = {"name": name, source: file, "input_size": [SIZE, SIZE], "mean": MEAN, "std": STD}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def exported_program() -> torch.export.ExportedProgram:
    """ResNet18 exported with a batch size of its own choosing."""
    example = (torch.rand(2, 3, SIZE, SIZE),)
    return torch.export.export(eager_resnet18(), example,
                               dynamic_shapes=({0: torch.export.Dim.AUTO},))  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    torch.export.save(exported_program(), folder / "resnet18.pt2")
    return load_model(write_config(folder, "exported_resnet18", "export", "resnet18.pt2"))


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def ours(model, x, method, options=None):
    return explain(model, x, method, options or {}, target=TARGETS, resize="none").attribution


def test_the_exported_program_keeps_names_and_hooks(exported):
    assert exported.capabilities == {"hooks", "rectifiers"}  # no Python modules, no CAM layer
    assert "layer4.1.relu" in dict(exported.classifier.named_modules())


def test_saliency_and_gradient_x_input(exported, x):
    net = exported.module
    reference = Saliency(net).attribute(x, target=TARGETS, abs=False)
    assert_relative_close(ours(exported, x, "saliency"), reference, 1e-5)
    reference = InputXGradient(net).attribute(x, target=TARGETS)
    assert_relative_close(ours(exported, x, "gradient_x_input"), reference, 1e-5)


def test_integrated_gradients(exported, x):
    reference = IntegratedGradients(exported.module).attribute(
        x, target=TARGETS, n_steps=8, method="gausslegendre"
    )
    assert_relative_close(ours(exported, x, "integrated_gradients", {"steps": 8}), reference, 1e-5)


def test_smoothgrad(exported, x):
    """Captum's saliency on the noisy copies our seeded tunnel draws (Captum's own NoiseTunnel
    draws from the global generator), averaged per image."""
    samples, level = 3, 0.15
    result = ours(exported, x, "smoothgrad", {"samples": samples, "noise_level": level})
    noise = draw_noise(x, samples, noise_scale(x, level), torch.Generator().manual_seed(0))
    noisy = x.repeat_interleave(samples, 0) + noise
    targets = torch.tensor(TARGETS).repeat_interleave(samples)
    grads = Saliency(exported.module).attribute(noisy, target=targets, abs=False)
    assert_relative_close(result, grads.view(2, samples, *x.shape[1:]).mean(1), 1e-5)


RULES = [("guided_backprop", GuidedBackprop), ("deconvolution", Deconvolution)]


@pytest.mark.parametrize(("method", "captum_class"), RULES)
def test_rectifier_rules_on_exported_relus(exported, x, method, captum_class):
    eager = Normalized(eager_resnet18(), MEAN, STD).eval()
    reference = captum_class(eager).attribute(x, target=TARGETS)
    assert_relative_close(ours(exported, x, method), reference, 1e-5)


def test_gradcam_hooks_the_exported_layer(exported, x):
    layer = exported.classifier.get_submodule("layer4")
    cam = LayerGradCam(exported.module, layer).attribute(x, target=TARGETS, relu_attributions=True)
    reference = LayerAttribution.interpolate(cam, (SIZE, SIZE), "bilinear")
    assert_relative_close(ours(exported, x, "gradcam", {"layer": "layer4"}), reference, 1e-5)


def test_torchscript_loads_quietly(tmp_path):
    torch.jit.save(torch.jit.script(eager_resnet18()), tmp_path / "resnet18.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecation notice would fail the load
        model = load_model(write_config(tmp_path, "scripted", "torchscript", "resnet18.pt"))
    assert model.capabilities == frozenset()


class Payload:
    """Unpickling it creates a file: what a hostile archive would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def tampered(source: pathlib.Path, target: pathlib.Path, marker: pathlib.Path, how: str) -> None:
    """A copy of a real .pt2 with a pickled payload where PyTorch's loader would unpickle it."""
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for item in original.infolist():
            data = original.read(item.filename)
            if how == "weights" and item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["conv1.weight"].update(use_pickle=True, path_name="weight_x")
                data = json.dumps(config).encode()
                copy.writestr(item.filename.rsplit("/", 1)[0] + "/weight_x", payload.getvalue())
            if how == "sample_inputs" and "/sample_inputs/" in item.filename:
                data = payload.getvalue()
            copy.writestr(item, data)
        if how == "aotinductor":
            copy.writestr("archive/data/aotinductor/model/model.so", b"\x7fELF")


@pytest.mark.parametrize("how", ["weights", "sample_inputs", "aotinductor"])
def test_archives_that_would_unpickle_or_load_code_are_refused_unopened(tmp_path, how):
    source = tmp_path / "resnet18.pt2"
    torch.export.save(exported_program(), source)
    marker = tmp_path / "created"
    tampered(source, tmp_path / "evil.pt2", marker, how)
    with pytest.raises(ModelError, match="refused"):
        load_model(write_config(tmp_path, "evil", "export", "evil.pt2"))
    assert not marker.exists()
    if how != "aotinductor":  # the check is what stops it: PyTorch's loader runs the payload
        with contextlib.suppress(Exception):
            torch.export.load(tmp_path / "evil.pt2")
        assert marker.exists()
