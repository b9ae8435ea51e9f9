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
Rectifier modules are nn.ReLU, nn.ReLU6 and their torch.export counterparts (an unflattened
module whose graph is one relu or hardtanh(0, 6) call: ``engine.models.inspection``); a model
without any is refused. Functional rectifiers (``F.relu``) cannot be hooked. After every forward
pass the rule walks the output's autograd graph: a rectifier node there (ReluBackward0,
HardtanhBackward0) came from a call outside the hooked modules (theirs are replaced and
unreachable), and the call is refused rather than silently returning a plain gradient. The walk
visits each graph node once: about 0.1 ms per forward pass of ResNet18 on the CPU
(benchmarks/rectifier_guard.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from engine.method import MethodError
from engine.models.inspection import is_torchscript, rectifier_bound, rectifier_is_inplace

# Autograd nodes of relu, relu_, Tensor.relu (ReluBackward0), relu6 and hardtanh (Hardtanh...).
_FUNCTIONAL_RECTIFIER_NODES = {"ReluBackward0": "relu", "HardtanhBackward0": "relu6/hardtanh"}


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


def functional_rectifier(output: Tensor) -> str | None:
    """The first rectifier reachable in ``output``'s autograd graph that no hooked module
    replaced, by name (``None`` when there is none)."""
    seen: set = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if (name := _FUNCTIONAL_RECTIFIER_NODES.get(node.name())) is not None:
            return name
        stack.extend(parent for parent, _ in node.next_functions)
    return None


class RectifierRule:
    """Base of the rectifier backward rules; subclasses choose ``guided``."""

    guided: bool
    name: str

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        if is_torchscript(model):
            raise MethodError(f"{self.name} cannot hook a TorchScript model")
        bounds = {id(m): (rectifier_bound(m), rectifier_is_inplace(m)) for m in model.modules()}
        modules = [m for m in model.modules() if bounds[id(m)][0] is not None]
        if not modules:
            raise MethodError(f"{self.name} needs ReLU/ReLU6 modules and the model has none; "
                              "it would equal the plain gradient")  # fmt: skip
        stash: dict[int, list[Tensor]] = {}

        def before(module: nn.Module, inputs: tuple[Tensor, ...]):
            x = inputs[0]
            stash.setdefault(id(module), []).append(x)
            return (x.clone(),) if bounds[id(module)][1] else None

        def after(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            x = stash[id(module)].pop()
            return _RectifierBackward.apply(x, bounds[id(module)][0], self.guided)

        def check(model: nn.Module, inputs: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor) and (name := functional_rectifier(output)):
                raise MethodError(
                    f"{self.name} needs every rectifier to be an nn.ReLU/nn.ReLU6 module, but "
                    f"the model calls {name} functionally; its backward pass cannot be overridden"
                )

        handles = [model.register_forward_hook(check)]
        try:
            for module in modules:
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
            yield
        finally:
            for handle in handles:
                handle.remove()


class GuidedBackpropRule(RectifierRule):
    guided = True
    name = "Guided Backprop"


class DeconvolutionRule(RectifierRule):
    guided = False
    name = "Deconvolution"
