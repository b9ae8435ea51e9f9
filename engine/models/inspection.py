"""What a loaded classifier allows: whether hooks run on its layers, whether it has rectifier
modules, whether its Python modules are there, its layers by name, and a default CAM layer.

Methods declare what they need (:attr:`engine.method.MethodSpec.requires`); a model provides
:func:`capabilities_of`; a method whose needs a model does not meet is refused before it runs,
with :data:`WHY_NEEDED`'s reason.
"""

from __future__ import annotations

import difflib
import math
import re
import weakref
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# hooks: forward hooks run on its submodules (not on TorchScript, whose graph calls no Python).
# rectifiers: ReLU/ReLU6 modules whose backward pass a rule can replace (Guided Backprop, ...).
# modules: its own Python modules with Conv2d/Linear weights (patterns, GAD's support networks).
# cam_layer: a default layer for the CAM family is known (declared, or found by a probe).
# any_size: it takes images of other sizes than its input size (fully convolutional, adaptive
# pooling); a ViT's position embeddings or an exported program's fixed shapes do not.
CAPABILITIES = ("hooks", "rectifiers", "modules", "cam_layer", "any_size")

WHY_NEEDED = {
    "hooks": "it hooks the model's layers, which a TorchScript model does not run; upload the "
    "model as a torch.export program (source 'export') or as a state dict instead",
    "rectifiers": "it replaces the backward pass of ReLU modules and this model has none (its "
    "activations are e.g. GELU or SiLU), so it would silently equal the plain gradient",
    "modules": "it needs the model's own Python modules (Conv2d/Linear layers), which an "
    "exported or TorchScript model does not have; upload a state dict instead",
    "cam_layer": "this model declares no CAM layer and none was found; pass the 'layer' option "
    "(a module name of the model)",
    "any_size": "this model takes images of its input size only",
}

# aten ops of an exported rectifier module (torch.export.unflatten keeps each nn.ReLU as a
# module whose graph is this one call).
_EXPORTED_RELU = {"aten.relu.default", "aten.relu_.default"}
_EXPORTED_HARDTANH = {"aten.hardtanh.default", "aten.hardtanh_.default"}


class LayerNotFound(ValueError):
    """A layer name the model does not have; the message lists the closest names."""


def is_torchscript(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def is_exported(module: nn.Module) -> bool:
    """A module rebuilt from a torch.export program (``torch.export.unflatten``)."""
    return type(module).__module__.startswith("torch.export")


def _single_call(module: nn.Module) -> tuple[str, tuple] | None:
    """(op name, args) of an exported module whose graph is exactly one function call."""
    graph = getattr(module, "graph", None)
    if not is_exported(module) or graph is None:
        return None
    calls = [node for node in graph.nodes if node.op not in ("placeholder", "output")]
    if len(calls) != 1 or calls[0].op != "call_function":
        return None
    return str(calls[0].target), calls[0].args


def rectifier_bound(module: nn.Module) -> float | None:
    """u of a rectifier module computing clamp(x, 0, u): ∞ for ReLU, 6 for ReLU6 (eager or
    exported); None for anything else."""
    if isinstance(module, nn.ReLU6):
        return 6.0
    if isinstance(module, nn.ReLU):
        return math.inf
    call = _single_call(module)
    if call is None:
        return None
    op, args = call
    if op in _EXPORTED_RELU:
        return math.inf
    if op in _EXPORTED_HARDTANH and tuple(args[1:3]) == (0.0, 6.0):
        return 6.0
    return None


def rectifier_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if rectifier_bound(m) is not None]


