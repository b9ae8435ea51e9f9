"""Images: RGB in [0, 1] at the model's (or the requested) size, softmax class probabilities, a
channel reduction as heat map, the quality metrics on request, and pictures as artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from engine.data import load_image
from engine.kinds.base import InputKind
from engine.masks.methods import MaskMethod, MaskOutputs
from engine.masks.view import heatmap_view
from engine.method import Attribution, MethodError, MethodOptions, Reduction
from engine.metrics.base import MetricRequest, compute_metrics
from engine.models.spec import ModelSpec
from engine.render import colour_key, heatmap_image, image_from_tensor, overlay_image
from engine.result import Explanation, finite_history, json_text


def reduce_channels(attribution: Tensor, reduction: Reduction) -> Tensor:
    """(B, C, H, W) → (B, H, W): Σ_c|A_c|, Σ_c A_c or max_c|A_c|."""
    if reduction == "abs_sum":
        return attribution.abs().sum(1)
    if reduction == "signed_sum":
        return attribution.sum(1)
    if reduction == "max_abs":
        return attribution.abs().amax(1)
    raise ValueError(f"unknown heat-map reduction {reduction!r}")


class ImageKind(InputKind):
    name = "image"

    def prepare(self, inputs, model: ModelSpec, options: MethodOptions, resize: str):
        """A source (sample name, path, bytes, PIL image, array, (3, H, W) tensor), a list of
        them, or a (B, 3, H, W) tensor, at the size the options bring images to
        (``options.input_size``: the model's, unless they choose another)."""
        size = options.input_size(tuple(model.input_size))
        if (isinstance(inputs, Tensor) and inputs.ndim == 4) or isinstance(inputs, list | tuple):
            sources = list(inputs)
        else:
            sources = [inputs]
        loaded = [load_image(s, size if resize != "none" else None, resize) for s in sources]
        shapes = {tuple(t.shape) for t, _ in loaded}
        if len(shapes) != 1:
            raise MethodError(f"images of a batch must share one size, got {sorted(shapes)}")
        return torch.stack([t for t, _ in loaded]), [r.to_dict() for _, r in loaded]

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.softmax(1)

    def heatmap(self, attribution: Tensor, reduction: Reduction) -> Tensor:
        return reduce_channels(attribution, reduction)

    def check_metrics(self, requests: Sequence[MetricRequest]) -> None:
        """Every quality metric is defined for images (those that read a per-iteration
        history need a method that records one: :func:`engine.plan.plan` checks that)."""

    def scores(self, model: nn.Module, x, targets, attribution, heatmap, method: Attribution,
               requests: Sequence[MetricRequest], seed: int) -> dict[str, Tensor]:  # fmt: skip
        if not requests:
            return {}
        if isinstance(method, MaskMethod):
            view = method.mask_view()
            view.heatmap = heatmap
        else:
            view = heatmap_view(model, x, targets, heatmap, seed)
        return compute_metrics(view, requests)

    def write(
        self, explanation: Explanation, out: Path, index: int, pictures: bool = True
    ) -> dict[str, Path]:
        """``attribution.npy`` float32 (C, H, W), ``heatmap.npy`` (H, W), ``heatmap.png``,
        ``overlay.png``, ``input.png`` (the image as the model saw it), ``summary.json``; for
        mask methods also ``mask.npz`` (the mask of each coefficient group, colour axis dropped:
        group0 = pixels, or yl, yh0…, or shearlets), ``explanation.png`` (the masked
        reconstruction) and ``history.json``."""
        heatmap = explanation.heatmap[index].numpy()
        outputs = explanation.outputs
        # Diverging colours for a map with a sign; masks and (ReLU'd) CAMs have none.
        reduction = explanation.options.get("heatmap_reduction")
        mask = isinstance(outputs, MaskOutputs)
        signed = reduction == "signed_sum" and not mask and bool((heatmap < 0).any())
        paths = {name: out / name for name in ("attribution.npy", "heatmap.npy", "summary.json")}
        attribution = explanation.attribution[index].numpy().astype(np.float32)
        np.save(paths["attribution.npy"], attribution)
        np.save(paths["heatmap.npy"], heatmap.astype(np.float32))
        sources = {"image": explanation.inputs[index].numpy(), "heatmap": heatmap,
                   "signed": np.array(signed)}  # fmt: skip
        names = ("heatmap.png", "overlay.png", "input.png")
        if mask:
            paths |= {name: out / name for name in ("mask.npz", "history.json")}
            masks = {f"group{i}": m[index, 0].cpu().numpy() for i, m in enumerate(outputs.masks)}
            np.savez_compressed(paths["mask.npz"], **masks)
            sources["explanation"] = outputs.explanation[index].cpu().numpy()
            names += ("explanation.png",)
            paths["history.json"].write_text(json_text(finite_history(outputs.history[index])))
        paths |= self.save_pictures(out, sources, names, now=pictures)
        colours = colour_key(heatmap, signed)  # what the heat map's colours stand for
        summary = explanation.summary(index) | {"files": sorted(paths), "heatmap_colours": colours}
        paths["summary.json"].write_text(json_text(summary, indent=2))
        return paths

    def render(self, sources: dict[str, np.ndarray]) -> dict[str, Image.Image]:
        """The heat map, its overlay on the image, the image, and a mask method's masked
        reconstruction."""
        heatmap, signed = sources["heatmap"], bool(sources["signed"])
        pictures = {"heatmap.png": heatmap_image(heatmap, signed=signed),
                    "overlay.png": overlay_image(sources["image"], heatmap, signed=signed),
                    "input.png": image_from_tensor(sources["image"])}  # fmt: skip
        if "explanation" in sources:
            pictures["explanation.png"] = image_from_tensor(sources["explanation"])
        return pictures
