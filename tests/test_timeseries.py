"""Time series: the synthetic datasets, the GRU classifier, ExtremalMask with its inits, the
time-series metrics against hand computations, and series through explain() and the CLI.

The classifiers are trained here (≈10 s each, the spec's fast setting: T = 50, hidden 64,
lr 1e-3, 30 epochs) rather than shipped."""

from __future__ import annotations

import functools
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from engine import explain
from engine.data import InputError
from engine.data.timeseries import load_series, read_npy, state_dataset, switch_feature_dataset
from engine.masks.extremal import ExtremalMaskOptions, SeriesMaskOutputs
from engine.method import MethodError
from engine.metrics.timeseries import black_box, white_box
from engine.models.series import (
    SeriesClassifier,
    TrainingSettings,
    load_classifier,
    save_classifier,
    step_accuracy,
    train_classifier,
)
from engine.models.spec import LoadedModel, ModelSpec

FAST = TrainingSettings(epochs=30, learning_rate=1e-3)


@functools.cache
def trained(seed: int):
    data = state_dataset(1000, 50, seed=seed)
    train, test = data.subset(np.arange(900)), data.subset(np.arange(900, 1000))
    torch.manual_seed(seed)
    model = SeriesClassifier("gru", hidden=64)
    train_classifier(model, train.x, train.y, TrainingSettings(**{**vars(FAST), "seed": seed}))
    spec = ModelSpec(f"gru{seed}", "test GRU", None, input_kind="timeseries")
    return LoadedModel(spec, model.requires_grad_(False), "memory", None, torch.device("cpu")), test


@pytest.fixture(scope="module", params=[1, 2, 3])
def seeded_model(request):
    return trained(request.param)


@pytest.fixture(scope="module")
def one_model():
    return trained(1)


# --- datasets --------------------------------------------------------------------------------


@pytest.mark.parametrize("generate", [state_dataset, switch_feature_dataset])
def test_generators_are_reproducible_and_distinct(generate):
    a, b, c = generate(200, 60, seed=5), generate(200, 60, seed=5), generate(200, 60, seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.truth, b.truth)
    assert not torch.equal(a.x, c.x)
    assert len(torch.unique(a.x.flatten(1), dim=0)) == 200  # no duplicated series
    assert (a.truth.sum(-1) == 1).all()  # exactly one salient feature per step


def test_ground_truth_proportions_match_the_spec():
    state = state_dataset(1000, 200, seed=0)
    share = state.truth.float().mean((0, 1))
    assert share[0] == 0 and 0.52 < share[1] < 0.62  # spec: feature 0 never, ≈57 % / 43 %
    assert 0.52 < state.y.mean() < 0.60  # spec: label mean ≈ 0.56
    switch = switch_feature_dataset(1000, 200, seed=0)
    share = switch.truth.float().mean((0, 1))
    assert torch.allclose(share, torch.tensor([0.36, 0.29, 0.35]), atol=0.05)
    assert 0.61 < switch.y.mean() < 0.69  # spec: ≈ 0.65
    train, test = state.folds()[0]
    assert len(train) == 800 and len(test) == 200 and not set(train) & set(test)


# --- classifier and ExtremalMask -------------------------------------------------------------


def test_classifier_reaches_the_spec_accuracy(seeded_model):
    model, test = seeded_model
    assert step_accuracy(model.module, test.x, test.y) >= 0.87  # spec: 0.885–0.895


def run(model, test, init, iterations=50, game="preservation"):
    options = {"iterations": iterations, "init": init, "checkpoint_every": 25, "game": game}
    return explain(model, test.x, "extremal_mask", options, seed=0)


