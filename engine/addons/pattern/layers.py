"""Seeing every weighted layer call of a network as (input, weight, bias, conv geometry).

Convolutions are intercepted at the ``conv2d``/``linear`` call rather than at the module, so
what is seen is the tensor the weights actually multiply: a module that pads inside its own
forward (EfficientNet's ``Conv2dStaticSamePadding``, ``padding_mode='reflect'``) is handled like
a plain ``nn.Conv2d``. A call belongs to a layer when its weight *is* that layer's parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

WEIGHTED_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerCall:
    """One call of a weighted layer; ``padding`` is explicit (int pairs), already applied to x
    only where the caller padded it itself."""

    name: str
    x: Tensor
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def is_conv(self) -> bool:
        return self.weight.ndim == 4

    def output(self, weight: Tensor | None = None) -> Tensor:
        """The layer's output with ``weight`` (default: its own) and its bias."""
        weight = self.weight if weight is None else weight
        if not self.is_conv:
            return F.linear(self.x, weight, self.bias)
        return F.conv2d(
            self.x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def input_gradient(self, grad_output: Tensor, weight: Tensor) -> Tensor:
        """∂/∂x of the layer with ``weight`` in place of its own: the transposed operation."""
        if not self.is_conv:
            return grad_output @ weight
        return torch.nn.grad.conv2d_input(
            self.x.shape,
            weight,
            grad_output,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


def weighted_layers(model: nn.Module) -> dict[int, str]:
    """``id(weight) → module path`` for every Conv2d and Linear layer of ``model``."""
    return {
        id(module.weight): name
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED_LAYERS)
    }


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, list | tuple) else (value, value)  # type: ignore[return-value]


def _as_call(name: str, func, args: tuple, kwargs: dict) -> LayerCall:
    if func is F.linear:
        bound = dict(zip(("input", "weight", "bias"), args, strict=False), **kwargs)
        return LayerCall(name, bound["input"], bound["weight"], bound.get("bias"))
    keys = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(keys, args, strict=False), **kwargs)
    x, weight = bound["input"], bound["weight"]
    dilation = _pair(bound.get("dilation", 1))
    padding = bound.get("padding", 0)
    if padding == "valid":
        padding = 0
    elif padding == "same":
        # PyTorch's 'same': total d·(k−1) per side pair, the odd pixel on the right/bottom.
        totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[-2:], strict=True)]
        x = F.pad(x, [totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2,
                      totals[0] - totals[0] // 2])  # fmt: skip
        padding = 0
    return LayerCall(
        name,
        x,
        weight,
        bound.get("bias"),
        _pair(bound.get("stride", 1)),
        _pair(padding),
        dilation,
        int(bound.get("groups", 1)),
    )


class LayerCalls(TorchFunctionMode):
    """While active, every conv2d/linear call of a known layer goes through ``handle(call)``,
    whose return value becomes the call's result (``None``: compute it as usual)."""

    def __init__(self, layers: dict[int, str], handle: Callable[[LayerCall], Tensor | None]):
        super().__init__()
        self.layers = layers
        self.handle = handle

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, F.linear):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            name = self.layers.get(id(weight))
            if name is not None:
                result = self.handle(_as_call(name, func, args, kwargs))
                if result is not None:
                    return result
        return func(*args, **kwargs)


_RECTIFIERS = {F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_, torch.relu, torch.relu_,
               Tensor.relu, Tensor.relu_}  # fmt: skip


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training",
                    "momentum", "eps")  # fmt: skip


@dataclass
class LayerContext:
    """What follows a weighted layer: an eval-mode BatchNorm folded into it as y ↦ s·y + t
    (per output channel), and whether its (folded) output enters a rectifier."""

    scale: Tensor | None = None
    shift: Tensor | None = None
    rectified: bool = False


class _Topology(TorchFunctionMode):
    """Follows layer outputs by identity through one forward pass (outputs are kept alive, so
    an id cannot be reused within the pass)."""

    def __init__(self, layers: dict[int, str]):
        super().__init__()
        self.layers = layers
        self.found: dict[str, LayerContext] = {}
        self.outputs: dict[int, str] = {}
        self.alive: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        source = self.outputs.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
        if func in (F.conv2d, F.linear):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            name = self.layers.get(id(weight))
            if name is not None:
                self.found.setdefault(name, LayerContext())
                self._follow(result, name)
        elif source is not None and func is F.batch_norm:
            bound = dict(zip(_BATCH_NORM_ARGS, args, strict=False), **kwargs)
            if not bound.get("training", False):
                self._fold(source, bound)
                self._follow(result, source)
        elif source is not None and func in _RECTIFIERS:
            self.found[source].rectified = True
        return result

    def _follow(self, tensor: Tensor, name: str) -> None:
        self.outputs[id(tensor)] = name
        self.alive.append(tensor)

    def _fold(self, name: str, bound: dict) -> None:
        variance, mean = bound["running_var"].double(), bound["running_mean"].double()
        gamma = bound.get("weight")
        beta = bound.get("bias")
        scale = (gamma.double() if gamma is not None else 1) / torch.sqrt(variance + bound["eps"])
        shift = (beta.double() if beta is not None else 0) - scale * mean
        self.found[name] = LayerContext(scale, shift, self.found[name].rectified)


@torch.no_grad()
def layer_contexts(model: nn.Module, sample: Tensor) -> dict[str, LayerContext]:
    """For each weighted layer run on ``sample``: a BatchNorm directly after it, and whether a
    rectifier consumes its output (directly or after that BatchNorm)."""
    topology = _Topology(weighted_layers(model))
    with topology:
        model(sample)
    return topology.found
