"""The models people bring, uploaded through the API of an embedded server (real HTTP, random
weights, small inputs): timm ViT-Tiny, DeiT-Tiny, Swin-T (narrower, at 128²) and ConvNeXt-Atto as
timm state dicts, and torchvision's ResNet18 as a state dict for a factory, as a torch.export
program and as a TorchScript archive. For each, every method that ``GET /models`` lists succeeds
in a job and every method it does not list is a 422 at submit; layer names are the model's own.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from PIL import Image

from engine.catalogue import all_methods
from testkit.stack import Api, service_env

ADMIN = {"X-Admin-Key": "admin-secret"}
LABELS = ["ant", "bee", "cat"]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SWIN_SMALL = {"img_size": 128, "embed_dim": 24, "num_heads": [1, 2, 4, 8], "window_size": 4}
TIMM = {  # name: (architecture, factory_kwargs)
    "vit": ("vit_tiny_patch16_224", {"img_size": 96}),
    "deit": ("deit_tiny_patch16_224", {"img_size": 96}),
    "swin": ("swin_tiny_patch4_window7_224", SWIN_SMALL),
    "convnext": ("convnext_atto", {}),
}
RESNET_SIZE = 96
# Options that keep each job to a few passes (the matrix runs every method on every model).
CHEAP = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 2},
    "smoothgrad_sq": {"samples": 2},
    "vargrad": {"samples": 2},
    "smoothgrad_ig": {"steps": 2, "samples": 1},
    "expected_gradients": {"samples": 2},
    "scorecam": {"batch_size": 64},
    **{m: {"iterations": 2, "noise_samples": 2}
       for m in ("pixelmask", "smoothmask", "cartoonx", "waveletx", "shearletx")},
}  # fmt: skip


def saved(value, save) -> bytes:
    buffer = io.BytesIO()
    save(value, buffer)
    return buffer.getvalue()


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=len(LABELS)).eval()


def resnet_state_dict_config() -> dict:
    return {"source": "state_dict", "factory": "torchvision.models:resnet18",
            "factory_kwargs": {"num_classes": 3}, **IMAGENET}  # fmt: skip


def uploads() -> dict[str, tuple[dict, bytes]]:
    """name → (config, weight file) of every model the matrix runs."""
    result = {}
    for name, (architecture, kwargs) in TIMM.items():
        torch.manual_seed(0)
        model = timm.create_model(architecture, pretrained=False, num_classes=3, **kwargs)
        config = {"source": "timm", "architecture": architecture,
                  "factory_kwargs": {"num_classes": 3, **kwargs}}  # fmt: skip
        if name == "convnext":
            config["input_size"] = [RESNET_SIZE, RESNET_SIZE]
        result[name] = (config, saved(model.state_dict(), torch.save))
    size = {"input_size": [RESNET_SIZE, RESNET_SIZE]}
    result["resnet_sd"] = (resnet_state_dict_config() | size,
                           saved(resnet18().state_dict(), torch.save))  # fmt: skip
    example = (torch.rand(2, 3, RESNET_SIZE, RESNET_SIZE),)
    dynamic = ({0: torch.export.Dim.AUTO},)
    program = torch.export.export(resnet18(), example, dynamic_shapes=dynamic)
    result["resnet_export"] = ({"source": "export", **size, **IMAGENET},
                               saved(program, torch.export.save))  # fmt: skip
    scripted = torch.jit.script(resnet18())
    result["resnet_script"] = ({"source": "torchscript", **size, **IMAGENET},
                               saved(scripted, torch.jit.save))  # fmt: skip
    return result


def upload(api: Api, name: str, config: dict, weights: bytes):
    body = {"name": name, "labels": LABELS, **config}
    return api.client.post("/models", headers=ADMIN, files={"weights": ("w", weights)},
                           data={"config": json.dumps(body)}, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_models")
    env = service_env(None, folder / "artifacts", admin_keys="admin-secret", preload_models="")
    api = Api(env, folder)
    for name, (config, weights) in uploads().items():
        response = upload(api, name, config, weights)
        assert response.status_code == 201, response.text
    listing = {m["name"]: m for m in api.client.get("/models").json()}
    yield api, listing
    api.stop()


def submit(api: Api, model: str, method: str, options: dict | None = None):
    request = {"model": model, "sample": "chelsea", "method": method,
               "options": CHEAP.get(method, {}) if options is None else options}  # fmt: skip
    return api.client.post("/explain", json=request)


@pytest.mark.parametrize("model", [*TIMM, "resnet_sd", "resnet_export", "resnet_script"])
def test_every_listed_method_runs_and_every_other_is_refused_at_submit(server, model):
    api, listing = server
    listed = set(listing[model]["methods"])
    jobs, refused = {}, {}
    for method in (m.name for m in all_methods()):
        response = submit(api, model, method)
        if method in listed:
            assert response.status_code == 202, (method, response.text)
            jobs[method] = response.json()["id"]
        else:
            assert response.status_code == 422, (method, response.text)
            refused[method] = response.json()["error"]["message"]
    failed = {}
    for method, job in jobs.items():
        view = api.wait_done(job, timeout=300)
        if view["status"] != "succeeded":
            failed[method] = view.get("error")
    assert not failed, failed
    # What each kind of model must and must not offer.
    assert {"saliency", "integrated_gradients", "pixelmask", "shearletx"} <= listed
    assert "extremal_mask" in refused and "pattern_net" in refused  # series; no pattern set
    cams = {m.name for m in all_methods() if m.family == "cam"}
    if model == "resnet_script":
        assert not cams & listed and "guided_backprop" not in listed
        assert "torch.export" in refused["gradcam"] and "TorchScript" in refused["gradcam"]
    else:
        assert cams - {"guided_gradcam"} <= listed, cams - listed
    rectified = model.startswith("resnet") and model != "resnet_script"
    for method in ("guided_backprop", "deconvolution", "guided_gradcam", "crigrad"):
        assert (method in listed) == rectified, method
    if not rectified and model != "resnet_script":
        assert "ReLU" in refused["guided_backprop"]  # GELU nets: it would equal saliency


def test_uploads_describe_their_normalisation_and_layers(server):
    _, listing = server
    assert listing["vit"]["mean"] == [0.5] * 3 and listing["vit"]["std"] == [0.5] * 3  # timm's
    assert listing["vit"]["input_size"] == [96, 96]
    assert listing["deit"]["mean"] == pytest.approx(IMAGENET["mean"])
    assert listing["vit"]["cam_layer"] == "blocks.11.norm1"
    assert listing["swin"]["cam_layer"] == "layers.3.blocks.1.norm1"
    assert listing["convnext"]["cam_layer"] == "stages"  # the last stage's map
    assert listing["resnet_sd"]["cam_layer"] == "layer4"
    assert listing["resnet_export"]["cam_layer"] == "layer4"
    assert listing["resnet_script"]["capabilities"] == ["any_size"]  # no hooks: no CAMs


def test_layer_options_take_the_models_own_names(server):
    api, _ = server
    own = submit(api, "resnet_sd", "gradcam", {"layer": "layer3"})
    assert own.status_code == 202, own.text
    assert api.wait_done(own.json()["id"])["status"] == "succeeded"
    for wrong in ("classifier.layer4", "layer5"):
        response = submit(api, "resnet_sd", "gradcam", {"layer": wrong})
        assert response.status_code == 422, response.text
        assert "closest: layer4" in response.json()["error"]["message"]
    response = submit(api, "resnet_export", "crigrad", {"layers": ["layer4.1.relu", "relu9"]})
    assert response.status_code == 422 and "'relu9'" in response.text
    built_in = submit(api, "efficientnet_lite0", "gradcam", {"layer": "_blocks.99"})
    assert built_in.status_code == 422 and "_blocks.9" in built_in.text


def test_uploads_say_how_they_normalise(server):
    api, _ = server
    implicit = {k: v for k, v in resnet_state_dict_config().items() if k not in IMAGENET}
    response = upload(api, "implicit", implicit, b"unused")
    assert response.status_code == 422 and "normalize" in response.text
    bad_layer = upload(api, "badlayer", resnet_state_dict_config() | {"cam_layer": "layer9"},
                       saved(resnet18().state_dict(), torch.save))  # fmt: skip
    assert bad_layer.status_code == 422 and "closest: layer" in bad_layer.text
    timm_download = upload(api, "pretrained", {"source": "timm", "architecture": "convnext_atto",
                           "factory_kwargs": {"pretrained": True}}, b"x")  # fmt: skip
    assert timm_download.status_code == 422 and "pretrained" in timm_download.text


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_a_400_mb_state_dict_uploads_without_the_api_holding_it(server, tmp_path):
    """The weights stream to disk and the probe runs in a process of its own: the API's peak
    RSS grows by less than 100 MB while a 400 MB ViT-B state dict is uploaded and probed."""
    api, _ = server
    torch.manual_seed(0)
    classes = 20_000  # ViT-B/16 (343 MB) with a 20,000-class head: about 405 MB
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=classes)
    path = tmp_path / "vit_base.pt"
    torch.save(model.state_dict(), path)
    del model
    assert path.stat().st_size > 400e6
    pid = api.process.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak (VmHWM) to the current RSS
    before = peak_rss_mb(pid)
    config = {"name": "vit_base", "source": "timm", "architecture": "vit_base_patch16_224",
              "factory_kwargs": {"num_classes": classes}}  # fmt: skip
    with open(path, "rb") as weights:
        response = api.client.post("/models", headers=ADMIN, data={"config": json.dumps(config)},
                                   files={"weights": ("w.pt", weights)}, timeout=600)  # fmt: skip
    assert response.status_code == 201, response.text
    growth = peak_rss_mb(pid) - before
    assert growth < 100, f"the API's peak RSS grew by {growth:.0f} MB"
    assert api.client.delete("/models/vit_base", headers=ADMIN).status_code == 204


def test_weights_above_the_limit_are_a_413_naming_the_setting(tmp_path):
    from fastapi.testclient import TestClient

    from jobs.settings import Settings
    from service.app import create_app

    settings = Settings(artifact_dir=tmp_path, admin_keys=("admin-secret",), max_model_bytes=4096)
    config = {"config": json.dumps({"name": "big", "source": "export", "normalize": False})}
    with TestClient(create_app(settings)) as client:
        for size in (10_000, 200_000):  # under the body limit (file checked), and over it
            response = client.post("/models", headers=ADMIN, data=config,
                                   files={"weights": ("w", b"0" * size)})  # fmt: skip
            assert response.status_code == 413, response.text
            assert "EXPLAINER_MAX_MODEL_BYTES" in response.json()["error"]["message"]
        assert not list((tmp_path / "models").iterdir())  # nothing left of either upload


def test_models_of_one_input_size_refuse_other_sizes_at_submit(server):
    api, listing = server
    assert "any_size" not in listing["vit"]["capabilities"]  # fixed position embeddings
    assert "any_size" not in listing["resnet_export"]["capabilities"]  # exported at 96²
    assert "any_size" in listing["resnet_sd"]["capabilities"]  # global average pooling
    for model in ("vit", "resnet_export"):
        resized = submit(api, model, "pixelmask", {"iterations": 1, "image_size": 64})
        assert resized.status_code == 422 and "images only" in resized.text, resized.text
        request = {"model": model, "sample": "chelsea", "method": "saliency", "resize": "none"}
        native = api.client.post("/explain", json=request)
        assert native.status_code == 422 and "451" in native.text, native.text  # chelsea's width
    fine = submit(api, "resnet_sd", "pixelmask", {"iterations": 1, "image_size": 64})
    assert fine.status_code == 202, fine.text
    assert api.wait_done(fine.json()["id"])["status"] == "succeeded"


def test_exports_must_take_any_batch_size(server):
    api, _ = server
    example = (torch.rand(2, 3, RESNET_SIZE, RESNET_SIZE),)
    config = {"source": "export", "input_size": [RESNET_SIZE, RESNET_SIZE], **IMAGENET}
    bounded = {0: torch.export.Dim("batch", min=2, max=8)}
    for name, dynamic in (("static", None), ("bounded", (bounded,))):
        program = torch.export.export(resnet18(), example, dynamic_shapes=dynamic)
        response = upload(api, f"batch-{name}", config, saved(program, torch.export.save))
        assert response.status_code == 422, response.text
        assert "free batch size" in response.json()["error"]["message"]


def test_a_name_uploaded_again_is_a_new_model_for_reuse(server):
    api, _ = server
    config = resnet_state_dict_config() | {"input_size": [RESNET_SIZE, RESNET_SIZE]}
    views = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        weights = torchvision.models.resnet18(num_classes=3).state_dict()
        assert upload(api, "again", config, saved(weights, torch.save)).status_code == 201
        response = submit(api, "again", "saliency")
        assert response.status_code == 202, response.text  # never "reused" across uploads
        views.append(api.wait_done(response.json()["id"]))
        assert api.client.delete("/models/again", headers=ADMIN).status_code == 204
    first, second = (view["prediction"]["probability"] for view in views)
    assert first != second


def test_cam_layers_must_output_maps(server):
    api, _ = server
    not_a_map = upload(api, "fc-cam", resnet_state_dict_config() | {"cam_layer": "fc"},
                       saved(resnet18().state_dict(), torch.save))  # fmt: skip
    assert not_a_map.status_code == 422 and "outputs no spatial map" in not_a_map.text
    for model, layer in (("resnet_sd", "fc"), ("resnet_export", "avgpool"), ("vit", "head")):
        response = submit(api, model, "gradcam", {"layer": layer})
        assert response.status_code == 422 and "outputs no spatial map" in response.text
    assert submit(api, "efficientnet_lite0", "gradcam", {"layer": "_fc"}).status_code == 422


def test_odd_uploads_and_training_requests_are_refused(server):
    api, _ = server
    tiny = upload(api, "tiny-input", resnet_state_dict_config() | {"input_size": [16, 16]}, b"x")
    assert tiny.status_code == 422 and "input_size" in tiny.text
    both = upload(api, "both", resnet_state_dict_config() | {"normalize": False}, b"x")
    assert both.status_code == 422 and "takes no 'mean'" in both.text
    twice = upload(api, "twice", resnet_state_dict_config() | {"labels": ["a", "a", "b"]}, b"x")
    assert twice.status_code == 422 and "differ" in twice.text
    assert api.client.delete("/models/%2E%2E", headers=ADMIN).status_code == 404
    patterns = api.client.post("/patterns", json={"model": "resnet_export", "images": "samples"})
    assert patterns.status_code == 422 and "Python modules" in patterns.text


def test_the_memory_of_an_uploaded_models_pass_bounds_its_jobs(server):
    """The probe measures a pass's memory per pixel (a TorchScript model cannot run on the meta
    device as built-in models do): ResNet18 kept at 5000×5000 needs ~10 GB for one row, over the
    8 GB budget, and is refused at submit for every method (it was accepted: nothing knew)."""
    api, listing = server
    assert "any_size" in listing["resnet_script"]["capabilities"]
    picture = io.BytesIO()
    Image.new("RGB", (5000, 5000), (90, 120, 30)).save(picture, "PNG")
    for method in ("saliency", "integrated_gradients"):
        request = {"model": "resnet_script", "method": method, "resize": "none"}
        response = api.client.post("/explain", files={"image": ("big.png", picture.getvalue())},
                                   data={"request": json.dumps(request)})  # fmt: skip
        assert response.status_code == 422, response.text
        assert "resnet_script at 5000×5000 needs about" in response.json()["error"]["message"]