def test_startgrad_is_faster_and_every_init_beats_a_random_mask(seeded_model):
    """Spec §7: StartGrad's Information at 50 iterations ≥ 1.2× both other inits', and its
    starting mask already beats the 1/3 base rate (AUP > 0.5, AUR > 0.7)."""
    model, test = seeded_model
    results = {init: run(model, test, init) for init in ("uniform", "ones", "startgrad")}
    info = {i: white_box(r.attribution, test.truth)["information"] for i, r in results.items()}
    assert info["startgrad"] >= 1.2 * max(info["uniform"], info["ones"]), info
    start = white_box(results["startgrad"].outputs.checkpoints[0], test.truth)
    assert start["aup"] > 0.5 and start["aur"] > 0.7, start
    random_mask = white_box(torch.rand(test.x.shape, generator=torch.Generator().manual_seed(0)),
                            test.truth)  # fmt: skip
    for init, result in results.items():
        final = white_box(result.attribution, test.truth)
        assert final["aup"] > random_mask["aup"] and final["aur"] > random_mask["aur"], init
    # one freshly seeded perturbation net per init: the same perturbation penalty at step 0
    penalties = {r.outputs.history[0]["perturbation"][0] for r in results.values()}
    assert len(penalties) == 1


def test_startgrad_mask_is_uniform_in_rank_per_series_and_flipped_for_deletion(one_model):
    model, test = one_model
    few = test.subset(np.arange(4))
    preserve = run(model, few, "startgrad", iterations=0).outputs.checkpoints[0]
    delete = run(model, few, "startgrad", iterations=0, game="deletion")
    ranks = torch.linspace(0, 1, 50 * 3)
    for series in preserve:
        assert torch.allclose(series.flatten().sort().values, ranks, atol=1e-3)
    # deletion starts from M = 1 − m₀, so its attribution 1 − M is m₀ as well
    torch.testing.assert_close(delete.outputs.checkpoints[0], preserve)
    assert delete.outputs.game == "deletion"


def test_deletion_game_improves_on_its_start(one_model):
    model, test = one_model
    result = run(model, test.subset(np.arange(40)), "startgrad", iterations=50, game="deletion")
    loss = np.array([h["loss"] for h in result.outputs.history])
    assert loss[:, -1].mean() < loss[:, 0].mean()


# --- metrics by hand -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "labels", "expected"),
    [
        # ã ≈ [1, 0, .625, .375] (min-max over the series). Thresholds 0, .375, .625, 1:
        # precision .5, 2/3, 1, 1 and recall 1, 1, 1, ½ → AUP = .375·(½ + ⅔)/2 + .25·(⅔ + 1)/2
        # + .375·1 = .8021, AUR = .375 + .25 + .375·¾ = .9062; every positive above every
        # negative: AUROC = AUPRC = 1.
        ([0.9, 0.1, 0.6, 0.4], [1, 0, 1, 0],
         {"aup": 0.80208, "aur": 0.90625, "auroc": 1.0, "auprc": 1.0}),
        # ã ≈ [1, .875, 0, .375]: precision .5, ⅔, ½, 1, recall 1, 1, ½, ½ → AUP = .6042,
        # AUR = .8125; 3 of 4 (positive, negative) pairs ordered → AUROC = .75; average
        # precision ½·1 + ½·⅔ = .8333.
        ([0.9, 0.8, 0.1, 0.4], [1, 0, 0, 1],
         {"aup": 0.60417, "aur": 0.8125, "auroc": 0.75, "auprc": 0.83333}),
    ],
)  # fmt: skip
def test_white_box_areas_by_hand(values, labels, expected):
    attribution = torch.tensor(values).view(1, 4, 1)
    scores = white_box(attribution, torch.tensor(labels).view(1, 4, 1))
    for key, value in expected.items():  # the 1e-5 in the min-max moves values by ≤ 1e-5
        assert scores[key] == pytest.approx(value, abs=2e-4), key


