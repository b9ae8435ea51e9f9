"""The CAM family on transformer layers equals pytorch-grad-cam with its documented
``reshape_transform`` (tokens without the class token reshaped to the patch grid for ViT/DeiT;
Swin's channels-last maps permuted), in float64 to 1e-6 relative, at the layer our models'
probe chooses (the last block's input norm). timm models with random weights at small sizes
(ViT/DeiT at 96², a narrower Swin-T at 128²) keep the 2-core suite fast; the layers, token
layout and windows are those of the named architectures.
"""

from __future__ import annotations

import pytest
import timm
import torch

from engine import explain
from engine.attribution.cam import spatial_map, token_grid
from engine.method import MethodError
from engine.models.inspection import capabilities_of, locate_cam_layer, map_layers
from tests.conftest import assert_relative_close
from tests.test_cam import THEIRS, reference_map

TARGETS = [1, 3]
ARCHITECTURES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 96}, 96, "blocks.11.norm1"),
    "deit": ("deit_tiny_patch16_224", {"img_size": 96}, 96, "blocks.11.norm1"),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 128, "embed_dim": 24, "num_heads": (1, 2, 4, 8), "window_size": 4},
             128, "layers.3.blocks.1.norm1"),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def transformer(request):
    architecture, kwargs, size, layer = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = timm.create_model(architecture, pretrained=False, num_classes=5, **kwargs)
    model = model.eval().double().requires_grad_(False)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    return request.param, model, x, layer


def their_reshape(kind: str, grid: int):
    """pytorch-grad-cam's reshape_transform from its ViT and Swin tutorials."""

    def vit(tensor):
        result = tensor[:, 1:, :].reshape(tensor.size(0), grid, grid, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    def swin(tensor):
        return tensor.transpose(2, 3).transpose(1, 2)

    return swin if kind == "swin" else vit


def test_the_probe_chooses_the_last_blocks_input_norm(transformer):
    _, model, x, layer = transformer
    assert locate_cam_layer(model, map_layers(model, x)) == layer
    assert capabilities_of(model, layer) == {"hooks", "modules", "cam_layer"}  # GELU: no ReLU


@pytest.mark.parametrize("method", list(THEIRS))
def test_transformer_cam_equals_pytorch_grad_cam(transformer, method):
    kind, model, x, layer = transformer
    their_class, our_class = THEIRS[method]
    grid = x.shape[-1] // (32 if kind == "swin" else 16)
    module = model.get_submodule(layer)
    reference = reference_map(their_class, model, module, x, TARGETS, their_reshape(kind, grid))
    result = our_class(model, layer, relu=False).layer_map(x, torch.tensor(TARGETS))[:, 0]
    assert result.shape[-2:] == (grid, grid)
    if method == "eigencam":  # the SVD's sign, as in tests/test_cam.py
        reference = reference * torch.sign((reference * result).sum((1, 2), keepdim=True))
    assert_relative_close(result, reference, 1e-6)


def test_explain_runs_the_cams_on_a_vit_at_its_default_layer():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4,
                            img_size=64).eval()  # fmt: skip
    x = torch.rand(1, 3, 64, 64)
    for method in ("gradcam", "scorecam", "eigencam"):
        options = {"layer": "blocks.11.norm1", "relu": False}  # random weights: maybe all < 0
        result = explain(vit, x, method, options, resize="none")
        assert result.attribution.shape == (1, 1, 64, 64)
        assert torch.isfinite(result.attribution).all() and result.attribution.abs().max() > 0
    with pytest.raises(MethodError, match="has none"):
        explain(vit, x, "guided_backprop", resize="none")  # GELU: it would equal saliency
    with pytest.raises(MethodError, match=r"closest: .*blocks\.11\.norm1"):
        explain(vit, x, "gradcam", {"layer": "blocks.11.norm"}, resize="none")


def test_token_grids():
    assert token_grid(197, (224, 224), None, None) == (1, (14, 14))  # ViT: class token
    assert token_grid(198, (224, 224), None, None) == (2, (14, 14))  # DeiT distilled
    assert token_grid(201, (224, 224), None, None) == (5, (14, 14))  # 4 registers + class
    assert token_grid(1 + 7 * 14, (112, 224), None, None) == (1, (7, 14))  # not square
    # Small grids with registers: 21 = 1 + 4×5 fits no square grid; 5 + 4×4 does.
    assert token_grid(21, (56, 56), None, None) == (5, (4, 4))
    assert token_grid(30, (70, 70), None, None) == (5, (5, 5))
    assert token_grid(1 + 6 * 9, (100, 150), None, None) == (1, (6, 9))  # sides not multiples
    assert token_grid(197, (224, 224), (14, 14), None) == (1, (14, 14))
    assert token_grid(200, (224, 224), (10, 20), 0) == (0, (10, 20))
    with pytest.raises(MethodError, match="not 3 dropped"):
        token_grid(197, (224, 224), (14, 14), 3)
    with pytest.raises(MethodError, match="grid"):
        token_grid(37, (224, 448), None, 0)  # 37 tokens: no 1:2 grid


def test_spatial_maps_of_each_layout():
    maps = torch.arange(2 * 16 * 3 * 5, dtype=torch.float64).view(2, 16, 3, 5)  # (B, C, h, w)
    assert torch.equal(spatial_map(maps, (60, 100)), maps)
    assert torch.equal(spatial_map(maps.permute(0, 2, 3, 1), (60, 100)), maps)  # channels-last
    tokens = torch.cat([torch.zeros(2, 1, 16), maps.flatten(2).transpose(1, 2)], 1)
    assert torch.equal(spatial_map(tokens, (60, 100)), maps)  # class token dropped
    with pytest.raises(MethodError, match="neither a map"):
        spatial_map(torch.zeros(2, 8), (60, 100))
