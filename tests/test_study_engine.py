"""engine.study: variants, the summary against independent computations (numpy, scipy), a real
study whose every row equals a single-image explanation, its files, and the command line."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from engine import explain
from engine.cli import main
from engine.data import load_sample
from engine.plan import PlanError
from engine.study import (
    STUDY_COLUMNS,
    StudyError,
    Variant,
    parse_variant,
    parse_variants,
    rows_from_csv,
    study,
    study_inputs,
    summarize,
)
from engine.study.run import StudyInput, check_sizes

INPUTS = ["chelsea", "coffee"]
VARIANTS = ["saliency", "gradcam:heatmap_reduction=max_abs"]
METRICS = ["pixel_perturbation"]  # a graded score and its random baseline, 4 passes


def test_parse_variant_forms():
    assert parse_variant("gradcam") == Variant("gradcam", "gradcam", {})
    variant = parse_variant("shearletx:init=startgrad, iterations=10,stop_value=0.5,x=true,y=null")
    assert variant.method == "shearletx"
    assert variant.options == {"init": "startgrad", "iterations": 10, "stop_value": 0.5,
                               "x": True, "y": None}  # fmt: skip
    assert variant.label == "shearletx[init=startgrad,iterations=10,stop_value=0.5,x=true,y=null]"
    nested = parse_variant("saliency:smoothing.samples=8,smoothing.kind=vargrad")
    assert nested.options == {"smoothing": {"samples": 8, "kind": "vargrad"}}
    assert parse_variant("x:a=[1]").options == {"a": "[1]"}  # not a scalar: kept as text
    given = parse_variant({"method": "pixelmask", "options": {"iterations": 5}, "label": "pm"})
    assert given == Variant("pm", "pixelmask", {"iterations": 5})
    assert parse_variant({"method": "gradcam"}).label == "gradcam"
    assert parse_variant(given) is given


@pytest.mark.parametrize(
    "value",
    ["", ":a=1", "saliency:steps", "saliency:=3", {"options": {}}, {"method": "x", "extra": 1},
     {"method": "x", "options": [1]}, {"method": "x", "label": ""}, 3],
)  # fmt: skip
def test_parse_variant_refuses(value):
    with pytest.raises(StudyError):
        parse_variant(value)


def test_labels_must_be_distinct():
    with pytest.raises(StudyError, match="two variants are labelled 'gradcam'"):
        parse_variants(["gradcam", {"method": "gradcam"}])
    assert [v.label for v in parse_variants(["gradcam", {"method": "gradcam", "label": "b"}])] \
        == ["gradcam", "b"]  # fmt: skip
    with pytest.raises(StudyError, match="at least one variant"):
        parse_variants([])


def rows_of(variant: str, score: str, values: list[float | None]) -> list[dict]:
    return [{"input_index": i, "input": f"in{i}", "variant": variant, "method": variant,
             "target": 1, "predicted": 1, "score": score, "value": v}
            for i, v in enumerate(values)]  # fmt: skip


def test_summarize_against_numpy_and_scipy():
    a_cp = [0.3, 0.1, 0.5, 0.9, 0.25, 0.7, 0.4, 2.5]
    b_cp = [0.2, 0.15, None, 0.3, 0.1, 0.05, 0.12, 0.2]
    a_h, b_h = [0.4, 0.6, 0.5], [0.1, 0.3, 0.2]
    rows = [*rows_of("a", "cp_pixel_sg", a_cp), *rows_of("b", "cp_pixel_sg", b_cp),
            *rows_of("a", "hallucination", a_h), *rows_of("b", "hallucination", b_h),
            *rows_of("b", "image_edges", [10.0, 12.0]),
            *rows_of("a", "image_edges", [11.0])]  # fmt: skip
    summary = summarize(rows)
    json.dumps(summary, allow_nan=False)
    assert summary["variants"] == ["a", "b"]
    assert summary["scores"] == ["cp_pixel_sg", "hallucination", "image_edges"]
    assert summary["better"] == {"cp_pixel_sg": "higher", "hallucination": "lower",
                                 "image_edges": None}  # fmt: skip
    cells = {(c["variant"], c["score"]): c for c in summary["rows"]}
    assert [(c["variant"], c["score"]) for c in summary["rows"]] == [
        ("a", "cp_pixel_sg"), ("a", "hallucination"), ("a", "image_edges"),
        ("b", "cp_pixel_sg"), ("b", "hallucination"), ("b", "image_edges"),
    ]  # fmt: skip
    for (variant, score), values in {("a", "cp_pixel_sg"): a_cp, ("b", "cp_pixel_sg"): b_cp,
                                     ("a", "hallucination"): a_h,
                                     ("b", "hallucination"): b_h}.items():  # fmt: skip
        defined = np.array([v for v in values if v is not None])
        cell = cells[(variant, score)]
        assert cell["n"] == len(defined) and cell["undefined"] == len(values) - len(defined)
        assert cell["mean"] == pytest.approx(defined.mean(), rel=1e-12)
        assert cell["median"] == pytest.approx(np.median(defined), rel=1e-12)
        assert cell["std"] == pytest.approx(defined.std(ddof=1), rel=1e-12)
        interval = scipy.stats.bootstrap(
            (defined,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
            random_state=np.random.default_rng(0), vectorized=True,
        ).confidence_interval  # fmt: skip
        assert cell["ci_low"] == pytest.approx(interval.low, rel=1e-12)
        assert cell["ci_high"] == pytest.approx(interval.high, rel=1e-12)
        assert cell["ci_low"] < cell["mean"] < cell["ci_high"]
        if score == "cp_pixel_sg":  # a mask-curve key: the interquartile mean
            assert cell["iqm"] == pytest.approx(scipy.stats.trim_mean(defined, 0.25), rel=1e-12)
            assert cell["iqm"] != pytest.approx(cell["mean"])  # the outlier 2.5 is cut
        else:
            assert cell["iqm"] is None
    assert cells[("a", "cp_pixel_sg")]["rank"] == 1 and cells[("b", "cp_pixel_sg")]["rank"] == 2
    assert cells[("b", "hallucination")]["rank"] == 1 and cells[("a", "hallucination")]["rank"] == 2
    one = cells[("a", "image_edges")]  # one value: no spread, no rank (no better direction)
    assert (one["n"], one["mean"], one["std"], one["ci_low"]) == (1, 11.0, None, None)
    assert one["rank"] is None
    # the variants' order as given; an undefined-only cell has no statistics and no rank
    summary = summarize(rows_of("c", "hallucination", [None]) + rows, variants=["b", "a"])
    assert summary["variants"] == ["b", "a", "c"]
    empty = next(c for c in summary["rows"] if c["variant"] == "c")
    assert (empty["n"], empty["mean"], empty["rank"], empty["undefined"]) == (0, None, None, 1)


def test_ties_share_the_better_rank():
    rows = [*rows_of("a", "faithfulness", [0.5, 0.7]), *rows_of("b", "faithfulness", [0.7, 0.5]),
            *rows_of("c", "faithfulness", [0.1, 0.2])]  # fmt: skip
    ranks = [c["rank"] for c in summarize(rows)["rows"]]
    assert ranks == [1, 1, 3]


def test_study_inputs_from_a_folder_and_a_zip(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(load_sample("chelsea")).save(folder / "cat.png")
    Image.fromarray(load_sample("coffee")).save(folder / "cup.jpg")
    np.save(folder / "series.npy", np.zeros((5, 2), np.float32))
    (folder / "notes.txt").write_text("not an input")
    assert [i.name for i in study_inputs(folder)] == ["cat.png", "cup.jpg", "series.npy"]
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(folder / "cat.png", "set/cat.png")
        z.write(folder / "cup.jpg", "cup.jpg")
        z.writestr("__MACOSX/set/._cat.png", b"resource fork")
        z.writestr("set/.hidden.png", b"x")
        z.writestr("series.csv", "1,2\n3,4\n")
    items = study_inputs(archive)
    assert [i.name for i in items] == ["cup.jpg", "series.csv", "set/cat.png"]
    assert items[2].source == (folder / "cat.png").read_bytes()
    np.testing.assert_array_equal(items[1].source, [[1, 2], [3, 4]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="no inputs"):
        study_inputs(tmp_path / "empty")
    with pytest.raises(StudyError, match="distinct names"):
        study_inputs(["chelsea", "chelsea"])


@pytest.fixture(scope="module")
def finished(lite0, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    done = []
    result = study(lite0, INPUTS, VARIANTS, METRICS, seed=3, batch_size=2, out_dir=out,
                   progress=lambda d, t: done.append((d, t)))  # fmt: skip
    return result, out, done


def test_rows_equal_single_image_explanations(lite0, finished):
    result, _, done = finished
    assert done == [(2, 4), (4, 4)]  # one batch per variant
    assert result.inputs == INPUTS and [v.label for v in result.variants] == [
        "saliency", "gradcam[heatmap_reduction=max_abs]"]  # fmt: skip
    keys = ["pixel_perturbation", "pixel_perturbation_random"]
    assert len(result.rows) == len(INPUTS) * len(VARIANTS) * len(keys)
    by_cell = {(r["variant"], r["input"], r["score"]): r for r in result.rows}
    for variant in result.variants:
        for index, name in enumerate(INPUTS):
            alone = explain(lite0, name, variant.method, variant.options, seed=3, metrics=METRICS)
            for key in keys:
                row = by_cell[(variant.label, name, key)]
                assert row["value"] == pytest.approx(alone.scores[0][key], rel=1e-6, abs=1e-6)
                assert (row["input_index"], row["method"]) == (index, variant.method)
                assert row["predicted"] == alone.predictions[0].class_index
                assert row["target"] == alone.predictions[0].target
    assert result.summary == summarize(result.rows, [v.label for v in result.variants])


def test_files_and_csv_round_trip(finished):
    result, out, _ = finished
    names = {p.name for p in out.iterdir()}
    assert {"scores.csv", "summary.json", "table.md", "pixel_perturbation.png"} <= names
    text = (out / "scores.csv").read_text()
    assert text == result.to_csv()
    assert text.splitlines()[0] == ",".join(STUDY_COLUMNS)
    assert rows_from_csv(text) == result.rows
    assert json.loads((out / "summary.json").read_text()) == result.summary
    table = (out / "table.md").read_text()
    assert "pixel_perturbation ↓" in table and table.count("**") == 2  # one best, one column
    with Image.open(out / "pixel_perturbation.png") as figure:
        assert figure.size[0] > 300 and figure.size[1] > 200
    files = {p.name for p in (out / "gradcam[heatmap_reduction=max_abs]" / "coffee").iterdir()}
    assert {"overlay.png", "attribution.npy", "summary.json"} <= files


def test_study_refuses_before_any_work(lite0):
    """The engine's pre-flight plan checks every variant (its refusal keeps its code)."""
    with pytest.raises(PlanError, match=r"variant 'saliancy': .*did you mean 'saliency'") as caught:
        study(lite0, INPUTS, ["gradcam", "saliancy"])
    assert caught.value.code == "unknown_method"
    with pytest.raises(PlanError, match="steps") as caught:
        study(lite0, INPUTS, ["integrated_gradients:steps=0"])
    assert caught.value.code == "invalid_option"
    with pytest.raises(PlanError, match="not a class") as caught:
        study(lite0, INPUTS, ["gradcam"], targets=[1, 5000])
    assert caught.value.code == "invalid_target"
    with pytest.raises(StudyError, match="2 targets for 1 inputs"):
        study(lite0, ["chelsea"], ["gradcam"], targets=[1, 2])
    with pytest.raises(StudyError, match="resize 'none'"):
        study(lite0, ["chelsea", "coffee"], ["gradcam"], resize="none")


