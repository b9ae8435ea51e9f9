"""Small model factories referenced by model config files in the tests, and hostile models
built on them (what an uploaded archive must not be able to do)."""

import torch
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


class ReadsAFile(nn.Module):
    """tiny_cnn whose forward maps a file of the server (torch.from_file; shared=True creates it
    when missing, so a test sees that it ran) and adds its first byte to the scores."""

    def __init__(self, path: str):
        super().__init__()
        self.net, self.path = tiny_cnn(), path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peek = torch.from_file(self.path, True, 1, dtype=torch.uint8)
        return self.net(x) + peek.float()


def write_tensor(x: torch.Tensor, path: str) -> torch.Tensor:
    torch.save(x, path)
    return x


class WritesAFile(nn.Module):
    """tiny_cnn whose forward writes its input to a file, from a function it calls."""

    def __init__(self, path: str):
        super().__init__()
        self.net, self.path = tiny_cnn(), path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(write_tensor(x, self.path))


class WritesWhenLoaded(nn.Module):
    """tiny_cnn with a __setstate__ that writes a file: torch.jit.load runs it while loading."""

    def __init__(self, path: str):
        super().__init__()
        self.net, self.path = tiny_cnn(), path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        torch.save(torch.zeros(1), state[0])
        self.path, self.training = state


class Prints(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("scores")
        return self.net(x)
