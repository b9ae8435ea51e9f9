"""The Python client (explainer.client) against a real server over HTTP: an embedded server with
an API key for inputs of every kind, typed errors and cancelling, and a distributed one whose
Redis is stopped, so that its real 503s are retried until Redis is back. Every array and picture
the client returns is compared with the artifact downloaded with plain httpx."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data

from explainer import (
    ConnectionFailed,
    InvalidRequest,
    JobCancelled,
    NotFound,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from explainer.client import Client
from testkit.stack import ROOT, Api, RedisServer, free_port, service_env

KEY = "client-test-key"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client")
    server = Api(service_env(None, folder / "artifacts", api_keys=KEY), folder)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(api):
    with Client(api.url, api_key=KEY, timeout=30) as c:
        yield c


def download(api: Api, job_id: str, name: str) -> bytes:
    """An artifact fetched with plain httpx, not through the client."""
    response = httpx.get(f"{api.url}/jobs/{job_id}/artifacts/{name}", headers={"X-API-Key": KEY})
    assert response.status_code == 200, response.text
    return response.content


def npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def test_listings(client):
    models = {m.name: m for m in client.models()}
    assert models["efficientnet_lite0"].input_kind == "image"
    assert models["state_gru"].input_kind == "timeseries"
    assert "extremal_mask" in models["state_gru"].methods
    assert "gradcam" not in models["state_gru"].methods
    methods = {m.name: m for m in client.methods()}
    assert methods["gradcam"].family == "cam"
    assert methods["integrated_gradients"].defaults()["steps"] == 50
    assert client.score_meanings()["completeness_gap"].meaning


def test_an_image_as_pil_path_and_array(client, api, tmp_path):
    crop = data.astronaut()[100:324, 150:374].copy()  # 224², so the centre crop keeps it all
    path = tmp_path / "astronaut.png"
    Image.fromarray(crop).save(path)
    from_path = client.explain(path, "saliency", metrics=["pixel_perturbation"])
    from_pil = client.explain(Image.fromarray(data.chelsea()), "gradcam", target="tabby")
    from_array = client.explain(crop.astype(np.float32) / 255, "gradient_x_input")
    for result in (from_path, from_pil, from_array):
        assert result.job.status == "succeeded"
        attribution = npy(download(api, result.id, "attribution.npy"))
        assert np.array_equal(result.attribution, attribution)
        assert result.attribution.dtype == attribution.dtype
        assert np.array_equal(result.heatmap, npy(download(api, result.id, "heatmap.npy")))
        overlay = Image.open(io.BytesIO(download(api, result.id, "overlay.png")))
        assert np.array_equal(np.asarray(result.overlay), np.asarray(overlay))
        assert result.mask is None and result.explanation is None
    # the uploads arrived pixel for pixel: the image as the model saw it is the crop
    assert np.array_equal(np.asarray(from_path.image("input.png")), crop)
    assert np.array_equal(np.asarray(from_array.image("input.png")), crop)
    assert from_path.attribution.shape == (3, 224, 224)
    assert from_pil.prediction.label == "Egyptian cat"
    assert from_pil.prediction.target_label == "tabby"
    assert set(from_path.scores) >= {"pixel_perturbation", "pixel_perturbation_random"}
    page = from_path._repr_html_()
    assert "data:image/png;base64," in page and "pixel_perturbation" in page
    assert client.score_meanings()["pixel_perturbation"].meaning in page
    saved = from_path.save(tmp_path / "saved")
    assert np.array_equal(np.load(saved / "attribution.npy"), from_path.attribution)
    assert json.loads((saved / "job.json").read_text())["id"] == from_path.id
    listed = [job.id for job in client.jobs(limit=10)]
    assert {from_path.id, from_pil.id, from_array.id} <= set(listed)


def test_a_series_as_array_and_csv_with_truth(client, api, tmp_path):
    series = np.random.default_rng(3).normal(size=(100, 3))
    series[10:20, 1] = 0.0  # exact zeros: gradient × input is exactly 0 there
    truth = np.zeros((100, 3), dtype=int)
    truth[40:60, 0] = 1
    result = client.explain(series, "gradient_x_input", model="state_gru", truth=truth)
    attribution = npy(download(api, result.id, "attribution.npy"))
    assert np.array_equal(result.attribution, attribution)
    assert result.attribution.shape == (100, 3)
    assert np.all(result.attribution[10:20, 1] == 0) and np.any(result.attribution[:10] != 0)
    assert {"comprehensiveness", "aup", "auroc"} <= set(result.scores)  # truth arrived
    series_png = Image.open(io.BytesIO(download(api, result.id, "series.png")))
    assert np.array_equal(np.asarray(result.overlay), np.asarray(series_png))
    # the same values as a CSV file are the same input: the server returns the same job
    path = tmp_path / "series.csv"
    np.savetxt(path, series, delimiter=",", fmt="%.17g")
    job = client.submit(path, "gradient_x_input", model="state_gru", truth=truth)
    assert job.reused and job.id == result.id
    # a bundled series with a mask method: the history comes along
    mask = client.explain("state:3", "extremal_mask", {"iterations": 5}, model="state_gru")
    assert mask.history is not None and mask.attribution.shape == (100, 3)
    assert np.array_equal(mask.attribution, npy(download(api, mask.id, "attribution.npy")))


def test_errors_are_typed(client, api):
    with pytest.raises(NotFound) as missing:
        client.get("0" * 32)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(InvalidRequest) as invalid:
        client.submit("chelsea", "no_such_method")
    assert invalid.value.status == 422 and invalid.value.details
    with pytest.raises(InvalidRequest) as kind:
        client.submit("chelsea", "saliency", model="state_gru")
    assert kind.value.code == "wrong_input_kind"
    with Client(api.url, api_key="wrong") as stranger, pytest.raises(Unauthorized) as wrong:
        stranger.jobs()
    assert wrong.value.code == "invalid_api_key"
    with Client(api.url) as anonymous, pytest.raises(Unauthorized) as none:
        anonymous.models()
    assert none.value.code == "missing_api_key"
    with pytest.raises(FileNotFoundError):
        client.submit("no/such/photo.png", "saliency")


def test_a_refused_connection_is_retried_then_typed(caplog):
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.05) as client:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "explainer.client"), pytest.raises(ConnectionFailed):
            client.health()
    assert time.monotonic() - started >= 0.15  # 0.05 + 0.1 of backoff
    assert sum("ConnectError" in r.getMessage() for r in caplog.records) == 2


def test_an_address_without_a_scheme_is_refused_at_once():
    """Client("127.0.0.1:8765") retried five times and raised ConnectionFailed after 15 s."""
    started = time.monotonic()
    for url in ("127.0.0.1:8765", "localhost:8000", "ftp://127.0.0.1", "http://", ""):
        with pytest.raises(ValueError, match="http:// or https://"):
            Client(url)
    with pytest.raises(ValueError, match=re.escape("did you mean 'http://127.0.0.1:8765'")):
        Client("127.0.0.1:8765")
    assert time.monotonic() - started < 1
    with Client("https://explainer.example/api/") as client:
        assert client.url == "https://explainer.example/api"


def test_a_file_that_is_neither_image_nor_series_is_refused_before_sending(tmp_path):
    """A text file was sent as a series and refused as wrong_input_kind; now nothing is sent
    (nothing listens on the port: a request would be a ConnectionFailed)."""
    from explainer.inputs import encode_input

    (tmp_path / "t.txt").write_text("hello world\n")
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "photo.png").write_bytes(b"not a picture")
    (tmp_path / "s.csv").write_text("1,2,3\n4,5,6\n")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.txt", format="JPEG")
    with Client(f"http://127.0.0.1:{free_port()}", retries=0) as client:
        refusals = [("t.txt", "could not convert string 'hello world'"),
                    ("empty.csv", "is empty"), ("photo.png", "Pillow cannot open")]  # fmt: skip
        for name, words in refusals:
            with pytest.raises(ValueError, match=words) as refused:
                client.explain(tmp_path / name, "saliency")
            assert "neither an image" in str(refused.value) and name in str(refused.value)
        with pytest.raises(ValueError, match="holds a series, not an image"):
            client.submit(tmp_path / "s.csv", "saliency", kind="image")

    def unused() -> str:
        raise AssertionError("a file's kind comes from its bytes")

    # what the bytes are decides the field, not the file's name
    assert encode_input(tmp_path / "cat.txt", None, unused).file[0] == "image"
    assert encode_input(tmp_path / "s.csv", None, unused).file[0] == "series"


def test_saving_never_replaces_a_file_unless_asked(tmp_path):
    """result.save(folder) overwrote what the folder held; the CLI refuses unless --overwrite."""
    from explainer import Job, Result

    result = Result(Job.from_json({"id": "j1", "status": "succeeded"}),
                    {"attribution.npy": b"new", "summary.json": b"{}"})  # fmt: skip
    assert result.save(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b" / "attribution.npy").read_bytes() == b"new"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "job.json").write_text("mine")
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"mine already holds job.json; .*overwrite=True"):
        result.save(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["job.json", "notes.txt"]
    result.save(tmp_path / "mine", overwrite=True)
    assert json.loads((tmp_path / "mine" / "job.json").read_text())["id"] == "j1"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        result.save(tmp_path / "file", overwrite=True)


def test_cancel_a_long_job(client):
    # 2000 integration steps, one row per model pass: minutes on a CPU
    job = client.submit("coffee", "integrated_gradients",
                        {"steps": 2000, "internal_batch_size": 1})  # fmt: skip
    try:
        seen: list = []

        class Running(Exception):
            pass

        def progress(view):
            seen.append(view)
            if view.status == "running":
                raise Running

        with pytest.raises(Running):  # the progress long poll: each change as it comes
            client.wait(job, timeout=60, on_progress=progress)
        assert [v.status for v in seen][-1] == "running"
        with pytest.raises(WaitTimeout) as late:
            client.wait(job, timeout=0.5)
        assert late.value.job.status == "running" and late.value.job.id == job.id
    finally:
        cancelled = client.cancel(job)
    assert cancelled.status in ("running", "cancelled")
    ended = client.wait(job, timeout=60)
    assert ended.status == "cancelled"
    assert (ended.progress or {"step": 0})["step"] < 2000
    with pytest.raises(JobCancelled):
        client.result(job)


def test_a_503_is_retried_after_retry_after(tmp_path, caplog):
    """Distributed mode (no worker needed): Redis stopped, every job call is a real 503 with
    Retry-After; the client waits it out, Redis comes back meanwhile, and the submit goes
    through once."""
    redis = RedisServer(tmp_path)
    api = restart = None
    try:
        api = Api(service_env(redis.url, tmp_path / "artifacts"), tmp_path)
        with Client(api.url, retries=0) as impatient, Client(api.url, retries=4) as client:
            redis.stop()
            raw = httpx.get(f"{api.url}/jobs")
            assert raw.status_code == 503 and raw.headers["retry-after"] == "5"
            with pytest.raises(Unavailable) as refused:
                impatient.jobs()
            assert (refused.value.code, refused.value.retry_after) == ("unavailable", 5)
            restart = threading.Thread(target=redis.start)

            def on_response(response: httpx.Response) -> None:  # Redis back after the 1st 503
                if response.status_code == 503 and restart.ident is None:
                    restart.start()

            client.http.event_hooks["response"].append(on_response)
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, "explainer.client"):
                job = client.submit("chelsea", "saliency", idempotency_key="after-503")
            waited = time.monotonic() - started
            assert job.status == "queued" and not job.reused
            assert restart.ident is not None  # the submit met a 503
            assert 5 <= waited < 30, waited  # and waited out its Retry-After
            assert any("503 unavailable" in r.getMessage() for r in caplog.records)
            again = client.submit("chelsea", "saliency", idempotency_key="after-503")
            assert again.reused and again.id == job.id
            assert [j.id for j in client.jobs()] == [job.id]
            assert client.cancel(job).status == "cancelled"
    finally:
        if restart is not None and restart.ident is not None:
            restart.join()
        if api is not None:
            api.stop()
        redis.stop()


def test_waiting_is_a_long_poll(client, api):
    """wait() asks the server to hold the answer: a few requests, not a busy loop."""
    requests: list[httpx.Request] = []
    client.http.event_hooks["request"].append(requests.append)
    job = client.submit("rocket", "integrated_gradients", {"steps": 8})
    view = client.wait(job, timeout=60)
    assert view.status == "succeeded"
    polls = [r for r in requests if r.url.path == f"/jobs/{job.id}"]
    assert 1 <= len(polls) <= 3 and float(polls[0].url.params["wait"]) > 1


def test_the_readme_example_runs(api, tmp_path):
    """The README's Python client example, as written there, against the server."""
    section = (ROOT / "README.md").read_text().split("### Python client", 1)[1]
    script = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert "http://127.0.0.1:8000" in script
    done = subprocess.run(
        [sys.executable, "-c", script.replace("http://127.0.0.1:8000", api.url)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={**os.environ, "EXPLAINER_API_KEY": KEY, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    label, names, series = done.stdout.splitlines()
    assert label == "Egyptian cat (3, 224, 224)"
    assert {"completeness_gap", "pixel_perturbation"} <= set(ast.literal_eval(names))
    assert series == "(100, 3)"
    assert (tmp_path / "out/ig/overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        json.loads((tmp_path / "out/ig/job.json").read_text())["method"] == "integrated_gradients"
    )
