"""Shared fixtures: the real bundled model, a torchvision model with seeded random weights, and
real photographs from scikit-image."""

from __future__ import annotations

import pytest
import torch

from engine.data import load_image
from engine.models import load_model
from engine.runtime import keep_freed_memory

torch.set_num_threads(max(1, torch.get_num_threads()))
keep_freed_memory()  # as every entry point does: large temporaries reuse the heap


@pytest.fixture(scope="session")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def resnet18_random():
    return load_model("resnet18", weights="random:0")


@pytest.fixture(scope="session")
def chelsea() -> torch.Tensor:
    """(1, 3, 224, 224) in [0, 1]."""
    return load_image("chelsea", (224, 224))[0][None]


@pytest.fixture(scope="session")
def two_photos() -> torch.Tensor:
    """(2, 3, 224, 224): chelsea and astronaut."""
    return torch.stack([load_image(n, (224, 224))[0] for n in ("chelsea", "astronaut")])


def assert_relative_close(ours: torch.Tensor, reference: torch.Tensor, tol: float) -> None:
    """max |ours − reference| ≤ tol · max |reference| (relative to the reference's scale)."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert scale > 0, "reference is all zeros: the comparison would prove nothing"
    assert error <= tol * scale, f"max error {error:.3g} > {tol} × {scale:.3g}"
