"""The command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from engine import explain


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def run_many(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """:func:`run` of each command, as many at once as there are CPUs (each mostly imports)."""
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(lambda args: run(*args), commands))


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


def test_help_answers_within_a_second_without_importing_torch():
    """``--help`` parses arguments only: the median of 3 runs is under 1 s (it took 5 s when the
    parser imported the engine, and torch with it)."""
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        done = run("--help")
        timings.append(time.perf_counter() - start)
        assert done.returncode == 0 and "explain" in done.stdout and "methods" in done.stdout
    assert statistics.median(timings) < 1.0, timings
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from engine.cli import build_parser; "
         "build_parser().parse_args(['explain', 'chelsea', '--method', 'saliency']); "
         "print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "False", probe.stderr


NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["--method", "saliency", "--device", "cuda"], ["--device cuda", "no CUDA GPU"],
                     marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is there")),
        (["--method", "saliency", "--device", "cuda:64"], ["--device cuda:64"]),
        (["--method", "saliency", "--device", "banana"], ["not a device"]),
        (["--method", "saliency", "--model", "resnet18"],
         ["weights for resnet18 not found", "--weights random:0"]),
        (["--method", "saliancy"], ["unknown method 'saliancy'; did you mean 'saliency'?"]),
        (["--method", "saliency", "--model", "efficientnet_lite"],
         ["unknown model 'efficientnet_lite'; did you mean", "'efficientnet_lite0'"]),
        (["--method", "saliency", "-m", "halucination"],
         ["unknown metric 'halucination'; did you mean 'hallucination'?"]),
        (["--method", "integrated_gradients", "-o", "stepz=3"],
         ["unknown option 'stepz' of integrated_gradients; did you mean 'steps'?"]),
        (["--method", "integrated_gradients", "-o", "smoothing.sampels=3"],
         ["did you mean 'smoothing.samples'?"]),
        (["--method", "saliency", "-m", "faithfulness:stepz=3"], ["did you mean 'steps'?"]),
        (["--method", "saliency", "-o", "bogus=1"], ["unknown option 'bogus' of saliency"]),
        (["--method", "integrated_gradients", "-o", "steps=0"],
         ["steps: Input should be greater than or equal to 1"]),
        (["--method", "integrated_gradients", "-o", "rule=simpson"], ["rule", "gausslegendre"]),
        (["--method", "saliency", "-o", "steps"], ["not KEY=VALUE"]),
        (["--method", "saliency", "--init", "zeros"], ["--init", "mask methods"]),
        (["--method", "saliency", "--iterations", "many"], ["invalid int value"]),
        (["--method", "saliency", "--resize", "crop"], ["invalid choice"]),
    ],
)  # fmt: skip
def test_each_mistake_is_one_line_without_a_traceback(tmp_path, args, words):
    done = run("explain", "chelsea", *args, "--out", str(tmp_path / "out"),
               env={"TORCH_HOME": str(tmp_path / "torch")})  # fmt: skip
    assert_one_line_error(done, *words)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "weights='random'" not in lines[0]  # Python's wording is the library's


def test_the_library_words_missing_weights_for_python(tmp_path):
    """The engine's message fits where it is raised (Python); the CLI words its own from the
    typed error's model and path."""
    from engine.models import load_model
    from engine.models.spec import WeightsNotFound

    with pytest.raises(WeightsNotFound, match="weights='random'") as raised:
        load_model("resnet18", weights=str(tmp_path / "nowhere.pth"))
    assert raised.value.model == "resnet18" and raised.value.path.endswith("nowhere.pth")
    assert "--weights" not in str(raised.value)


def test_input_mistakes_are_one_line(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "summary.json").write_text("{}")
    cases = [
        (["missing.png"], ["no such file: missing.png"]),
        (["chelsee"], ["no file or bundled sample named 'chelsee'; did you mean 'chelsea'?"]),
        ([str(tmp_path / "notes.png")], ["notes.png: not a readable image"]),
        ([str(tmp_path)], ["is a folder"]),
        (["chelsea", "--out", str(tmp_path / "full")], ["already holds files", "--overwrite"]),
    ]
    out = ["--out", str(tmp_path / "out")]
    checks = [(["explain", *args, "--method", "saliency", *([] if "--out" in args else out)],
               words) for args, words in cases]  # fmt: skip
    checks += [
        (["methods", "gradcamm"], ["did you mean 'gradcam'"]),
        (["methods", "--family", "grad"], ["did you mean 'gradient'?"]),
        (["metrics", "degredation"], ["did you mean 'degradation'?"]),
    ]
    for done, (_, words) in zip(run_many(*(c for c, _ in checks)), checks, strict=True):
        assert_one_line_error(done, *words)
    assert (tmp_path / "full" / "summary.json").read_text() == "{}"  # not overwritten