def test_white_box_information_and_entropy_by_hand():
    """Salient ã ≈ 1 − 1.25e-5 and .625 (first case above), ρ(p) = (p + 1e-5)/(1 + 1e-5):
    I = −log₂ ρ(1.25e-5) − log₂ ρ(.375) = 15.44 + 1.415 = 16.855;
    H ≈ 2.1e-4 + [−.625 log₂ .625 − .375 log₂ .375 = .9544] = .9546."""
    scores = white_box(torch.tensor([0.9, 0.1, 0.6, 0.4]).view(1, 4, 1),
                       torch.tensor([1, 0, 1, 0]).view(1, 4, 1))  # fmt: skip
    assert scores["information"] == pytest.approx(16.855, abs=2e-3)
    assert scores["entropy"] == pytest.approx(0.9546, abs=2e-4)
    assert scores["mae"] == pytest.approx((0 + 0 + 0.375 + 0.375) / 4, abs=1e-4)


def test_white_box_auroc_auprc_equal_scikit_learn_on_pooled_series():
    """Many series: each attribution min-max normalised per series (the definition), then all
    entries pooled; AUROC and AUPRC are scikit-learn's on those scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    generator = torch.Generator().manual_seed(0)
    truth = (torch.rand(5, 30, 3, generator=generator) < 0.3).long()
    attribution = truth * 0.5 + torch.rand(5, 30, 3, generator=generator) * torch.arange(
        1, 6.0
    ).view(5, 1, 1)
    flat = attribution.flatten(1).double()
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    pooled = ((flat - low) / (high - low + 1e-5)).flatten().numpy()
    scores = white_box(attribution, truth)
    assert scores["auroc"] == pytest.approx(roc_auc_score(truth.flatten(), pooled), abs=1e-12)
    assert scores["auprc"] == pytest.approx(average_precision_score(truth.flatten(), pooled),
                                            abs=1e-12)  # fmt: skip
    # Pooling after the per-series normalisation matters: on raw values the series with the
    # larger scale would dominate and the AUROC would differ.
    assert abs(roc_auc_score(truth.flatten(), flat.flatten()) - scores["auroc"]) > 0.01


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, -3.0])
def test_white_box_constant_mask_scores_zero_not_negative(value):
    """A constant mask (ones or uniform at step 0) normalises to ã = 0: no information, no
    entropy, and no precision or recall area, all exactly 0 (not −1.4e-5 bits per entry)."""
    truth = torch.tensor([[[1, 0], [0, 1], [1, 1]]])
    scores = white_box(torch.full((1, 3, 2), value), truth)
    assert scores["information"] == 0.0 and scores["entropy"] == 0.0
    assert scores["aup"] == 0.0 and scores["aur"] == 0.0
    assert np.signbit(scores["information"]) == np.signbit(scores["entropy"]) == False  # noqa: E712


class StepModel(nn.Module):
    """logit_t = 4·x_t (one feature): the predicted class follows the sign of x."""

    def forward(self, x):
        return 4 * x[..., 0]


def test_black_box_metrics_by_hand():
    x = torch.tensor([[[1.0], [-0.5], [0.25], [2.0]]])
    attribution = torch.tensor([[[0.1], [0.9], [0.2], [0.8]]])  # top 50 %: steps 1 and 3
    scores = black_box(StepModel(), x, attribution, top=0.5, baseline="zeros")

    def s(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    p = torch.tensor([s(4.0), 1 - s(-2.0), s(1.0), s(8.0)])
    removed = torch.tensor([s(4.0), 0.5, s(1.0), 0.5])
    kept = torch.tensor([0.5, 1 - s(-2.0), 0.5, s(8.0)])
    assert scores["comprehensiveness"].item() == pytest.approx((p - removed).mean().item())
    assert scores["sufficiency"].item() == pytest.approx((p - kept).mean().item())
    assert scores["accuracy"].item() == 1.0  # p'_c = 0.5 counts as still correct
    assert scores["log_odds"].item() == pytest.approx((removed.log() - p.log()).mean().item())
    assert scores["cross_entropy"].item() == pytest.approx(-removed.log().mean().item())


# --- input, registry, saved models and the CLI -----------------------------------------------


def test_series_validation_errors_are_clear(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    np.save(tmp_path / "nan.npy", np.array([[0.0], [math.nan]]))
    (tmp_path / "text.csv").write_text("a,b\n1,2\n")
    for name, message in [("cube.npy", "2-D"), ("nan.npy", "finite"), ("text.csv", "numeric"),
                          ("missing.npy", "not found")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            load_series(tmp_path / name)
    with pytest.raises(InputError, match="limits"):
        load_series(np.zeros((20, 3)), max_length=10)
    (tmp_path / "ok.csv").write_text("1,2,3\n4,5,6\n")
    assert load_series(tmp_path / "ok.csv").shape == (2, 3)


def npy_header_only(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"\0" * 48) -> bytes:
    """A .npy file whose header claims ``shape`` of ``descr``, followed by ``data`` only (the
    probe's file claimed 10¹² × 3 float64: 24 TB)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return header.getvalue() + data


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_npy_header_is_checked_before_anything_is_allocated(tmp_path):
    """np.load allocated what the header claimed (a MemoryError for 10¹² rows, gigabytes for
    10⁸) before finding the data missing."""
    bomb = tmp_path / "bomb.npy"
    bomb.write_bytes(npy_header_only((10**12, 3)))
    with pytest.raises(InputError, match=r"series is 1000000000000×3; limits are 10000 steps"):
        load_series(bomb)
    with pytest.raises(InputError, match=r"header says 240 bytes .* the file has 48"):
        read_npy(npy_header_only((10, 3)))
    with pytest.raises(InputError, match="2-D"):
        read_npy(npy_header_only((10**6, 10**6, 10**6)))
    with pytest.raises(InputError, match=r"not a readable \.npy"):
        read_npy(npy(np.zeros((4, 3)))[:20])


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.ones((5, 3)) * (1 + 2j), "complex numbers"),
        (np.array([["a", "b", "c"]] * 2), "<U1"),
        (np.zeros((4, 3), dtype=bool), "bool"),
        (np.zeros(4, dtype=[("t", "<f8"), ("v", "<f8")]), "real numbers"),
        (np.zeros((4, 3), dtype="datetime64[s]"), "datetime64"),
    ],
    ids=["complex", "strings", "bool", "structured", "dates"],
)
def test_series_of_anything_but_real_numbers_are_refused(tmp_path, array, words):
    """A complex series was accepted with its imaginary part silently dropped."""
    path = tmp_path / "series.npy"
    path.write_bytes(npy(array))
    with pytest.raises(InputError, match=words):
        load_series(path)
    with pytest.raises(InputError, match=words):
        load_series(array)


