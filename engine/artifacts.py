"""Write an explanation's files: arrays, pictures, and the summary with its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.explain import Explanation
from engine.render import heatmap_image, overlay_image


def write_artifacts(
    explanation: Explanation, out_dir: str | Path, index: int = 0
) -> dict[str, Path]:
    """Write image ``index`` of ``explanation`` into ``out_dir``; returns name → path.

    ``attribution.npy``: float32 (C, H, W), the input's shape; ``heatmap.npy``: float32 (H, W);
    ``heatmap.png`` and ``overlay.png``; ``summary.json``.
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
    summary = explanation.summary(index)
    summary["files"] = sorted(paths)
    paths["summary.json"].write_text(json.dumps(summary, indent=2))
    return paths
