"""Backward rules for rectifiers: Guided Backpropagation and Deconvolution.

Only the backward pass of the rectifier changes (Springenberg et al. 2015; Zeiler & Fergus
2014). ReLU6 is read as ReLU ∘ min(·, 6): the saturation at 6 keeps its ordinary gradient. With
g the gradient arriving at the output and u = ∞ (ReLU) or 6 (ReLU6):

- guided:  ∂x = 1[x < u] · 1[x > 0] · max(g, 0)
- deconv:  ∂x = 1[x < u] · max(g, 0)            (the forward ReLU mask is ignored)

Written with the rectifier's output y = clamp(x, 0, u), whose open interval (0, u) is x's, both
rules are one masked pass over max(g, 0): ∂x = max(g, 0) where lower < y < u, else 0, with
lower = 0 (guided) or −∞ (deconv; for ReLU no mask at all). The rule replaces the rectifier's
forward while it is applied (an instance attribute over the class's ``forward``): one custom
autograd function computes y, keeps y for its backward and never overwrites its input (an
in-place module's input survives, as before). Nothing is stashed between calls, so a module
called several times (ResNet's BasicBlock reuses ``self.relu``) works.
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
from engine.models.inspection import is_torchscript, rectifier_bound

# Autograd nodes of relu, relu_, Tensor.relu (ReluBackward0), relu6 and hardtanh (Hardtanh...).
_FUNCTIONAL_RECTIFIER_NODES = {"ReluBackward0": "relu", "HardtanhBackward0": "relu6/hardtanh"}


class _Rectifier(torch.autograd.Function):
    """y = clamp(x, 0, upper); ∂x = max(g, 0) · 1[lower < y < upper]."""

    @staticmethod
    def forward(ctx, x: Tensor, upper: float, lower: float) -> Tensor:
        y = torch.relu(x) if math.isinf(upper) else x.clamp(0, upper)
        ctx.bounds = (lower, upper)
        ctx.masked = not (math.isinf(lower) and math.isinf(upper))
        if ctx.masked:
            ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        positive = torch.relu(grad)
        if not ctx.masked:
            return positive, None, None
        (y,) = ctx.saved_tensors
        # hardtanh_backward(g, y, a, b) = g where a < y < b, else 0: one pass.
        return torch.ops.aten.hardtanh_backward(positive, y, *ctx.bounds), None, None


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
        bounds = {id(m): rectifier_bound(m) for m in model.modules()}
        modules = [m for m in model.modules() if bounds[id(m)] is not None]
        if not modules:
            raise MethodError(f"{self.name} needs ReLU/ReLU6 modules and the model has none; "
                              "it would equal the plain gradient")  # fmt: skip
        lower = 0.0 if self.guided else -math.inf

        def rectifier(upper: float):
            return lambda x, *_: _Rectifier.apply(x, upper, lower)

        def check(model: nn.Module, inputs: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor) and (name := functional_rectifier(output)):
                raise MethodError(
                    f"{self.name} needs every rectifier to be an nn.ReLU/nn.ReLU6 module, but "
                    f"the model calls {name} functionally; its backward pass cannot be overridden"
                )

        handle = model.register_forward_hook(check)
        try:
            for module in modules:
                module.forward = rectifier(bounds[id(module)])
            yield
        finally:
            handle.remove()
            for module in modules:
                del module.forward  # the class's forward again


class GuidedBackpropRule(RectifierRule):
    guided = True
    name = "Guided Backprop"


class DeconvolutionRule(RectifierRule):
    guided = False
    name = "Deconvolution"
