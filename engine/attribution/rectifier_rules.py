"""Backward rules for rectifiers: Guided Backpropagation and Deconvolution.

Only the backward pass of the rectifier changes (Springenberg et al. 2015; Zeiler & Fergus
2014). ReLU6 is read as ReLU ∘ min(·, 6): the saturation at 6 keeps its ordinary gradient. With
g the gradient arriving at the output and u = ∞ (ReLU) or 6 (ReLU6):

- guided:  ∂x = 1[x < u] · 1[x > 0] · max(g, 0)
- deconv:  ∂x = 1[x < u] · max(g, 0)            (the forward ReLU mask is ignored)

The rule is installed with a forward pre-hook (stash the input; clone it first for in-place
modules, so the module's in-place op cannot overwrite it) and a forward hook that replaces the
module's output by the same values computed through a custom autograd function. State is kept per
call, so a module that is called several times (ResNet's BasicBlock reuses ``self.relu``) works.
Functional rectifiers (``F.relu``) cannot be hooked: a torch-function mode notices them during the
forward and the call is refused rather than silently returning a plain gradient. The check runs on
a model's first call only (it costs Python dispatch on every op); later calls trust the result.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from engine.attribution.base import MethodError

RECTIFIER_MODULES = (nn.ReLU, nn.ReLU6)
_FUNCTIONAL_RECTIFIERS = {
    F.relu,
    F.relu_,
    F.relu6,
    F.hardtanh,
    F.hardtanh_,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
}


class _RectifierBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, upper: float, guided: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.upper, ctx.guided = upper, guided
        return x.clamp(min=0) if math.isinf(upper) else x.clamp(0, upper)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        grad = grad.clamp(min=0)
        if ctx.guided:
            grad = grad * (x > 0)
        if not math.isinf(ctx.upper):
            grad = grad * (x < ctx.upper)
        return grad, None, None


class _FunctionalRectifierGuard(TorchFunctionMode):
    """Raises when a rectifier is called functionally outside a hooked module."""

    def __init__(self, method: str):
        super().__init__()
        self.method = method
        self.depth = 0  # > 0 while inside a hooked rectifier module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and func in _FUNCTIONAL_RECTIFIERS:
            raise MethodError(
                f"{self.method} needs every rectifier to be an nn.ReLU/nn.ReLU6 module, but the "
                f"model calls {getattr(func, '__name__', func)} functionally; its backward pass "
                "cannot be overridden"
            )
        return func(*args, **(kwargs or {}))


_VERIFIED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models seen with module rectifiers only


class RectifierRule:
    """Base of the rectifier backward rules; subclasses choose ``guided``."""

    guided: bool
    name: str

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        modules = [m for m in model.modules() if isinstance(m, RECTIFIER_MODULES)]
        if isinstance(model, torch.jit.ScriptModule):
            raise MethodError(f"{self.name} cannot hook a TorchScript model")
        guard = _FunctionalRectifierGuard(self.name)
        stash: dict[int, list[Tensor]] = {}

        def before(module: nn.Module, inputs: tuple[Tensor, ...]):
            guard.depth += 1
            x = inputs[0]
            stash.setdefault(id(module), []).append(x)
            if getattr(module, "inplace", False):
                return (x.clone(),)
            return None

        def after(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            guard.depth -= 1
            x = stash[id(module)].pop()
            upper = 6.0 if isinstance(module, nn.ReLU6) else math.inf
            return _RectifierBackward.apply(x, upper, self.guided)

        handles = []
        try:
            for module in modules:
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
            if model in _VERIFIED:
                yield
            else:
                with guard:
                    yield
                _VERIFIED.add(model)
        finally:
            for handle in handles:
                handle.remove()


class GuidedBackpropRule(RectifierRule):
    guided = True
    name = "Guided Backprop"


class DeconvolutionRule(RectifierRule):
    guided = False
    name = "Deconvolution"
