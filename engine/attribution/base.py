"""Shared pieces of every gradient method: the explained score, the input gradient, the base class.

Conventions (spec §0): the explained scalar is ``S_c(x)`` for the target class c of each image,
read as a logit, softmax probability or log-softmax; a batch is explained with one backward pass of
``Σ_b S_{c_b}(x_b)`` on a fresh leaf tensor; attributions have the input's shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from engine.method import BackwardRule, MethodError
from engine.runtime import checkpoint, max_rows_per_pass

ScoreType = Literal["logit", "softmax", "log_softmax"]


def class_scores(outputs: Tensor, targets: Tensor, score: ScoreType = "logit") -> Tensor:
    """``S_{c_b}`` for each row b of the model's outputs (B, classes) → (B,)."""
    if score == "softmax":
        outputs = outputs.softmax(dim=1)
    elif score == "log_softmax":
        outputs = outputs.log_softmax(dim=1)
    elif score != "logit":
        raise MethodError(f"unknown score type {score!r}")
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


class StackedRules:
    """Several backward rules active together, entered in order (the first one's hooks run
    first; e.g. Guided Backprop's rectifier rule, then an add-on's gradient filter)."""

    def __init__(self, rules: list[BackwardRule]):
        self.rules = rules

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for rule in self.rules:
                stack.enter_context(rule.applied(model))
            yield


def stacked(*rules: BackwardRule | None) -> BackwardRule | None:
    """One rule from several (``None`` entries dropped); ``None`` when there are none."""
    present = [rule for rule in rules if rule is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return StackedRules(present)


class GradientFn(Protocol):
    """``(x, targets) → ∂S/∂x`` with the shape of x."""

    def __call__(self, x: Tensor, targets: Tensor) -> Tensor: ...


class InputGradient:
    """``∂S_c/∂x`` of ``model``, optionally under a :class:`BackwardRule`.

    One forward and one backward pass for the whole batch; parameters are never differentiated.
    """

    def __init__(
        self, model: nn.Module, score: ScoreType = "logit", rule: BackwardRule | None = None
    ):
        self.model = model
        self.score = score
        self.rule = rule

    def __call__(self, x: Tensor, targets: Tensor) -> Tensor:
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad(), self.rule.applied(self.model) if self.rule else _null():
            scores = class_scores(self.model(leaf), targets, self.score)
            (grad,) = torch.autograd.grad(scores.sum(), leaf)
        return grad.contiguous()  # a channels_last model returns it NHWC


def chunks(total: int, size: int | None, row: Tensor) -> Iterator[slice]:
    """Slices of ``total`` rows like ``row``, ``size`` at a time (None: all), never more than
    the process's :func:`~engine.runtime.max_rows_per_pass` for rows of that size. Each slice
    is a model pass: the job's stop check runs before it (:func:`~engine.runtime.checkpoint`)."""
    limit = max_rows_per_pass(row.numel())
    size = max(1, min(total if not size or size <= 0 else size, limit))
    for start in range(0, total, size):
        checkpoint()
        yield slice(start, min(start + size, total))


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield
