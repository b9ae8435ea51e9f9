"""Names a person gets wrong, and scores a person can judge: the engine's one "did you mean"
rule (engine.catalogue.close_names) as the API answers it, and each score beside its random
baseline (engine.metrics.glossary.score_baselines) in GET /scores, the job JSON and
summary.json, from a real degradation job over HTTP."""

from __future__ import annotations

import math

import pytest

from engine.catalogue import METHODS, all_metrics, close_names
from engine.metrics.glossary import BASELINES, SCORES, score_baselines
from testkit.stack import Api, service_env


def test_close_names_forgive_case_dashes_and_typos():
    assert close_names("saliancy", METHODS) == ["saliency"]
    assert close_names("Grad-CAM", METHODS)[0] == "gradcam"
    assert close_names("integrated-gradients", METHODS) == ["integrated_gradients"]
    assert close_names("gradcamplusplus", METHODS)[0] == "gradcam_plusplus"
    assert close_names("zzzz", METHODS) == []


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # lower is better (MoRF, pixel perturbation): worse when above the baseline
        ({"degradation_morf": 0.5, "degradation_random": 0.4}, {"degradation_morf": True}),
        ({"degradation_morf": 0.3, "degradation_random": 0.4}, {"degradation_morf": False}),
        ({"pixel_perturbation": 0.2, "pixel_perturbation_random": 0.1},
         {"pixel_perturbation": True}),
        # higher is better (LeRF): worse when below the baseline
        ({"degradation_lerf": 0.3, "degradation_random": 0.4}, {"degradation_lerf": True}),
        ({"degradation_lerf": 0.5, "degradation_random": 0.4}, {"degradation_lerf": False}),
        # equal is not worse
        ({"degradation_morf": 0.4, "degradation_random": 0.4}, {"degradation_morf": False}),
    ],
)  # fmt: skip
def test_worse_than_the_baseline_follows_the_direction(scores, expected):
    found = score_baselines(scores)
    assert {key: entry["worse"] for key, entry in found.items()} == expected
    for key, entry in found.items():
        assert entry["baseline"] == BASELINES[key] and entry["value"] == scores[BASELINES[key]]


def test_no_verdict_without_both_values():
    scores = {"degradation_morf": None, "degradation_lerf": 0.5, "degradation_random": 0.4}
    found = score_baselines(scores)
    assert found["degradation_morf"] == {"baseline": "degradation_random", "value": 0.4}
    assert found["degradation_lerf"]["worse"] is False
    undefined = score_baselines({"pixel_perturbation": 0.1, "pixel_perturbation_random": math.nan})
    assert undefined == {"pixel_perturbation": {"baseline": "pixel_perturbation_random",
                                                "value": None}}  # fmt: skip
    assert score_baselines({"degradation_morf": 0.2}) == {}  # the counterpart was not computed
    assert score_baselines({"faithfulness": 0.2, "hallucination": 0.1}) == {}


def test_every_baseline_pair_is_one_metrics_and_graded():
    """Each declared pair is written by one metric; the score has a direction, its baseline
    none (it is the reference); and every metric key named *_random is someone's baseline."""
    keys_of = {key: metric.name for metric in all_metrics() for key in metric.keys}
    for score, baseline in BASELINES.items():
        assert keys_of[score] == keys_of[baseline], score
        assert SCORES[score][1] in ("higher", "lower") and SCORES[baseline][1] is None
    randoms = {key for key in keys_of if key.endswith("_random")}
    assert randoms == set(BASELINES.values())
    assert "p(x̃)/p(x)" in SCORES["retained_probability"][0]
    assert "above 1" in SCORES["retained_probability"][0]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    server = Api(service_env(None, folder / "artifacts"), folder)
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("body", "code", "typed", "meant"),  # an unknown metric keeps its code, invalid_metric
    [
        ({"sample": "chelsea", "method": "saliancy"}, "unknown_method", "saliancy", "saliency"),
        ({"sample": "chelsea", "method": "Grad-CAM"}, "unknown_method", "Grad-CAM", "gradcam"),
        ({"sample": "chelsea", "method": "saliency", "model": "efficientnet_lite"},
         "unknown_model", "efficientnet_lite", "efficientnet_lite0"),
        ({"sample": "chelsea", "method": "saliency", "metrics": ["halucination"]},
         "invalid_metric", "halucination", "hallucination"),
        ({"sample": "chelsea", "method": "saliency", "metrics": [{"name": "degredation"}]},
         "invalid_metric", "degredation", "degradation"),
    ],
)  # fmt: skip
def test_unknown_names_get_the_closest_ones(api, body, code, typed, meant):
    response = api.client.post("/explain", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    kind = next(k for k in ("method", "model", "metric") if k in code)
    assert error["message"].startswith(f"unknown {kind} {typed!r}; did you mean ")
    assert repr(meant) in error["message"] and "…" not in error["message"]
    assert meant in error["details"][0]["suggestions"]


def test_an_unknown_name_with_nothing_close_lists_the_known_ones(api):
    response = api.client.post("/explain", json={"sample": "chelsea", "method": "qqqq"})
    error = response.json()["error"]
    assert response.status_code == 422 and error["code"] == "unknown_method"
    assert "did you mean" not in error["message"]
    assert all(name in error["message"] for name in METHODS)
    assert error["details"][0]["suggestions"] == []


def test_a_real_degradation_job_is_judged_against_its_random_baseline(api):
    """Grad-CAM with the degradation and pixel-perturbation metrics: the job JSON and its
    summary.json carry ``baselines``, whose verdict is the comparison of the two scores."""
    glossary = api.client.get("/scores").json()
    assert glossary["degradation_morf"]["baseline"] == "degradation_random"
    assert glossary["pixel_perturbation"]["baseline"] == "pixel_perturbation_random"
    assert glossary["degradation_random"]["baseline"] is None
    body = {"sample": "chelsea", "method": "gradcam",
            "metrics": [{"name": "degradation", "patch": 16}, "pixel_perturbation"]}  # fmt: skip
    created = api.client.post("/explain", json=body)
    assert created.status_code == 202, created.text
    job = api.wait_done(created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    scores, baselines = job["scores"], job["baselines"]
    random_auc = scores["degradation_random"]
    assert baselines["degradation_morf"] == {
        "baseline": "degradation_random", "value": random_auc,
        "worse": scores["degradation_morf"] > random_auc,
    }  # fmt: skip
    assert baselines["degradation_lerf"]["worse"] == (scores["degradation_lerf"] < random_auc)
    assert baselines["pixel_perturbation"]["worse"] == (
        scores["pixel_perturbation"] > scores["pixel_perturbation_random"]
    )
    assert set(baselines) == {"degradation_morf", "degradation_lerf", "pixel_perturbation"}
    summary = api.client.get(job["artifacts"]["summary.json"]).json()
    assert summary["baselines"] == baselines
