"""The model store's probe, run in a process of its own (``python -m jobs.model_probe CONFIG``):
build the model from its config and weights, run it once on a probe input of its size, and
print JSON: ``{"ok": true, "capabilities", "cam_layer", "layers"}`` or ``{"ok": false, "status",
"message"}``. A process of its own keeps the weights (hundreds of MB for a ViT-B) out of the
API's memory and ends whatever the model's code left behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from engine.models.config import spec_from_config
from engine.models.inspection import (
    LayerNotFound,
    capabilities_of,
    find_layer,
    layer_names,
    locate_cam_layer,
)
from engine.models.spec import Normalized

PROBE_BATCH = 2  # a batch of two: every method runs batches, so the batch size must be free


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def short(error: BaseException, limit: int = 200) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def probe(config: Path, max_pixels: int) -> dict[str, Any]:
    try:
        spec = spec_from_config(config)
        module, _ = spec.build(None)
    except Exception as error:  # anything a user's file or config can raise
        if "Weights only load failed" in str(error):
            raise Refused(422, "the weights file holds pickled Python objects, which are "
                          "refused: upload a state dict, an exported program or a TorchScript "
                          "archive") from None  # fmt: skip
        raise Refused(422, f"the model cannot be loaded: {short(error)}") from None
    module.eval()
    if spec.input_kind == "image":
        height, width = spec.input_size
        if height * width > max_pixels:
            raise Refused(422, f"input_size {height}×{width} is above the limit")
        probe_input = torch.rand(PROBE_BATCH, 3, height, width)
        scores, wanted = "one score per label", len(spec.labels) or None  # None: any number
    else:
        length, features = spec.input_size
        probe_input = torch.randn(PROBE_BATCH, length or 10, features)
        scores, wanted = "one logit per time step", probe_input.shape[1]
    wrapped = module
    if spec.input_kind == "image" and spec.mean is not None:
        wrapped = Normalized(module, spec.mean, spec.std)
    try:
        with torch.no_grad():
            output = wrapped(probe_input)
    except Exception as error:
        hint = ""
        if "export" in type(module).__module__:
            hint = " (export it with a dynamic batch size: dynamic_shapes={'x': {0: Dim.AUTO}})"
        raise Refused(422, f"the model fails on a probe input of shape "
                      f"{tuple(probe_input.shape)}: {short(error)}{hint}") from None  # fmt: skip
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    if len(shape) != 2 or shape[0] != PROBE_BATCH or (wanted and shape[1] != wanted):
        answer = shape or "no tensor"
        expected = f"({PROBE_BATCH}, {wanted or 'classes'})"
        raise Refused(422, f"on a probe input of shape {tuple(probe_input.shape)} the model "
                      f"answers {answer}, not {scores}: {expected}")  # fmt: skip
    if not torch.isfinite(output).all():
        raise Refused(422, "the model answers a probe input with NaN or infinity")
    cam_layer = spec.cam_layer
    if cam_layer is not None:
        try:
            find_layer(module, cam_layer)
        except LayerNotFound as error:
            raise Refused(422, f"cam_layer: {error}") from None
    elif spec.input_kind == "image":
        with torch.no_grad():
            cam_layer = locate_cam_layer(module, (probe_input - 0.5) / 0.25)
    capabilities = capabilities_of(module, cam_layer)
    if spec.input_kind == "timeseries" or takes_other_sizes(wrapped, probe_input):
        capabilities |= {"any_size"}
    return {
        "ok": True,
        "capabilities": sorted(capabilities),
        "cam_layer": cam_layer,
        "layers": layer_names(module),
    }


def takes_other_sizes(model: torch.nn.Module, probe_input: torch.Tensor) -> bool:
    """Whether the model answers images 32 pixels larger on each side just as well."""
    larger = torch.rand(*probe_input.shape[:2], *(side + 32 for side in probe_input.shape[2:]))
    try:
        with torch.no_grad():
            output = model(larger)
    except Exception:  # fixed position embeddings, a program exported for one size, ...
        return False
    return isinstance(output, torch.Tensor) and output.shape == (
        probe_input.shape[0],
        output.shape[1],
    )


def main() -> None:
    config, max_pixels = Path(sys.argv[1]), int(sys.argv[2])
    try:
        answer = probe(config, max_pixels)
    except Refused as refusal:
        answer = {"ok": False, "status": refusal.status, "message": str(refusal)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
