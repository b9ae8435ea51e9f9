"""The digits test bed: a small CNN on scikit-learn's ``load_digits`` (8×8 grey images, 10 classes).

It trains in seconds on a CPU with a fixed seed, so tests and benchmarks of the pattern methods,
GAD, ROAR and Sensitivity-n use a real trained network without shipping weights. The network has
every layer kind the pattern estimator must handle: biases, BatchNorm between layers, a strided
convolution, a depthwise (grouped) convolution, and Linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class DigitsData:
    """Images (N, 1, 8, 8) in [0, 1] and labels (N,), split into train and test by a seed."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_digits_data(seed: int = 0, test_fraction: float = 0.2, size: int = 8) -> DigitsData:
    """scikit-learn's 1797 digits scaled from 0…16 to [0, 1], a seeded stratified split;
    ``size`` > 8 upsamples them bilinearly (finer maps for hull-based metrics)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        ).clamp(0, 1)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return DigitsData(images[train], labels[train], images[test], labels[test])


class DigitsCNN(nn.Module):
    """conv3×3(16)+BN+ReLU → conv3×3/2(32)+ReLU → depthwise conv3×3+ReLU → max-pool to 4×4 →
    FC 64+ReLU → FC 10 (any input size ≥ 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),  # identity at 8×8 input; max-pool switches above
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def train_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Cross-entropy with Adam on seeded shuffles; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


def train_digits_cnn(data: DigitsData, seed: int = 0, epochs: int = 30) -> nn.Module:
    """A :class:`DigitsCNN` trained from a seeded initialisation, frozen and in eval mode."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    train_classifier(model, data.train_x, data.train_y, epochs=epochs, seed=seed)
    return model.requires_grad_(False)
