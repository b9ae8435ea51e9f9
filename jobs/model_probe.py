"""The model store's probe, in a process of its own (``python -m jobs.model_probe CONFIG
PIXELS OUT``): build the model from its config and weights, run it on probe inputs of its size,
and write JSON to the file OUT: ``{"ok": true, "capabilities", "cam_layer", "layers",
"map_layers", "bytes_per_pixel"}`` or ``{"ok": false, "status", "message"}``. A process of its
own keeps the weights (hundreds of MB for a ViT-B) out of the API's memory and ends whatever
the model's code left behind.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from engine.models import ModelError, frozen, with_normalisation
from engine.models.config import spec_from_config
from engine.models.inspection import (
    LayerNotFound,
    capabilities_of,
    find_layer,
    is_exported,
    is_torchscript,
    layer_names,
    locate_cam_layer,
    map_layers,
    pass_bytes,
)
from engine.runtime import max_rows_per_pass

PROBE_BATCH = 2  # a batch of two: every method runs batches, so the batch size must be free


class Refused(Exception):
    """Why the upload cannot be stored, in the uploader's terms; ``detail`` is the underlying
    error's own text, for the server's log only."""

    def __init__(self, status: int, message: str, detail: str | None = None):
        super().__init__(message)
        self.status, self.detail = status, detail


def short(error: BaseException, limit: int = 400) -> str:
    """The error's text on one line (a state dict mismatch names its keys on the next lines)."""
    text = " ".join(line.strip() for line in str(error).splitlines()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "…"


TORCHSCRIPT_TRACEBACK = "The following operation failed in the TorchScript interpreter"
UNEXPECTED_ARGUMENT = re.compile(r"unexpected keyword argument '(\w+)'")


def in_user_terms(error: Exception, stage: str) -> str:
    """Why building or running the model failed, without Python's internals: the engine's own
    refusals and PyTorch's messages (state dict keys, shapes, devices) as they are; a Python
    error inside the model's code, such as a factory_kwargs value of the wrong type, is
    ``stage``, a sentence on what failed (its text, with type names such as 'NoneType', goes to
    the server's log)."""
    text = str(error)
    if isinstance(error, ModelError):
        return text
    if "Weights only load failed" in text:
        if "GLOBAL" in text:
            return ("the weights file holds pickled Python objects, which are refused: upload a "
                    "state dict, an exported program or a TorchScript archive")  # fmt: skip
        return "the weights file cannot be read: it is not a file saved with torch.save"
    if isinstance(error, TypeError) and (argument := UNEXPECTED_ARGUMENT.search(text)):
        return f"factory_kwargs: the model's builder takes no argument {argument[1]!r}"
    if isinstance(error, RuntimeError):  # PyTorch's: tensors, shapes, state dicts, archives
        if TORCHSCRIPT_TRACEBACK in text:  # the TorchScript traceback ends with the error itself
            last = [line.strip() for line in text.splitlines() if line.strip()][-1]
            return short(re.sub(r"^\w+Error: ", "", last))
        return short(error)
    return stage


def probe(config: Path, max_pixels: int) -> dict[str, Any]:
    try:
        spec = spec_from_config(config)
        module, _ = spec.build(None)
    except Exception as error:  # anything a user's file or config can raise
        why = in_user_terms(error, "its code failed on the factory_kwargs or the weights file "
                            "(check the arguments' names and types)")  # fmt: skip
        if why.startswith("the weights file"):
            raise Refused(422, why, short(error)) from None
        raise Refused(422, f"the model cannot be loaded: {why}", short(error)) from None
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
    wrapped = with_normalisation(spec, module)
    try:
        with torch.no_grad():
            output = wrapped(probe_input)
    except Exception as error:
        hint = ""
        if is_exported(module) and "shape[0]" in str(error):
            hint = " (export it with a free batch size: dynamic_shapes={'x': {0: Dim.AUTO}})"
        why = in_user_terms(error, "its forward raised an error")
        shape = tuple(probe_input.shape)
        raise Refused(422, f"the model fails on a probe input of shape {shape}: {why}{hint}",
                      short(error)) from None  # fmt: skip
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    if len(shape) != 2 or shape[0] != PROBE_BATCH or (wanted and shape[1] != wanted):
        answer = shape or "no tensor"
        expected = f"({PROBE_BATCH}, {wanted or 'classes'})"
        raise Refused(422, f"on a probe input of shape {tuple(probe_input.shape)} the model "
                      f"answers {answer}, not {scores}: {expected}")  # fmt: skip
    if not torch.isfinite(output).all():
        raise Refused(422, "the model answers a probe input with NaN or infinity")
    if is_exported(module):
        check_free_batch(wrapped, probe_input)
    hooks = not is_torchscript(module)
    maps = {}
    if spec.input_kind == "image" and hooks:
        maps = map_layers(module, (probe_input - 0.5) / 0.25)
    cam_layer = spec.cam_layer
    if cam_layer is not None:
        try:
            find_layer(module, cam_layer)
        except LayerNotFound as error:
            raise Refused(422, f"cam_layer: {error}") from None
        if hooks and cam_layer not in maps:
            raise Refused(422, f"cam_layer: {cam_layer} outputs no spatial map or tokens; "
                          f"layers that do: {', '.join(list(maps)[-5:])}")  # fmt: skip
    elif hooks:
        cam_layer = locate_cam_layer(module, maps)
    capabilities = capabilities_of(module, cam_layer)
    if spec.input_kind == "timeseries" or takes_other_sizes(wrapped, probe_input):
        capabilities |= {"any_size"}
    per_pixel = None
    if spec.input_kind == "image":  # what the API's memory check needs (engine.models.row_bytes)
        frozen(module)
        per_pixel = pass_bytes(wrapped, probe_input[:1]) / (
            probe_input.shape[-2] * probe_input.shape[-1]
        )
    return {
        "ok": True,
        "capabilities": sorted(capabilities),
        "cam_layer": cam_layer,
        "layers": layer_names(module),
        "map_layers": list(maps),
        "bytes_per_pixel": per_pixel,
    }


def check_free_batch(model: torch.nn.Module, probe_input: torch.Tensor) -> None:
    """An exported program guards its batch size: it must take one row and more rows than a
    pass ever holds (methods batch noise samples, IG steps, Score-CAM's masked inputs)."""
    for rows in (1, max_rows_per_pass(probe_input[0].numel()) + 1):
        try:
            with torch.no_grad():
                model(probe_input[:1].expand(rows, *probe_input.shape[1:]).contiguous())
        except Exception as error:
            why = in_user_terms(error, "it raised an error")
            raise Refused(422, f"the exported program does not take a batch of {rows}: export it "
                          "with a free batch size (dynamic_shapes={'x': {0: Dim.AUTO}}); "
                          f"{why}", short(error)) from None  # fmt: skip


def takes_other_sizes(model: torch.nn.Module, probe_input: torch.Tensor) -> bool:
    """Whether the model answers images of other sizes just as well: larger and smaller, with
    sides that no patch or stride divides (a ViT with dynamic_img_size takes only multiples of
    its patch size)."""
    height, width = probe_input.shape[2:]
    sizes = ((height + 13, width + 7), (max(32, height // 2 + 3), max(32, width // 2 + 5)))
    for size in sizes:
        try:
            with torch.no_grad():
                output = model(torch.rand(*probe_input.shape[:2], *size))
        except Exception:  # fixed position embeddings, a program exported for one size, ...
            return False
        if not (isinstance(output, torch.Tensor) and output.ndim == 2):
            return False
    return True


def main() -> None:
    """Arguments: the model config, the pixel limit, and the file the answer is written to (a
    model's own code may print on stdout)."""
    config, max_pixels, answer_file = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    try:
        answer = probe(config, max_pixels)
    except Refused as refusal:
        # The upload's folder is the server's business, not the message's.
        message = str(refusal).replace(f"{config.parent}/", "")
        answer = {"ok": False, "status": refusal.status, "message": message,
                  "detail": refusal.detail}  # fmt: skip
    answer_file.write_text(json.dumps(answer))


if __name__ == "__main__":
    main()