def test_npy_series_read_as_saved(tmp_path):
    values = np.arange(12, dtype=">i4").reshape(4, 3)
    for array in (values, np.asfortranarray(values.astype(np.float16)), values[:, 0]):
        path = tmp_path / "series.npy"
        path.write_bytes(npy(array))
        expected = array.reshape(len(array), -1).astype(np.float32)
        assert np.array_equal(load_series(path).numpy(), expected)


def test_a_series_needs_two_steps_of_float32_finite_values(tmp_path):
    """A one-step series passed every check, then its plot failed (IndexError) after the
    attribution was written; 1e308 passed as float64 and became inf in float32 in the worker."""
    (tmp_path / "one.csv").write_text("1,2,3\n")
    (tmp_path / "one.npy").write_bytes(npy_header_only((1, 3), data=b"\0" * 24))
    for source in ([[1.0, 2.0, 3.0]], np.ones(1), tmp_path / "one.csv", tmp_path / "one.npy"):
        with pytest.raises(InputError, match=r"at least 2 time steps .*got 1 step"):
            load_series(np.asarray(source) if isinstance(source, list) else source)
    with pytest.raises(InputError, match="at least 2 time steps"):
        read_npy(npy_header_only((1, 3), data=b""))  # refused from the header
    for huge in (1e308, -1e39, np.float64(np.finfo(np.float32).max) * 2):
        with pytest.raises(InputError, match="finite as float32"):
            load_series(np.full((2, 3), huge))
    largest = np.full((2, 3), np.finfo(np.float32).max, dtype=np.float64)
    assert torch.isfinite(load_series(largest)).all()
    assert load_series(np.arange(2)).shape == (2, 1)


