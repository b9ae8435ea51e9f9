"""Model registry: the bundled model, torchvision weights, user config files."""

from __future__ import annotations

import json

import pytest
import torch

from engine import explain
from engine.models import MODELS, ModelError, get_model_spec, load_model


def test_lite0_predicts_egyptian_cat_on_chelsea(lite0, chelsea):
    with torch.no_grad():
        probabilities = lite0.module(chelsea).softmax(1)
    assert probabilities.argmax(1).item() == 285
    assert lite0.spec.label(285) == "Egyptian cat"
    assert len(lite0.spec.labels) == 1000


def test_lite2_is_a_second_real_model():
    """EfficientNet-Lite2 (bundled weights, 260² input): real ImageNet predictions on photographs
    that differ from Lite0's in confidence, and a Grad-CAM at its default layer."""
    from engine.data import load_image

    lite2 = load_model("efficientnet_lite2")
    assert lite2.spec.input_size == (260, 260) and lite2.weights_sha256 is not None
    photos = torch.stack([load_image(n, (260, 260))[0] for n in ("chelsea", "coffee", "camera")])
    with torch.no_grad():
        probabilities = lite2.module(photos).softmax(1)
    assert probabilities.argmax(1).tolist() == [285, 967, 872]  # Egyptian cat, espresso, tripod
    assert (probabilities.amax(1) > 0.5).all()
    cam = explain(lite2, "chelsea", "gradcam").attribution
    assert cam.shape == (1, 1, 260, 260) and cam.max() > 0


def test_loaded_model_is_frozen_eval_and_normalises_inside(lite0):
    assert not lite0.module.training
    assert not any(p.requires_grad for p in lite0.module.parameters())
    assert lite0.weights_sha256 is not None and len(lite0.weights_sha256) == 64
    # Normalisation is inside: the raw classifier on (x − mean)/std equals the wrapped model on x.
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(lite0.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(lite0.spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(lite0.module(x), lite0.module.classifier((x - mean) / std))


def test_torchvision_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError, match=str(tmp_path)) as error:
        load_model("resnet18")
    assert "not found" in str(error.value)
    with pytest.raises(ModelError, match=r"nowhere\.pth"):
        load_model("vgg16", weights=str(tmp_path / "nowhere.pth"))


def test_torchvision_weights_from_file_and_random_is_explicit(tmp_path):
    random_model = load_model("resnet18", weights="random:3")
    assert random_model.weights == "random:3"
    path = tmp_path / "r18.pth"
    torch.save(random_model.module.classifier.state_dict(), path)
    from_file = load_model("resnet18", weights=str(path))
    assert from_file.weights == str(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(from_file.module(x), random_model.module(x))
    # The same seed gives the same random model; another seed does not.
    again = load_model("resnet18", weights="random:3").module
    other = load_model("resnet18", weights="random:4").module
    with torch.no_grad():
        assert torch.equal(again(x), random_model.module(x))
        assert not torch.equal(other(x), random_model.module(x))


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        get_model_spec("nope")


def test_registry_covers_the_torchvision_architectures():
    for name in (
        "resnet18",
        "resnet50",
        "vgg16",
        "vgg19",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
    ):
        assert MODELS[name].needs_weights_file
        assert MODELS[name].cam_layer


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_user_model_config(tmp_path, fmt):
    """A config naming a factory, a state dict, labels from a file and a CAM layer."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 2),
    )  # fmt: skip
    torch.manual_seed(0)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "labels.txt").write_text("left\nright\n")
    config = {
        "name": "tiny",
        "factory": "tests.tiny_models:tiny_cnn",
        "state_dict": "tiny.pt",
        "input_size": [32, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "labels": "labels.txt",
        "cam_layer": "1",
    }
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(config))
    else:
        import yaml

        path.write_text(yaml.safe_dump(config))
    loaded = load_model(str(path))
    assert loaded.spec.labels == ("left", "right")
    assert loaded.weights.endswith("tiny.pt")
    result = explain(loaded, "chelsea", "gradcam", target="right")
    assert result.predictions[0].target == 1
    assert result.attribution.shape == (1, 1, 32, 32)


def test_bad_config_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nfactory: a:b\ntorchscript: c.pt\n")
    with pytest.raises(ModelError, match="exactly one"):
        load_model(str(path))
    path.write_text("name: x\nfactory: a:b\nunknown_field: 1\n")
    with pytest.raises(ModelError, match="unknown_field"):
        load_model(str(path))


def test_class_numbers_are_ascii_digits():
    spec = MODELS["efficientnet_lite0"]
    assert spec.class_index("285") == 285 and spec.class_index(" -1 ") == -1
    assert spec.class_index("Egyptian cat") == 285
    for text in ("²", "٣", "1²", "+3", "3.0"):
        with pytest.raises(ModelError, match="no class labelled"):
            spec.class_index(text)


def test_a_torchscript_model_of_raw_pixels_loads_frozen_and_explains(tmp_path):
    """``normalize: false`` leaves the ScriptModule unwrapped: load_model called
    requires_grad_ on it, which ScriptModules lack (the probe accepted such an upload and every
    job on it failed)."""
    import torchvision

    torch.manual_seed(0)
    scripted = torch.jit.script(torchvision.models.resnet18(num_classes=3).eval())
    torch.jit.save(scripted, tmp_path / "model.pt")
    config = {"name": "raw", "torchscript": str(tmp_path / "model.pt"), "normalize": False,
              "input_size": [64, 64], "labels": ["a", "b", "c"]}  # fmt: skip
    (tmp_path / "raw.json").write_text(json.dumps(config))
    loaded = load_model(str(tmp_path / "raw.json"))
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert not any(p.requires_grad for p in loaded.module.parameters())
    x = torch.rand(1, 3, 64, 64)
    attribution = explain(loaded, x, "saliency", target=1).attribution
    leaf = x.clone().requires_grad_(True)
    scripted(leaf)[0, 1].backward()
    torch.testing.assert_close(attribution, leaf.grad)
