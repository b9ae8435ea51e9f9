"""What the web page needs from the API, over HTTP from the embedded server with the bundled
models: the score glossary (complete for every key a result can hold), the bundled samples and
their thumbnails, a model's labels, the long poll of progress (``since``), the input picture of
a result, and the page itself (every module it imports is served; nothing comes from elsewhere).
"""

from __future__ import annotations

import io
import re
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from engine.catalogue import all_metrics
from engine.data import SAMPLES, load_sample
from engine.data.timeseries import SERIES_SAMPLES
from engine.metrics.gad import gad_scores
from engine.metrics.glossary import SCORES
from engine.models import MODELS
from service.routes.web import WEB_DIR
from testkit.stack import Api, service_env
from tests.tiny_models import tiny_cnn


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-api")
    api = Api(service_env(None, folder / "artifacts"), folder)
    yield api.client
    api.stop()


def finished(client: httpx.Client, body: dict) -> dict:
    created = client.post("/explain", json=body)
    assert created.status_code in (200, 202), created.text
    job = client.get(f"/jobs/{created.json()['id']}", params={"wait": 60}).json()
    assert job["status"] == "succeeded", job["error"]
    return job


@pytest.mark.parametrize(
    "body",
    [
        {"sample": "chelsea", "method": "integrated_gradients", "options": {"steps": 4}},
        {"sample": "chelsea", "method": "waveletx", "options": {"iterations": 2,
                                                                "noise_samples": 1}},
        {"sample": "state:3", "model": "state_gru", "method": "extremal_mask",
         "options": {"iterations": 2}},
    ],
    ids=["gradient", "image-mask", "series-mask"],
)  # fmt: skip
def test_every_score_a_job_writes_is_in_the_glossary(client, body):
    job = finished(client, body)
    glossary = client.get("/scores").json()
    assert job["scores"] and set(job["scores"]) <= set(glossary)
    for key in job["scores"]:
        assert glossary[key]["meaning"] and glossary[key]["better"] in ("higher", "lower", None)


def test_every_metric_and_gad_score_is_in_the_glossary():
    declared = {key for metric in all_metrics() for key in metric.keys}
    x = torch.rand(2, 3, 16, 16)
    masks = torch.rand(2, 2, 16, 16) > 0.5
    written = gad_scores(tiny_cnn().eval(), x, torch.tensor([0, 1]), masks[:, 0], masks[:, 1])
    missing = (declared | set(written)) - set(SCORES)
    assert not missing, missing


def test_samples_list_both_kinds_and_thumbnails_are_small_photographs(client):
    samples = client.get("/samples").json()
    assert [s["name"] for s in samples] == [*SAMPLES, *SERIES_SAMPLES]
    chelsea = next(s for s in samples if s["name"] == "chelsea")
    response = client.get(chelsea["thumbnail"])
    assert response.headers["content-type"] == "image/png"
    thumbnail = np.asarray(Image.open(io.BytesIO(response.content)))
    original = load_sample("chelsea")
    assert max(thumbnail.shape[:2]) == 160
    assert thumbnail.shape[0] / thumbnail.shape[1] == pytest.approx(
        original.shape[0] / original.shape[1], abs=0.01
    )
    # the same photograph, smaller: its mean colour is the original's
    assert np.abs(thumbnail.mean((0, 1)) - original.mean((0, 1))).max() < 2
    assert all(s["thumbnail"] is None for s in samples if s["kind"] == "timeseries")
    assert client.get("/samples/nothing/thumbnail.png").status_code == 404


def test_labels_of_a_model(client):
    labels = client.get("/models/efficientnet_lite0/labels").json()
    assert labels == list(MODELS["efficientnet_lite0"].labels)
    assert len(labels) == 1000 and labels[285] == "Egyptian cat"
    assert client.get("/models/state_gru/labels").json() == ["step negative", "step positive"]
    missing = client.get("/models/no_such_model/labels")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_long_poll_answers_at_each_change_of_progress(client):
    created = client.post("/explain", json={
        "sample": "chelsea", "method": "waveletx", "reuse": False,
        "options": {"iterations": 12, "noise_samples": 4}}).json()  # fmt: skip
    job_id, since, seen, started = created["id"], "queued:", [], time.monotonic()
    while True:
        asked = time.monotonic()
        job = client.get(f"/jobs/{job_id}", params={"wait": 30, "since": since}).json()
        state = f"{job['status']}:{job['progress']['step'] if job['progress'] else ''}"
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            assert state != since  # it answered because something changed, not on time-out
            assert time.monotonic() - asked < 29
        seen.append(state)
        if job["status"] == "succeeded":
            break
        since = state
        assert time.monotonic() - started < 120
    steps = [int(s.split(":")[1]) for s in seen if s.startswith("running:") and s[8:]]
    assert len(steps) >= 2 and steps == sorted(steps)  # several progress answers, in order
    # without since, wait means "until it ends", as before
    job = client.get(f"/jobs/{job_id}", params={"wait": 1}).json()
    assert job["status"] == "succeeded"


def test_image_results_carry_the_input_as_the_model_saw_it(client):
    job = finished(client, {"sample": "chelsea", "method": "saliency"})
    picture = Image.open(io.BytesIO(client.get(job["artifacts"]["input.png"]).content))
    assert picture.size == (224, 224) and picture.mode == "RGB"
    # centre crop of the photograph, resized: the same mean colour up to resampling
    assert np.abs(np.asarray(picture).mean((0, 1)) - load_sample("chelsea").mean((0, 1))).max() < 12


def test_the_page_and_every_module_it_imports_are_served_and_local(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    served = {"/ui/js/main.js", "/ui/style.css"}
    assert all(path in page.text for path in served)
    files = sorted(WEB_DIR.rglob("*.*"))
    for path in files:
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path  # no CDN, no fonts
        for target in re.findall(r'from "(\.{1,2}/[^"]+)"', text):
            resolved = (path.parent / target).resolve()
            assert resolved.exists(), f"{path.name} imports missing {target}"
    for path in files:
        url = "/ui/" + path.relative_to(WEB_DIR).as_posix()
        response = client.get(url)
        assert response.status_code == 200, url
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not an API route
