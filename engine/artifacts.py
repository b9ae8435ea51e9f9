"""Write an explanation's files: arrays, pictures, and the summary with its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.explain import Explanation
from engine.render import heatmap_image, image_from_tensor, overlay_image


def write_artifacts(
    explanation: Explanation, out_dir: str | Path, index: int = 0
) -> dict[str, Path]:
    """Write image ``index`` of ``explanation`` into ``out_dir``; returns name → path.

    ``attribution.npy``: float32 (C, H, W), the input's shape; ``heatmap.npy``: float32 (H, W);
    ``heatmap.png`` and ``overlay.png``; ``summary.json``; for mask methods also ``mask.npz``
    (the mask of each coefficient group, colour axis dropped: group0 = pixels, or yl, yh0…, or
    shearlets), ``explanation.png`` (the masked reconstruction) and ``history.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    signed = explanation.options.get("heatmap_reduction") == "signed_sum"
    heatmap = explanation.heatmap[index].numpy()
    paths = {
        "attribution.npy": out / "attribution.npy",
        "heatmap.npy": out / "heatmap.npy",
        "heatmap.png": out / "heatmap.png",
        "overlay.png": out / "overlay.png",
        "summary.json": out / "summary.json",
    }
    np.save(paths["attribution.npy"], explanation.attribution[index].numpy().astype(np.float32))
    np.save(paths["heatmap.npy"], heatmap.astype(np.float32))
    heatmap_image(heatmap, signed=signed).save(paths["heatmap.png"])
    overlay_image(explanation.inputs[index].numpy(), heatmap, signed=signed).save(
        paths["overlay.png"]
    )
    extras = explanation.extras
    if "masks" in extras:
        paths["mask.npz"] = out / "mask.npz"
        paths["explanation.png"] = out / "explanation.png"
        paths["history.json"] = out / "history.json"
        np.savez_compressed(
            paths["mask.npz"],
            **{f"group{i}": m[index, 0].cpu().numpy() for i, m in enumerate(extras["masks"])},
        )
        image_from_tensor(extras["explanation"][index].cpu().numpy()).save(paths["explanation.png"])
        paths["history.json"].write_text(json.dumps(extras["history"][index]))
    summary = explanation.summary(index)
    if "representation" in extras:
        summary["representation"] = extras["representation"]
        summary["iterations_run"] = extras["iterations_run"]
    summary["files"] = sorted(paths)
    paths["summary.json"].write_text(json.dumps(summary, indent=2))
    return paths
