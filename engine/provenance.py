"""Where a result came from: library versions and the device, recorded in every summary and
in every saved model, pattern set or support set."""

from __future__ import annotations

import functools
import importlib.metadata
import platform

import numpy as np
import torch


@functools.cache
def versions() -> dict[str, str]:
    """Python, this package, torch, torchvision and numpy versions."""
    found = {"python": platform.python_version()}
    for package in ("explainer-service", "torch", "torchvision"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["numpy"] = np.__version__
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def memory_format(model: torch.nn.Module) -> str:
    """The layout the model's convolution weights are in: ``channels_last`` where a 4-D
    parameter is stored NHWC (:mod:`engine.models.layout` chose it at load), else
    ``contiguous``. Results in the two differ by float rounding only."""
    for parameter in model.parameters():
        nhwc = parameter.ndim == 4 and not parameter.is_contiguous()
        if nhwc and parameter.is_contiguous(memory_format=torch.channels_last):
            return "channels_last"
    return "contiguous"
