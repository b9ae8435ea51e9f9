"""The command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine import explain


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", ["-o", "steps=8", "-o", "internal_batch_size=4"]),
        ("gradcam", []),
        ("smoothgrad", ["-o", "samples=3"]),
    ],
)
def test_explain_writes_artifacts(tmp_path, method, options):
    out = tmp_path / method
    done = run("explain", "chelsea", "--method", method, *options, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Egyptian cat (285)" in done.stdout
    attribution = np.load(out / "attribution.npy")
    assert attribution.shape[1:] == (224, 224) and attribution.dtype == np.float32
    assert np.load(out / "heatmap.npy").shape == (224, 224)
    for picture in ("overlay.png", "heatmap.png"):
        with Image.open(out / picture) as image:
            assert image.size == (224, 224) and image.mode == "RGB"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["prediction"]["class_index"] == 285
    assert summary["metadata"]["inputs"][0]["source"] == "sample:chelsea"


def test_nested_option_and_target(tmp_path):
    done = run(
        "explain", "chelsea", "--method", "saliency", "--target", "analog clock",
        "-o", "smoothing.samples=2", "-o", "heatmap_reduction=max_abs", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["options"]["smoothing"]["samples"] == 2
    assert summary["prediction"]["target"] == 409


def test_metrics_are_scored_and_listed(tmp_path):
    done = run("explain", "chelsea", "--method", "gradcam", "-m", "hallucination",
               "-m", "faithfulness:steps=5", "--out", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    # The command line gives the library's scores for the same request.
    metrics = ["hallucination", {"name": "faithfulness", "steps": 5}]
    library = explain("efficientnet_lite0", "chelsea", "gradcam", metrics=metrics).scores[0]
    for key in ("hallucination", "image_edges", "faithfulness", "auc_keep_top"):
        assert summary["scores"][key] == pytest.approx(library[key], rel=1e-5, abs=1e-9), key
    assert summary["metadata"]["metrics"][1]["parameters"]["steps"] == 5
    listed = {m["name"] for m in json.loads(run("metrics", "--json").stdout)}
    assert {"cp_shearletx", "cp_startgrad", "hallucination", "faithfulness"} <= listed
    refused = run("explain", "chelsea", "--method", "saliency", "-m", "nope", "--out",
                  str(tmp_path))  # fmt: skip
    assert refused.returncode == 2 and "unknown metric" in refused.stderr


def test_listings_are_machine_readable():
    methods = json.loads(run("methods", "--json").stdout)
    assert {m["name"] for m in methods} >= {"integrated_gradients", "gradcam", "vargrad"}
    assert {m["name"] for m in methods if m["family"] == "cam"} == {
        "gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "layercam", "scorecam",
        "eigencam", "guided_gradcam"}  # fmt: skip
    assert "scorecam" in run("methods").stdout  # the text listing too
    ig = next(m for m in methods if m["name"] == "integrated_gradients")
    assert ig["options_schema"]["properties"]["steps"]["default"] == 50
    models = json.loads(run("models", "--json").stdout)
    assert models[0]["name"] == "efficientnet_lite0" and models[0]["num_classes"] == 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown method"),
        (["--method", "saliency", "-o", "bogus=1"], "bogus"),
        (["--method", "integrated_gradients", "-o", "steps=0"], "steps"),
        (["--method", "saliency", "--model", "resnet18"], "not found"),
    ],
)
def test_errors_are_clear(tmp_path, args, message):
    done = run("explain", "chelsea", *args, "--out", str(tmp_path))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_every_mask_method_with_every_init_writes_its_outputs(tmp_path):
    """In-process (one model load) with tiny settings: 2 iterations, 2 noise samples, 32 px."""
    from engine.cli import main as cli
    from engine.masks.inits import InitKind

    inits = InitKind.__args__
    for method in ("pixelmask", "smoothmask", "cartoonx", "waveletx", "shearletx"):
        for init in inits:
            out = tmp_path / f"{method}-{init}"
            code = cli(["explain", "chelsea", "--method", method, "--init", init,
                        "--iterations", "2", "-o", "noise_samples=2", "-o", "image_size=32",
                        "-o", "startgrad_samples=2", "--out", str(out), "--quiet"])  # fmt: skip
            assert code == 0, (method, init)
            with np.load(out / "mask.npz") as masks:
                assert len(masks.files) >= 1 and all(
                    ((m >= 0) & (m <= 1)).all() for m in masks.values()
                )
            history = json.loads((out / "history.json").read_text())
            assert len(history["loss"]) == 3
            assert Image.open(out / "explanation.png").size == (32, 32)
            assert np.load(out / "attribution.npy").shape == (1, 32, 32)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["options"]["init"] == init and summary["iterations_run"] == 2


def photo_folder(folder, names):
    """A folder of PNG files of bundled photographs, as a user's image folder would be."""
    from engine.data import load_image

    folder.mkdir()
    for name in names:
        pixels = (load_image(name, (96, 96))[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def test_patterns_are_estimated_from_a_folder_then_pgig_explains_a_photo(tmp_path):
    env = {"EXPLAINER_CACHE_DIR": str(tmp_path / "cache")}
    before = run("explain", "chelsea", "--method", "pattern_guided_ig", "--out", str(tmp_path),
                 env=env)  # fmt: skip
    assert before.returncode == 2 and "estimate-patterns" in before.stderr
    photos = photo_folder(tmp_path / "photos", ["astronaut", "coffee", "rocket", "clock"])
    done = run("estimate-patterns", str(photos), "--image-size", "96", "--batch-size", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert "patterns of 50 layers of efficientnet_lite0 from 4 images" in done.stdout
    out = tmp_path / "pgig"
    explained = run("explain", "chelsea", "--method", "pattern_guided_ig", "-o", "steps=4",
                    "--out", str(out), env=env)  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    attribution = np.load(out / "attribution.npy")
    assert attribution.shape == (3, 224, 224) and np.isfinite(attribution).all()
    assert np.abs(attribution).max() > 0
    summary = json.loads((out / "summary.json").read_text())
    assert "completeness_gap" in summary["scores"]


def test_gad_support_set_is_trained_from_folders_then_used(tmp_path):
    env = {"EXPLAINER_CACHE_DIR": str(tmp_path / "cache")}
    cats = photo_folder(tmp_path / "cats", ["chelsea", "coffee"])
    others = photo_folder(tmp_path / "others", ["astronaut", "rocket"])
    done = run("train-gad", "--class-a", "Egyptian cat", "--images-a", str(cats),
               "--class-b", "281", "--images-b", str(others), "--epochs", "1", "--image-size",
               "64", "--alphas", "2,8", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "α=8: MSE" in done.stdout and "classes (285, 281)" in done.stdout
    out = tmp_path / "gad"
    explained = run("explain", "chelsea", "--method", "gad", "-o", "base=gradient_x_input",
                    "--out", str(out), env=env)  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert 0 < scores["gad_rc"] <= 1 and 0 < scores["gad_pixel_share"] <= 0.5