def test_every_series_method_scores_and_plots_the_shortest_series(tmp_path):
    """Every method a series model lists runs on a series of MIN_SERIES_LENGTH steps, with its
    black-box and white-box scores and its files (the plot had no time axis for one step)."""
    from engine.artifacts import write_artifacts
    from engine.catalogue import applicable_methods
    from engine.data.timeseries import MIN_SERIES_LENGTH
    from engine.models import MODELS
    from engine.render import series_plot, time_ticks

    series = np.random.default_rng(0).normal(size=(MIN_SERIES_LENGTH, 3))
    truth = torch.zeros(1, MIN_SERIES_LENGTH, 3, dtype=torch.long)
    truth[0, :, 1] = 1
    methods = [m.name for m in applicable_methods(MODELS["state_gru"])]
    assert {"saliency", "integrated_gradients", "extremal_mask"} <= set(methods)
    for method in methods:
        options = {"iterations": 3} if method == "extremal_mask" else {}
        result = explain("state_gru", series, method, options)
        assert result.scores[0]["comprehensiveness"] != 0  # one entry of six was masked
        assert all(math.isfinite(v) for v in white_box(result.attribution, truth).values())
        written = write_artifacts(result, tmp_path / method)
        assert {"attribution.npy", "series.png", "summary.json"} <= set(written)
    assert time_ticks(1) == [0] and time_ticks(2) == [0, 1] and time_ticks(3) == [0, 1, 2]
    assert series_plot(np.ones((1, 2)), np.ones((1, 2)), truth=np.ones((1, 2))).size == (800, 274)


def test_registry_refuses_a_model_input_mismatch(one_model, lite0):
    model, test = one_model
    with pytest.raises(MethodError, match="does not explain image"):
        explain(lite0, test.x[:1], "extremal_mask")
    with pytest.raises(MethodError, match="does not explain timeseries"):
        explain(model, test.x[:1], "gradcam")