def test_a_series_the_engine_refuses_is_one_line_and_writes_nothing(tmp_path):
    """A one-step CSV was explained, then its plot failed: a 22-line traceback and an --out
    holding attribution.npy alone. 1e308 overflowed float32 in the engine."""
    (tmp_path / "one.csv").write_text("1,2,3\n")
    (tmp_path / "huge.csv").write_text("1e308,1e308,1e308\n1,2,3\n")
    for name, words in [
        ("one.csv", ["one.csv: a series needs at least 2 time steps"]),
        ("huge.csv", ["huge.csv: series values must be finite as float32"]),
    ]:
        out = tmp_path / f"out-{name}"
        done = run("explain", str(tmp_path / name), "--model", "state_gru", "--method",
                   "saliency", "--out", str(out))  # fmt: skip
        assert_one_line_error(done, *words)
        assert not out.exists()


def test_a_failed_write_leaves_no_files_and_no_folder_it_made(tmp_path):
    """The files go into --out all together or not at all: a failure while writing them (here
    a plot of inputs that are not a series) removes what was written and the folders made."""
    from engine.cli import write_outputs

    result = explain("state_gru", np.ones((4, 3)), "saliency")
    broken = dataclasses.replace(result, inputs=result.inputs[:, :, :, None])  # 4-D: no plot
    with pytest.raises(ValueError):
        write_outputs(broken, tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        write_outputs(broken, tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]
    written = write_outputs(result, tmp_path / "kept")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(["notes.txt", *written])


def test_a_method_is_shown_with_its_options_and_a_family_alone():
    ig, listing, every, cams, text, degradation = (done.stdout for done in run_many(
        ["methods", "integrated_gradients"], ["methods"], ["methods", "--json"],
        ["methods", "--family", "cam", "--json"], ["methods", "--family", "cam"],
        ["metrics", "degradation"],
    ))  # fmt: skip
    rule = next(line for line in ig.splitlines() if line.strip().startswith("rule "))
    assert 'default "gausslegendre"' in rule
    assert "one of: riemann_left, riemann_right, riemann_middle, riemann_trapezoid" in rule
    steps = next(line for line in ig.splitlines() if line.strip().startswith("steps "))
    assert "default 50" in steps and "≥ 1 and ≤ 2000" in steps
    assert "smoothing.samples" in ig  # nested options under their dotted names
    every, cams = json.loads(every), json.loads(cams)
    assert len(listing.splitlines()) == len(every) + 1  # one line each
    assert cams == [m for m in every if m["family"] == "cam"] and len(cams) == 8
    assert "gradcam" in text and "saliency" not in text
    morf = next(line for line in degradation.splitlines() if "degradation_morf" in line)
    assert "lower is better; random baseline: degradation_random" in morf


def test_default_output_folders_are_numbered_and_scores_meet_their_baseline(
    tmp_path, monkeypatch, capsys
):
    """Without --out: explanations/<input>-<method>, then -2 (never overwritten). Scores are
    printed beside their random baseline and summary.json carries ``baselines``."""
    from engine.cli import main as cli

    monkeypatch.chdir(tmp_path)
    metrics = ["-m", "degradation:patch=16", "-m", "pixel_perturbation"]
    assert cli(["explain", "chelsea", "--method", "gradcam", "--quiet", *metrics]) == 0
    first = capsys.readouterr().out
    assert cli(["explain", "chelsea", "--method", "gradcam", "--quiet"]) == 0
    assert "to explanations/chelsea-gradcam-2" in capsys.readouterr().out
    summary = json.loads((tmp_path / "explanations/chelsea-gradcam/summary.json").read_text())
    scores, baselines = summary["scores"], summary["baselines"]
    worse = scores["degradation_morf"] > scores["degradation_random"]
    assert baselines["degradation_morf"] == {
        "baseline": "degradation_random", "value": scores["degradation_random"], "worse": worse,
    }  # fmt: skip
    morf = next(line for line in first.splitlines() if "degradation_morf:" in line)
    assert "lower is better" in morf and "random baseline degradation_random" in morf
    assert ("WORSE than the random baseline" in morf) == worse
    assert (tmp_path / "explanations/chelsea-gradcam-2/summary.json").is_file()


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
