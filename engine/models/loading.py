"""A loaded model in use: eval mode and frozen parameters for the duration of a call, one call at
a time per model (the state, hooks and backward rules a method puts on a model belong to it)."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

from torch import nn

_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The model's own lock (one per module object, freed with it)."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def prepared(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of a call; the model is restored after.

    One call at a time per model: this state, and the hooks and backward rules a method puts on
    the model, belong to the model, so threads explaining with one (cached) model take turns.
    """
    with model_lock(model), _eval_frozen(model):
        yield model


@contextlib.contextmanager
def _eval_frozen(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), requires_grad, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
