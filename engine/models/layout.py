"""The memory layout a model runs in: channels_last (NHWC) where a probe at load shows it faster.

Convolutions in oneDNN (CPU) and cuDNN (GPU) run natively on NHWC tensors; on NCHW ones they
reorder their inputs and outputs. EfficientNet-Lite0's forward+backward took 0.76–0.79× the time
in channels_last on this project's 2-core CPU (issue 27). Not every model gains (transformers,
tiny networks) and not every one can change layout (TorchScript graphs, exported programs), so
the choice is measured per model when it is loaded: :func:`preferred_memory_format` times
forward+backward of a small batch in both layouts, and :func:`in_preferred_layout` keeps the
faster one. Only the weights change layout; inputs and attributions stay contiguous.

Results in the two layouts are the same function computed with other rounding: the logits agree
to ~1e-6 relative, input gradients to ~1e-6 except where a rounding difference flips a ReLU6 at
its bound (EfficientNet-Lite0 on one of the bundled photographs: 1.5e-3 of the gradient's
maximum, less than the float32 error itself, 5e-3 against a float64 run).

``EXPLAINER_MEMORY_FORMAT``: ``auto`` (default, the probe), ``contiguous`` or ``channels_last``
(forced where the model allows it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time

import torch
from torch import Tensor, nn

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
FASTER = 0.95  # channels_last is kept when it takes at most this share of the contiguous time
# The probe's choices in this process, by architecture (the module's repr), input shape, dtype
# and device: a timing can come out either way on a busy machine, and two loads of one model
# must not run in different layouts (their results would differ by rounding).
_CHOSEN: dict[tuple[str, tuple[int, ...], str, str], torch.memory_format] = {}


def layout_name(memory_format: torch.memory_format) -> str:
    return "channels_last" if memory_format == torch.channels_last else "contiguous"


def preferred_memory_format(
    model: nn.Module, example: Tensor, repeats: int = 2
) -> torch.memory_format:
    """The faster layout of ``model``'s forward+backward (input gradient) on ``example``.

    The model is converted to channels_last and back (it is left contiguous); ``repeats``
    timed passes per layout, alternated after a warm-up pass each, the fastest of each counts.
    Contiguous where the input is not an image batch (B, C, H, W), where the model cannot be
    converted or fails in channels_last, or where its outputs differ from contiguous by more
    than 1e-4 of their largest value (a layout-dependent model).
    """
    if example.ndim != 4:
        return torch.contiguous_format
    timings: dict[torch.memory_format, list[float]] = {fmt: [] for fmt in LAYOUTS.values()}
    outputs: dict[torch.memory_format, Tensor] = {}
    try:
        for round_ in range(repeats + 1):
            for fmt in LAYOUTS.values():
                model.to(memory_format=fmt)
                started = time.perf_counter()
                outputs[fmt] = _forward_backward(model, example)
                if round_ > 0:  # the first round warms both layouts up
                    timings[fmt].append(time.perf_counter() - started)
    except Exception:  # a model that cannot change layout, or fails in channels_last
        _restore(model)
        return torch.contiguous_format
    _restore(model)
    contiguous, channels_last = outputs[torch.contiguous_format], outputs[torch.channels_last]
    scale = contiguous.abs().max()
    if not torch.allclose(channels_last, contiguous, rtol=0, atol=float(1e-4 * scale)):
        return torch.contiguous_format
    faster = min(timings[torch.channels_last]) <= FASTER * min(timings[torch.contiguous_format])
    return torch.channels_last if faster else torch.contiguous_format


def in_preferred_layout(model: nn.Module, example: Tensor) -> tuple[nn.Module, str]:
    """``model`` converted in place to its preferred layout (``EXPLAINER_MEMORY_FORMAT`` or
    :func:`preferred_memory_format`, probed once per architecture, input shape and device in a
    process) and the layout's name; never fails: a model that cannot change layout stays as it
    is, "contiguous"."""
    wanted = os.environ.get("EXPLAINER_MEMORY_FORMAT", "auto")
    if wanted not in ("auto", *LAYOUTS):
        raise ValueError(
            f"EXPLAINER_MEMORY_FORMAT must be auto, contiguous or channels_last, not {wanted!r}"
        )
    if wanted == "auto":
        architecture = hashlib.sha256(repr(model).encode()).hexdigest()
        key = (architecture, tuple(example.shape), str(example.dtype), str(example.device))
        if key not in _CHOSEN:
            _CHOSEN[key] = preferred_memory_format(model, example)
        chosen = _CHOSEN[key]
    else:
        chosen = LAYOUTS[wanted] if example.ndim == 4 else torch.contiguous_format
    if chosen == torch.contiguous_format:
        return model, "contiguous"
    try:
        model.to(memory_format=chosen)
        _forward_backward(model, example[:1])
    except Exception:
        _restore(model)
        return model, "contiguous"
    return model, layout_name(chosen)


def _forward_backward(model: nn.Module, example: Tensor) -> Tensor:
    """Logits of ``example`` after a backward pass of their sum to the input (the cost every
    gradient method pays); parameters are not differentiated."""
    leaf = example.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(leaf)
        logits.sum().backward()
    return logits.detach()


def _restore(model: nn.Module) -> None:
    """Back to contiguous weights, as loaded; a model that failed to convert is left alone."""
    with contextlib.suppress(Exception):
        model.to(memory_format=torch.contiguous_format)
