"""ROAR and KAR (Hooker et al., NeurIPS 2019; specs §2.4): retrain on degraded data.

For each t, the top-t fraction of pixels of every train and test image (ROAR), or all but the
top-t (KAR), is replaced by the per-channel mean of the training set; the same architecture is
trained from scratch on the degraded training set and its accuracy on the degraded test set is
reported. A good ranking makes ROAR accuracy fall fast and keeps KAR accuracy high; a random
ranking is the baseline. This is a job for small datasets (the digits test bed): it costs one
attribution of every image and one training per t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from engine.method import ProgressFn
from engine.metrics.perturbation import ranking
from engine.runtime import checkpoint

HeatFn = Callable[[Tensor, Tensor], Tensor]  # (images, labels) → heat maps (N, H, W)
TrainFn = Callable[[Tensor, Tensor], nn.Module]  # (images, labels) → trained model


def degrade(images: Tensor, heat: Tensor, fraction: float, fill: Tensor, keep: bool) -> Tensor:
    """Replace the top ``fraction`` of pixels (ROAR) or all the others (KAR) by ``fill`` (C,)."""
    count = round(fraction * heat[0].numel())
    top = (ranking(heat.flatten(1), "morf") < count).view(heat.shape).unsqueeze(1)
    replaced = ~top if keep else top
    return torch.where(replaced, fill.view(1, -1, 1, 1).to(images), images)


def heat_maps(heat_fn: HeatFn, images: Tensor, labels: Tensor, batch: int = 256) -> Tensor:
    return torch.cat(
        [
            heat_fn(images[s : s + batch], labels[s : s + batch])
            for s in range(0, len(labels), batch)
        ]
    )


def roar(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    heat_fn: HeatFn,
    train_fn: TrainFn,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    *,
    keep: bool = False,
    progress: ProgressFn | None = None,
) -> dict[float, float]:
    """Test accuracy of a model retrained at each fraction (ROAR, or KAR with ``keep``)."""
    (train_x, train_y), (test_x, test_y) = train, test
    fill = train_x.mean(dim=(0, 2, 3))
    train_heat = heat_maps(heat_fn, train_x, train_y)
    test_heat = heat_maps(heat_fn, test_x, test_y)
    result = {}
    for done, fraction in enumerate(fractions, 1):
        checkpoint()
        model = train_fn(degrade(train_x, train_heat, fraction, fill, keep), train_y)
        with torch.no_grad():
            predicted = model(degrade(test_x, test_heat, fraction, fill, keep)).argmax(1)
        result[fraction] = float((predicted == test_y).float().mean())
        if progress is not None:
            progress(done, len(fractions), accuracy=result[fraction])
    return result