def test_saved_model_round_trip_and_cli(tmp_path):
    out = tmp_path / "gru.pt"
    command = [sys.executable, "-m", "engine", "train-series", "--series", "200", "--length",
               "30", "--hidden", "16", "--epochs", "2", "--export", "1", "--out",
               str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["data_seed"] == 0 and 0 <= record["test_accuracy"] <= 1
    series = np.load(tmp_path / "series_0.npy")
    np.savetxt(tmp_path / "series.csv", series, delimiter=",")
    loaded = load_classifier(out)
    assert loaded.spec.input_kind == "timeseries" and loaded.weights_sha256
    for source in ("series_0.npy", "series.csv"):
        folder = tmp_path / source.replace(".", "_")
        done = subprocess.run(
            [sys.executable, "-m", "engine", "explain", str(tmp_path / source), "--model",
             str(out), "--method", "extremal_mask", "--init", "startgrad", "--iterations", "5",
             "--out", str(folder)], capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        mask = np.load(folder / "attribution.npy")
        assert mask.shape == series.shape and mask.min() >= 0 and mask.max() <= 1
        summary = json.loads((folder / "summary.json").read_text())
        assert {"loss", "comprehensiveness", "sufficiency"} <= set(summary["scores"])
        from PIL import Image

        assert Image.open(folder / "series.png").size == (800, 3 * 120 + 34)  # and time axis
    assert np.allclose(np.load(tmp_path / "series_0_npy" / "attribution.npy"),
                       np.load(tmp_path / "series_csv" / "attribution.npy"), atol=1e-5)  # fmt: skip


def test_training_is_reproducible_bit_for_bit():
    data = state_dataset(100, 20, seed=3)

    def weights():
        torch.manual_seed(3)
        model = SeriesClassifier("lstm", hidden=8)
        train_classifier(model, data.x, data.y, TrainingSettings(epochs=2, seed=3))
        return model.state_dict()

    first, second = weights(), weights()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_save_refuses_other_files(tmp_path):
    from engine.models import ModelError

    torch.save({"something": 1}, tmp_path / "x.pt")
    with pytest.raises(ModelError, match="not a saved series classifier"):
        load_classifier(tmp_path / "x.pt")
    model = SeriesClassifier("gru", hidden=4)
    save_classifier(model, tmp_path / "m.pt", {"dataset": "state"})
    assert load_classifier(tmp_path / "m.pt").spec.description.startswith("GRU")


def test_extremal_mask_options_are_validated():
    with pytest.raises(Exception, match="game"):
        ExtremalMaskOptions(game="both")
    with pytest.raises(Exception, match="checkpoint_every"):
        ExtremalMaskOptions(checkpoint_every=0)


def test_extremal_mask_outputs_are_typed_and_consistent():
    """The checkpoints hold the attribution at steps 0, 2, 4 and the final one is the result;
    the history has one entry per evaluated step (0 … iterations); the black-box scores are
    the series kind's, on every result."""
    model = SeriesClassifier("gru", hidden=8).eval()
    series = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(3))
    result = explain(model, series, "extremal_mask", {"iterations": 4, "checkpoint_every": 2})
    outputs = result.outputs
    assert isinstance(outputs, SeriesMaskOutputs) and outputs.game == "preservation"
    assert sorted(outputs.checkpoints) == [0, 2, 4]
    torch.testing.assert_close(outputs.checkpoints[4], result.attribution)
    assert (outputs.checkpoints[0] == 0.5).all()  # the "uniform" init is the constant ½
    assert [len(h["loss"]) for h in outputs.history] == [5, 5]
    assert result.scores[1]["loss"] == pytest.approx(outputs.history[1]["loss"][-1])
    expected = black_box(model, series, result.attribution)
    assert result.scores[0]["comprehensiveness"] == pytest.approx(
        float(expected["comprehensiveness"][0])
    )


def test_bundled_model_and_samples_belong_together():
    """The bundled GRU's recorded test accuracy is reproduced on the fold its samples come from,
    and each sample's truth marks one salient feature per step."""
    import json

    from engine.data.timeseries import BUNDLED_DATA, SERIES_SAMPLES, series_sample
    from engine.data.timeseries import _bundled_test_fold as test_fold
    from engine.models import load_model
    from engine.models.series import BUNDLED, step_accuracy

    record = json.loads(BUNDLED.with_suffix(".json").read_text())
    assert {k: record[k] for k in ("dataset", "series", "length", "fold")} == {
        k: BUNDLED_DATA[k] for k in ("dataset", "series", "length", "fold")
    } and record["data_seed"] == BUNDLED_DATA["seed"]
    model = load_model("state_gru")
    fold = test_fold()
    assert step_accuracy(model.module, fold.x, fold.y) == pytest.approx(record["test_accuracy"])
    assert record["test_accuracy"] > 0.85
    for name in SERIES_SAMPLES:
        series, truth = series_sample(name)
        assert series.shape == truth.shape == (100, 3)
        assert (truth.sum(1) == 1).all()


def test_a_bundled_series_sample_is_named_as_in_the_api(tmp_path, monkeypatch):
    """``state:3`` is the API's sample name; the library and the CLI take it too, as the same
    series, and a file of that name would win."""
    from engine.cli import main as cli
    from engine.data.timeseries import series_sample

    series = series_sample("state:3")[0]
    named = explain("state_gru", "state:3", "saliency")
    assert torch.equal(named.attribution, explain("state_gru", series, "saliency").attribution)
    assert named.metadata["inputs"][0]["source"] == "state:3"
    assert cli(["explain", "state:3", "--model", "state_gru", "--method", "saliency", "--out",
                str(tmp_path / "out"), "--quiet"]) == 0  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "out" / "attribution.npy"), named.attribution[0])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state:3").write_text("not a series")
    with pytest.raises(InputError, match=r"series files are \.npy or \.csv, not no suffix"):
        load_series("state:3")
