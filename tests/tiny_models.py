"""Small model factories referenced by model config files in the tests."""

from torch import nn


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


class RowLimitedCNN(nn.Module):
    """tiny_cnn on a device with room for ``rows`` input rows per pass: a larger batch raises
    the out-of-memory error a full GPU raises."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.net = rows, tiny_cnn()

    def forward(self, x):
        import torch

        if x.shape[0] > self.rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory: {x.shape[0]} rows")
        return self.net(x)


def slow_loading_cnn() -> nn.Module:
    """tiny_cnn that takes 5 s to build, like a large checkpoint on a slow disk."""
    import time

    time.sleep(5)
    return tiny_cnn()
