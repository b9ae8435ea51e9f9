"""End to end over real HTTP: a real redis-server, a real Celery worker process, the API process."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import load_sample
from testkit.stack import distributed_stack, wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    with distributed_stack(folder, max_upload_bytes=2_000_000) as api:
        yield api


def png_bytes(name: str = "astronaut") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(load_sample(name)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_saliency_job_and_artifacts(stack):
    answer = stack.client.post("/explain", json={"sample": "chelsea", "method": "saliency"})
    assert answer.status_code == 202, answer.text
    created = answer.json()
    assert created["status"] == "queued" and created["url"].endswith(created["id"])
    view = stack.wait_done(created["id"])
    assert view["status"] == "succeeded", view
    assert view["prediction"]["class_index"] == 285
    assert view["prediction"]["label"] == "Egyptian cat"
    links = view["artifacts"]
    assert set(links) >= {"attribution.npy", "heatmap.npy", "overlay.png", "summary.json"}
    attribution = np.load(io.BytesIO(stack.client.get(links["attribution.npy"]).content))
    assert attribution.shape == (3, 224, 224) and np.abs(attribution).sum() > 0
    overlay = stack.client.get(links["overlay.png"])
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (224, 224)
    summary = stack.client.get(links["summary.json"]).json()
    assert summary["metadata"]["seed"] == 0 and summary["method"] == "saliency"


def test_progress_is_reported_while_running(stack):
    request = {"sample": "coffee", "method": "integrated_gradients",
               "options": {"steps": 48, "internal_batch_size": 2}}  # fmt: skip
    created = stack.client.post("/explain", json=request).json()
    seen = [created["status"]]
    progress = []

    def finished():
        view = stack.client.get(f"/jobs/{created['id']}").json()
        seen.append(view["status"])
        if view["status"] == "running" and view["progress"]:
            progress.append(view["progress"]["step"])
        return view["status"] in ("succeeded", "failed", "cancelled") and view

    view = wait_for(finished, 120, "the IG job", interval=0.05)
    assert view["status"] == "succeeded"
    states = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert states == ["queued", "running", "succeeded"] or states == ["queued", "succeeded"]
    assert "running" in states and progress, (states, progress)
    assert all(0 < p <= 48 for p in progress) and progress == sorted(progress)
    assert view["progress"] == {"step": 48, "total": 48}
    # Completeness by hand from the downloaded attribution: Σ IG − (S(x) − S(x')) is the gap.
    attribution = np.load(
        io.BytesIO(stack.client.get(view["artifacts"]["attribution.npy"]).content)
    )
    scores = view["scores"]
    assert float(attribution.astype(np.float64).sum()) - scores["score_difference"] == (
        pytest.approx(scores["completeness_gap"], abs=1e-4 * abs(scores["score_difference"]))
    )


def test_mask_method_job_reports_loss_and_writes_mask_artifacts(stack):
    request = {"sample": "chelsea", "method": "waveletx", "options": {
        "iterations": 6, "noise_samples": 4, "image_size": 64, "init": "startgrad"},
        "metrics": ["cp_startgrad", {"name": "faithfulness", "steps": 5},
                    {"name": "iterations_to_target", "target": 1e-3}]}  # fmt: skip
    created = stack.client.post("/explain", json=request).json()
    progress = []

    def finished():
        view = stack.client.get(f"/jobs/{created['id']}").json()
        if view["status"] == "running" and view["progress"]:
            progress.append(view["progress"])
        return view["status"] in ("succeeded", "failed", "cancelled") and view

    view = wait_for(finished, 120, "the WaveletX job", interval=0.02)
    assert view["status"] == "succeeded", view
    assert view["progress"]["step"] == 6 and "loss" in view["progress"]
    scores = view["scores"]
    assert 0 <= scores["mask_mean"] <= 1 and scores["iterations"] == 6
    assert scores["cp_pixel_sg"] > 0 and scores["retained_probability_sg"] >= 0
    assert scores["faithfulness"] == scores["auc_remove_top"] - scores["auc_keep_top"]
    links = view["artifacts"]
    assert {"mask.npz", "explanation.png", "history.json"} <= set(links)
    masks = np.load(io.BytesIO(stack.client.get(links["mask.npz"]).content))
    assert masks["group0"].shape == (6, 6)  # the yl band of a 5-level db3 DWT at 64×64
    history = stack.client.get(links["history.json"]).json()
    assert len(history["loss"]) == 7 and len(history["cp_pixel_sg"]) == 7
    # iterations_to_target from the downloaded history: the first step with CP-pixel ≥ 1e-3.
    # The target is one this run crosses after step 0 (CP-pixel rises from ~1e-6 to ~4e-3 at
    # 64²), so the first crossing differs from the last and from "never reached".
    reached = [i for i, value in enumerate(history["cp_pixel_sg"]) if value >= 1e-3]
    assert reached and 0 < reached[0] < reached[-1], history["cp_pixel_sg"]
    assert scores["iterations_to_target"] == reached[0]
    assert scores["target_reached"] == 1.0
    summary = stack.client.get(links["summary.json"]).json()
    recorded = {m["name"]: m for m in summary["metadata"]["metrics"]}
    assert recorded["faithfulness"]["parameters"] == {"steps": 5, "noise_samples": 1}
    assert "StartGrad" in recorded["cp_startgrad"]["definition"]
    assert np.load(io.BytesIO(stack.client.get(links["attribution.npy"]).content)).shape == (
        1, 64, 64,
    )  # fmt: skip


def test_multipart_and_base64_uploads_give_the_same_result(stack):
    data = png_bytes()
    request = {"method": "gradcam", "target": "analog clock"}
    multipart = stack.client.post(
        "/explain", files={"image": ("a.png", data, "image/png")},
        data={"request": json.dumps(request)},
    )  # fmt: skip
    assert multipart.status_code == 202, multipart.text
    first = stack.wait_done(multipart.json()["id"])
    assert first["status"] == "succeeded" and first["prediction"]["target"] == 409
    again = stack.client.post(
        "/explain", json={**request, "image": base64.b64encode(data).decode()}
    )
    assert again.status_code == 200 and again.json()["reused"]
    assert again.json()["id"] == first["id"]


def test_reuse_and_idempotency_keys(stack):
    request = {"sample": "rocket", "method": "gradient_x_input", "seed": 3}
    first = stack.client.post("/explain", json=request).json()
    stack.wait_done(first["id"])
    same = stack.client.post("/explain", json=request)
    assert same.status_code == 200 and same.json()["id"] == first["id"]
    fresh = stack.client.post("/explain", json={**request, "reuse": False})
    assert fresh.status_code == 202 and fresh.json()["id"] != first["id"]
    keyed = stack.client.post("/explain", json={**request, "seed": 4, "idempotency_key": "k-1"})
    repeat = stack.client.post("/explain", json={**request, "seed": 4, "idempotency_key": "k-1"})
    assert repeat.json()["id"] == keyed.json()["id"]
    stack.wait_done(fresh.json()["id"])
    stack.wait_done(keyed.json()["id"])


def test_cancel_queued_and_running_jobs(stack):
    slow = {"sample": "astronaut", "method": "integrated_gradients",
            "options": {"steps": 400, "internal_batch_size": 2}, "reuse": False}  # fmt: skip
    running = stack.client.post("/explain", json=slow).json()
    wait_for(
        lambda: (v := stack.client.get(f"/jobs/{running['id']}").json())["progress"] and v,
        60, "the slow job to start",
    )  # fmt: skip
    queued = stack.client.post("/explain", json={**slow, "seed": 1}).json()
    assert stack.client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"
    cancelled = stack.client.delete(f"/jobs/{queued['id']}").json()
    assert cancelled["status"] == "cancelled"
    stopping = stack.client.delete(f"/jobs/{running['id']}")
    assert stopping.status_code == 200
    view = stack.wait_done(running["id"], timeout=60)
    assert view["status"] == "cancelled"
    assert view["progress"]["step"] < 400
    # The worker is free again; the cancelled queued job never ran.
    after = stack.client.post("/explain", json={"sample": "chelsea", "method": "saliency",
                                                "seed": 9}).json()  # fmt: skip
    assert stack.wait_done(after["id"])["status"] == "succeeded"
    never = stack.client.get(f"/jobs/{queued['id']}").json()
    assert never["status"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None


def test_listings_health_and_metrics(stack):
    methods = stack.client.get("/methods").json()
    cams = {m["name"] for m in methods if m["family"] == "cam"}
    assert cams == {"gradcam", "gradcam_plusplus", "xgradcam", "hirescam", "layercam",
                    "scorecam", "eigencam", "guided_gradcam"}  # fmt: skip
    scorecam = next(m for m in methods if m["name"] == "scorecam")
    assert scorecam["options_schema"]["properties"]["batch_size"]["maximum"] == 1024
    ig = next(m for m in methods if m["name"] == "integrated_gradients")
    assert ig["options_schema"]["properties"]["steps"]["minimum"] == 1
    models = stack.client.get("/models").json()
    assert models[0]["name"] == "efficientnet_lite0"
    quality = {m["name"]: m for m in stack.client.get("/quality-metrics").json()}
    assert set(quality) == {"cp_shearletx", "cp_startgrad", "hallucination", "faithfulness",
                            "iterations_to_target", "degradation", "pixel_perturbation",
                            "sensitivity_n"}  # fmt: skip
    assert quality["hallucination"]["options_schema"]["properties"]["threshold"]["default"] == 0.1
    health = stack.client.get("/health").json()
    assert health == {"status": "ok", "mode": "distributed", "redis": True, "store": True,
                      "workers": 1, "device": "cpu", "warm_models": ["efficientnet_lite0"],
                      "warm_by_device": {"cpu": ["efficientnet_lite0"]}}  # fmt: skip
    succeeded = stack.metric("explainer_jobs_total", state="succeeded")
    assert succeeded is not None and succeeded >= 1
    assert stack.metric("explainer_queue_length") == 0
    assert stack.metric("explainer_job_duration_seconds_count") >= succeeded


def test_an_artifact_of_the_local_store_has_its_length_and_byte_ranges(stack):
    """Served as a file (a client can resume a download); S3 objects stream with their length
    (tests/test_s3_stack.py)."""
    job = stack.client.post("/explain", json={"sample": "chelsea", "method": "saliency"}).json()
    link = stack.wait_done(job["id"])["artifacts"]["attribution.npy"]
    whole = stack.client.get(link)
    assert whole.headers["content-length"] == str(len(whole.content)) and whole.headers["etag"]
    part = stack.client.get(link, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == whole.content[10:20]


def test_unknown_job_and_artifact(stack):
    missing = stack.client.get("/jobs/doesnotexist")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    job = stack.client.post("/explain", json={"sample": "chelsea", "method": "saliency"}).json()
    stack.wait_done(job["id"])
    for name in ("nothing.npy", "..%2Finput.bin", "input.bin"):
        assert stack.client.get(f"/jobs/{job['id']}/artifacts/{name}").status_code == 404


def fetch_npy(stack, link: str) -> np.ndarray:
    return np.load(io.BytesIO(stack.client.get(link).content), allow_pickle=False)


def test_time_series_job_on_a_bundled_sample_has_white_box_scores(stack):
    """state:3 on the bundled GRU: ExtremalMask's T×D attribution, the series picture, and the
    scores against the sample's ground truth, equal to white_box computed here."""
    from engine.data.timeseries import series_sample
    from engine.metrics.timeseries import white_box

    request = {"model": "state_gru", "sample": "state:3", "method": "extremal_mask",
               "options": {"iterations": 60}}  # fmt: skip
    created = stack.client.post("/explain", json=request)
    assert created.status_code == 202, created.text
    view = stack.wait_done(created.json()["id"])
    assert view["status"] == "succeeded", view
    links = view["artifacts"]
    assert set(links) == {"attribution.npy", "series.png", "history.json", "summary.json"}
    attribution = fetch_npy(stack, links["attribution.npy"])
    series, truth = series_sample("state:3")
    assert attribution.shape == tuple(series.shape) == (100, 3)
    picture = Image.open(io.BytesIO(stack.client.get(links["series.png"]).content))
    picture.load()
    assert picture.width > 0
    expected = white_box(torch.from_numpy(attribution)[None], truth[None])
    for key in ("aup", "aur", "information", "entropy", "auroc", "auprc"):
        assert view["scores"][key] == pytest.approx(expected[key], rel=1e-6), key
    assert view["scores"]["auroc"] > 0.5  # the mask finds the salient features better than chance
    summary = stack.client.get(links["summary.json"]).json()
    assert summary["scores"]["aup"] == view["scores"]["aup"]


