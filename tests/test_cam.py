"""The CAM family equals pytorch-grad-cam (package ``grad-cam``) at the layer's resolution, before
the ReLU, on two torchvision architectures with random weights and on the bundled model.

pytorch-grad-cam's own output is ReLU'd, min-max scaled and resized with OpenCV; its
``get_cam_image`` is the map before those steps, which is what our ``layer_map`` is before its
ReLU. Tolerance: max |ours − theirs| ≤ 1e-5 · max |theirs|.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from engine import explain
from engine.attribution import cam as ours
from engine.data import load_image
from engine.models import load_model
from tests.conftest import assert_relative_close

TARGETS = [285, 409]
THEIRS = {
    "gradcam": (GradCAM, ours.GradCAM),
    "gradcam_plusplus": (GradCAMPlusPlus, ours.GradCAMPlusPlus),
    "xgradcam": (XGradCAM, ours.XGradCAM),
    "hirescam": (HiResCAM, ours.HiResCAM),
    "layercam": (LayerCAM, ours.LayerCAM),
    "scorecam": (ScoreCAM, ours.ScoreCAM),
    "eigencam": (EigenCAM, ours.EigenCAM),
}
# (model, weights, layer, input size): layers whose spatial gradients vary (not right before a
# global pooling, where Grad-CAM, XGrad-CAM and HiResCAM coincide), each called once.
BEDS = {
    "resnet18": ("resnet18", "random:0", "layer3", 64),
    "mobilenet_v3_small": ("mobilenet_v3_small", "random:0", "features.8", 96),
    "lite0": ("efficientnet_lite0", None, "_blocks.12", 128),
}


@pytest.fixture(scope="module", params=list(BEDS))
def bed(request):
    name, weights, layer, size = BEDS[request.param]
    model = load_model(name, weights=weights)
    photos = torch.stack([load_image(n, (size, size))[0] for n in ("chelsea", "astronaut")])
    return model, f"classifier.{layer}", photos


def reference_map(cam_class, net, layer, x, classes=TARGETS, reshape=None) -> torch.Tensor:
    """pytorch-grad-cam's CAM at the layer's resolution, before its ReLU and scaling."""
    cam = cam_class(model=net, target_layers=[layer], reshape_transform=reshape)
    targets = [ClassifierOutputTarget(t) for t in classes]
    leaf = x.clone().requires_grad_(True)  # our models' weights are frozen: the graph needs x
    outputs = cam.activations_and_grads(leaf)
    if cam.uses_gradients:
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward(retain_graph=True)
    activations = cam.activations_and_grads.activations[0].numpy()
    gradients = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
    result = cam.get_cam_image(leaf.detach(), layer, targets, activations, gradients, False)
    cam.activations_and_grads.release()
    return torch.from_numpy(result)


@pytest.mark.parametrize("method", list(THEIRS))
def test_cam_equals_pytorch_grad_cam(bed, method):
    model, path, x = bed
    their_class, our_class = THEIRS[method]
    net = model.module
    if method == "xgradcam":
        # Divides by channel sums near zero: float32 sums are ~1e-5 of the map off the formula
        # (ours are float64, test_xgradcam_is_exact_...), so both sides run in float64 here.
        net, x = copy.deepcopy(net).double(), x.double()
    reference = reference_map(their_class, net, net.get_submodule(path), x)
    result = our_class(net, path, relu=False).layer_map(x, torch.tensor(TARGETS))[:, 0]
    if method == "eigencam":
        # An SVD leaves the principal direction's sign open; pytorch-grad-cam keeps LAPACK's,
        # ours orients it so that the channel weights sum to ≥ 0.
        reference = reference * torch.sign((reference * result).sum((1, 2), keepdim=True))
    assert_relative_close(result, reference, 1e-5)


def test_gradcam_like_weights_differ_where_gradients_vary(bed):
    """The bed's layers are ones where the CAMs are not all the same map."""
    model, path, x = bed
    maps = {
        name: cls(model.module, path, relu=False).layer_map(x, torch.tensor(TARGETS))
        for name, (_, cls) in THEIRS.items()
        if name in ("gradcam", "xgradcam", "hirescam")
    }
    scale = maps["gradcam"].abs().max()
    for other in ("hirescam", "xgradcam"):
        assert (maps[other] - maps["gradcam"]).abs().max() > 1e-2 * scale


@pytest.mark.parametrize("method", [*THEIRS, "guided_gradcam"])
def test_every_cam_through_explain(lite0, method):
    """Registered, upsampled to the input, non-negative after the ReLU, finite."""
    options = {"layer": "_blocks.12"} | ({"batch_size": 64} if method == "scorecam"
                                                     else {})  # fmt: skip
    photo = load_image("chelsea", (96, 96))[0]
    result = explain(lite0, photo, method, options, resize="none")
    assert result.attribution.shape[-2:] == (96, 96)
    assert torch.isfinite(result.attribution).all() and result.attribution.abs().max() > 0
    if method != "guided_gradcam":
        assert result.attribution.min() >= 0


def test_xgradcam_is_exact_where_a_channel_sums_to_nearly_zero(lite0):
    """At Lite0's last BatchNorm some channels' signed activations sum to ~0.02 against values
    of ~1, and XGrad-CAM divides by that sum: float32 sums (pytorch-grad-cam's too) are ~1e-4
    of the map's maximum off the float64 formula, ours stay within float32's rounding."""
    path, x = "classifier._bn1", load_image("chelsea", (224, 224))[0][None]
    cam = ours.XGradCAM(lite0.module, path, relu=False)
    targets = torch.tensor(TARGETS[:1])
    activation, gradient = (t.double() for t in cam.activation_and_gradient(x, targets))
    totals = activation.sum((2, 3), keepdim=True)
    assert totals.abs().min() < 0.05 * activation.abs().amax((2, 3)).max()
    weights = (gradient * activation / (totals + 1e-7)).sum((2, 3), keepdim=True)
    exact = (weights * activation).sum(1)
    assert_relative_close(cam.layer_map(x, targets)[:, 0].double(), exact, 2e-6)