def test_an_out_dir_that_holds_files_is_refused_and_left_alone(lite0, finished, tmp_path):
    """Python refuses a folder that holds a study, as the CLI does (it had mixed two studies
    into one folder); overwrite=True replaces the entries of the same names, all at once."""
    _, out, _ = finished
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(StudyError, match="already holds files"):
        study(lite0, ["chelsea"], ["saliency"], out_dir=out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    again = tmp_path / "again"
    (again / ".writing-left-by-a-killed-run").mkdir(parents=True)  # not files of a study
    result = study(lite0, ["chelsea"], ["saliency"], out_dir=again)
    assert set(result.files) == {"scores.csv", "summary.json", "table.md", "saliency"}
    replaced = study(lite0, ["coffee"], ["saliency"], out_dir=again, overwrite=True)
    assert (again / "scores.csv").read_text() == replaced.to_csv()
    assert {p.name for p in (again / "saliency").iterdir()} == {"coffee"}


def test_cli_writes_every_file(tmp_path, capsys):
    out = tmp_path / "cli"
    status = main(["study", "chelsea,coffee", "--variant", "gradcam", "--variant",
                   "gradcam:heatmap_reduction=max_abs", "-m", "pixel_perturbation:fraction=0.2",
                   "--batch-size", "2", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "study: 4/4 input × variant results" in captured.err
    assert "| variant |" in captured.out
    names = {p.name for p in out.iterdir()}
    assert names == {"scores.csv", "summary.json", "table.md", "pixel_perturbation.png",
                     "gradcam", "gradcam[heatmap_reduction=max_abs]"}  # fmt: skip
    for variant in ("gradcam", "gradcam[heatmap_reduction=max_abs]"):
        for name in INPUTS:
            assert (out / variant / name / "overlay.png").is_file()
            assert (out / variant / name / "attribution.npy").is_file()
    rows = rows_from_csv((out / "scores.csv").read_text())
    assert len(rows) == 2 * 2 * 2
    # --out now holds files: refused, and nothing changes
    assert main(["study", "chelsea", "--variant", "gradcam", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["chelsea", "--variant", "gradcamm"], "did you mean 'gradcam'"),
        (["chelsea", "--variant", "gradcam", "--variant", "gradcam"], "two variants"),
        (["chelsea", "--variant", "saliency:stepz=3"], "unknown option 'stepz' of saliency"),
        (["chelsea", "--variant", "gradcam", "-m", "faithfulnes"], "did you mean 'faithfulness'"),
        (["chelsa", "--variant", "gradcam"], "did you mean 'chelsea'"),
        (["missing.zip", "--variant", "gradcam"], "no such zip file"),
        (["chelsea", "--variant", "gradcam", "--batch-size", "0"], "at least 1"),
    ],
)  # fmt: skip
def test_cli_refuses_with_one_line(tmp_path, capsys, arguments, message):
    out = tmp_path / "refused"
    assert main(["study", *arguments, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_cli_refuses_a_folder_without_inputs_and_mixed_sizes_without_resize(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["study", str(empty), "--variant", "gradcam", "--out", str(tmp_path / "a")]) == 2
    assert "no inputs in folder" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (64, 48)).save(mixed / "a.png")
    Image.new("RGB", (40, 40)).save(mixed / "b.png")
    out = tmp_path / "b"
    arguments = ["study", str(mixed), "--variant", "gradcam", "--resize", "none", "--out"]
    assert main([*arguments, str(out)]) == 2
    err = capsys.readouterr().err
    assert "resize 'none'" in err and err.count("\n") == 1
    assert not out.exists()


def test_series_of_a_study_share_one_shape():
    same = [StudyInput("a.npy", np.zeros((5, 2))), StudyInput("b.npy", np.ones((5, 2)))]
    check_sizes(same, "center_crop", "timeseries")
    with pytest.raises(StudyError, match=r"a.npy 5×2, c.npy 6×2"):
        check_sizes([*same, StudyInput("c.npy", np.zeros((6, 2)))], "center_crop", "timeseries")