def test_time_series_job_on_an_uploaded_npy(stack):
    """A .npy series file with a gradient method: S = Σ_t z_t's gradient, T × D."""
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(1).normal(size=(25, 3)).astype(np.float32))
    request = {"model": "state_gru", "method": "integrated_gradients", "options": {"steps": 8}}
    created = stack.client.post("/explain", files={"series": ("s.npy", buffer.getvalue())},
                                data={"request": json.dumps(request)})  # fmt: skip
    assert created.status_code == 202, created.text
    view = stack.wait_done(created.json()["id"])
    assert view["status"] == "succeeded", view
    assert fetch_npy(stack, view["artifacts"]["attribution.npy"]).shape == (25, 3)
    assert "completeness_gap" in view["scores"]


def test_time_series_job_on_an_uploaded_csv_has_no_white_box_scores(stack):
    """A CSV series (40 steps × 3 features) without truth: the black-box scores only."""
    rows = np.random.default_rng(0).normal(size=(40, 3))
    csv = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows).encode()
    request = {"model": "state_gru", "method": "extremal_mask", "options": {"iterations": 30}}
    created = stack.client.post("/explain", files={"series": ("s.csv", csv, "text/csv")},
                                data={"request": json.dumps(request)})  # fmt: skip
    assert created.status_code == 202, created.text
    view = stack.wait_done(created.json()["id"])
    assert view["status"] == "succeeded", view
    assert fetch_npy(stack, view["artifacts"]["attribution.npy"]).shape == (40, 3)
    assert {"comprehensiveness", "sufficiency"} <= set(view["scores"])
    assert not {"aup", "aur", "auroc", "auprc"} & set(view["scores"])
