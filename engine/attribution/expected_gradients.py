"""Expected Gradients (Erion et al. 2021).

EG(x) = E_{x'~D, α~U(0,1)} [(x − x') ⊙ ∇S_c(x' + α(x − x'))], estimated with k draws of a
reference image x' from a reference set D and an α per draw. Image b's k draws (k indices,
then k values of α) come from its own generator seeded with the seed alone, so an image gets
the same draws at any position of any batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.attribution.base import GradientFn, chunks
from engine.method import Attribution, MethodError
from engine.runtime import input_generators


class ExpectedGradients(Attribution):
    """EG with baselines drawn from ``references`` (R, C, H, W), one α per draw."""

    def __init__(
        self,
        gradient: GradientFn,
        references: Tensor,
        samples: int = 50,
        internal_batch_size: int | None = None,
        seed: int = 0,
    ):
        if references.ndim < 2 or references.shape[0] < 1:
            raise MethodError("Expected Gradients needs a non-empty reference set")
        self.gradient = gradient
        self.references = references
        self.samples = samples
        self.internal_batch_size = internal_batch_size
        self.seed = seed
        # Injected draws (B·k,) replace the random ones: reference indices and α values.
        self.draws: tuple[Tensor, Tensor] | None = None

    def draw(self, batch: int) -> tuple[Tensor, Tensor]:
        """(B·k,) reference indices and α values; rows b·k … b·k + k − 1 are image b's."""
        indices, alphas = [], []
        for generator in input_generators(self.seed, batch):
            references = self.references.shape[0]
            indices.append(torch.randint(0, references, (self.samples,), generator=generator))
            alphas.append(torch.rand(self.samples, generator=generator))
        return torch.cat(indices), torch.cat(alphas)

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.references.shape[1:] != x.shape[1:]:
            raise MethodError(
                f"reference images have shape {tuple(self.references.shape[1:])}, "
                f"the input {tuple(x.shape[1:])}"
            )
        index, alpha = self.draws or self.draw(x.shape[0])
        references = self.references.to(x.device, x.dtype)
        rows = x.shape[0] * self.samples
        total = torch.zeros_like(x)
        for part in chunks(rows, self.internal_batch_size, x[0]):
            image = torch.arange(part.start, part.stop, device=x.device) // self.samples
            baseline = references[index[part].to(x.device)]
            a = alpha[part].to(x.device, x.dtype).view(-1, *[1] * (x.ndim - 1))
            # α·x + (1 − α)·x', as Captum's GradientShap rounds it: baseline + α·(x − x') is
            # the same point to one rounding, which can flip a ReLU6 and move a gradient by 0.4 %.
            point = a * x[image] + (1 - a) * baseline
            grads = self.gradient(point, targets[image])
            total.index_add_(0, image, (x[image] - baseline) * grads)
            self._report(part.stop, rows)
        return total / self.samples
