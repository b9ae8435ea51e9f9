"""Shared pieces of every gradient method: the explained score, the input gradient, the base class.

Conventions (spec §0): the explained scalar is ``S_c(x)`` for the target class c of each image,
read as a logit, softmax probability or log-softmax; a batch is explained with one backward pass of
``Σ_b S_{c_b}(x_b)`` on a fresh leaf tensor; attributions have the input's shape.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

ScoreType = Literal["logit", "softmax", "log_softmax"]
ProgressFn = Callable[..., None]  # (done, total, **values such as loss); may raise to cancel


class MethodError(ValueError):
    """A method cannot be applied to this model or input (e.g. Guided Backprop on F.relu)."""


def class_scores(outputs: Tensor, targets: Tensor, score: ScoreType = "logit") -> Tensor:
    """``S_{c_b}`` for each row b of the model's outputs (B, classes) → (B,)."""
    if score == "softmax":
        outputs = outputs.softmax(dim=1)
    elif score == "log_softmax":
        outputs = outputs.log_softmax(dim=1)
    elif score != "logit":
        raise MethodError(f"unknown score type {score!r}")
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


class BackwardRule(Protocol):
    """Changes how gradients flow through a model while active (Guided Backprop, patterns, ...)."""

    def applied(self, model: nn.Module) -> contextlib.AbstractContextManager: ...


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
        return grad


class Attribution(ABC):
    """An attribution method: ``attribute(x, targets) → tensor shaped like x`` (Captum style).

    ``progress`` (optional) is called with (done, total) by methods that take several passes;
    raising from it cancels the computation.
    """

    progress: ProgressFn | None = None

    @abstractmethod
    def attribute(self, x: Tensor, targets: Tensor) -> Tensor: ...

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


def chunks(total: int, size: int | None) -> Iterator[slice]:
    size = total if not size or size <= 0 else size
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield


@contextlib.contextmanager
def prepared(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of a call; the model is restored after."""
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), requires_grad, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
