"""Write an explanation's files: arrays, pictures, and the summary with its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.explain import Explanation
from engine.render import heatmap_image, image_from_tensor, overlay_image, series_plot


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
    if explanation.inputs.ndim == 3:
        return _write_series(explanation, out, index)
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


def _write_series(explanation: Explanation, out: Path, index: int) -> dict[str, Path]:
    """``attribution.npy`` (T, D), ``series.png`` (the series, the attribution shaded per feature),
    ``history.json`` (mask methods) and ``summary.json``."""
    names = ["attribution.npy", "series.png", "summary.json"]
    if "history" in explanation.extras:
        names.append("history.json")
    paths = {name: out / name for name in names}
    attribution = explanation.attribution[index].numpy().astype(np.float32)
    np.save(paths["attribution.npy"], attribution)
    level = np.abs(attribution) / max(float(np.abs(attribution).max()), 1e-12)
    series_plot(explanation.inputs[index].numpy(), level).save(paths["series.png"])
    if "history.json" in paths:
        paths["history.json"].write_text(json.dumps(explanation.extras["history"][index]))
    summary = explanation.summary(index) | {"files": sorted(paths)}
    paths["summary.json"].write_text(json.dumps(summary, indent=2))
    return paths