def capabilities_of(model: nn.Module, cam_layer: str | None = None) -> frozenset[str]:
    """The :data:`CAPABILITIES` a loaded classifier (without the engine's wrappers) has."""
    if is_torchscript(model):
        return frozenset()
    found = {"hooks"}
    if rectifier_modules(model):
        found.add("rectifiers")
    if not is_exported(model):
        found.add("modules")
    if cam_layer is not None:
        found.add("cam_layer")
    return frozenset(found)


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (the model's own dotted name, e.g. ``layer4`` or
    ``blocks.11.norm1``); :class:`LayerNotFound` with the closest names otherwise."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LayerNotFound(unknown_layer_message(name, layer_names(model))) from None


def unknown_layer_message(name: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else f"; e.g. {', '.join(known[-5:])}"
    shown = name if len(name) <= 80 else name[:80] + "…"
    return f"the model has no layer {shown!r}{hint}"


_VIT_BLOCK = re.compile(r"^blocks\.(\d+)\.norm1$")
_SWIN_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.norm1$")


def is_map(output: object) -> bool:
    """Whether a layer output can be a CAM's map: (B, C, h, w) or (B, h, w, C) with more than one
    position, or tokens (B, N, C) with more than one token."""
    if not isinstance(output, Tensor):
        return False
    shape = output.shape
    if output.ndim == 4:
        return shape[2] * shape[3] > 1 and shape[1] * shape[2] > 1
    return output.ndim == 3 and shape[1] > 1


def map_layers(model: nn.Module, probe: Tensor) -> dict[str, int]:
    """The layers whose output on ``probe`` is a map (:func:`is_map`) → its number of dimensions
    (4: a spatial map, 3: tokens), in the order their last calls ended, leaving out those that
    only pass their input on (nn.Identity and the like). Works on the meta device (shapes)."""
    found: dict[str, int] = {}

    def record(name: str):
        def hook(module, inputs, output):
            passed_on = any(output is given for given in inputs)
            if is_map(output) and not passed_on:
                found.pop(name, None)  # a module called again moves to its last call
                found[name] = output.ndim

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return found


def locate_cam_layer(model: nn.Module, maps: dict[str, int]) -> str | None:
    """A default CAM layer: for transformers the input norm of the last block (ViT/DeiT
    ``blocks.N.norm1``, Swin ``layers.N.blocks.M.norm1``, as pytorch-grad-cam's docs
    recommend), else the last layer whose output is a spatial map (``maps`` from
    :func:`map_layers`: the outermost of modules that return the same map, e.g. ResNet's
    ``layer4``). None when there is neither."""
    names = layer_names(model)
    for pattern in (_SWIN_BLOCK, _VIT_BLOCK):
        blocks = [(tuple(map(int, m.groups())), n) for n in names if (m := pattern.match(n))]
        if blocks:
            return max(blocks)[1]
    spatial = [name for name, ndim in maps.items() if ndim == 4]
    return spatial[-1] if spatial else None


class _NewBytes(TorchDispatchMode):
    """Counts the bytes of tensors that operators allocate while it is active, and the peak of
    those still alive (views and in-place results allocate nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(result.alias_info is not None for result in func._schema.returns):
            return out
        for tensor in tree_leaves(out):
            if isinstance(tensor, Tensor):
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                # A meta tensor's storage is no real object to watch: watch the tensor.
                owner = tensor if tensor.device.type == "meta" else tensor.untyped_storage()
                weakref.finalize(owner, self._freed, size)
        return out

    def _freed(self, size: int) -> None:
        self.live -= size


def pass_bytes(model: nn.Module, probe: Tensor) -> int:
    """Peak memory that one forward and backward pass of ``probe`` (one row) through a frozen
    model allocates beyond its weights: the working set a gradient method needs per row.
    Works on the meta device (shapes only, for built-in architectures) and on TorchScript and
    exported models; EfficientNet-Lite0 at 224²: 79 MB on the meta device and the CPU alike."""
    leaf = probe.detach().requires_grad_(True)
    with _NewBytes() as counter, torch.enable_grad():
        output = model(leaf)
        (gradient,) = torch.autograd.grad(output.flatten()[0], leaf)
    del output, gradient
    return counter.peak
