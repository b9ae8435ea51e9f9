"""The thin service over real HTTP, in both modes (a real redis-server and Celery worker, and the
embedded server): a job is done once its arrays are stored and its PNG pictures are drawn when
first asked for, equal to what the engine's renderer draws from the job's own arrays; a long
poll answers with the final state once the job finishes."""

from __future__ import annotations

import io
import os
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.data import load_image
from engine.render import heatmap_image, image_from_tensor, overlay_image, png_bytes
from testkit.stack import Api, distributed_stack, service_env


@pytest.fixture(scope="module", params=["distributed", "embedded"])
def stack(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "distributed":
        with distributed_stack(folder) as api:
            yield api
    else:
        api = Api(service_env(None, folder / "artifacts", embedded_workers=2), folder)
        try:
            yield api
        finally:
            api.stop()


def long_poll(stack: Api, job_id: str, **params) -> dict:
    answer = stack.client.get(f"/jobs/{job_id}", params={"wait": 60, **params}, timeout=90)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_pictures_are_drawn_when_first_asked_for_as_the_engine_draws_them(stack):
    request = {"sample": "astronaut", "method": "saliency",
               "options": {"heatmap_reduction": "signed_sum"}}  # fmt: skip
    job_id = stack.client.post("/explain", json=request).json()["id"]
    view = long_poll(stack, job_id)
    assert view["status"] == "succeeded", view
    links = view["artifacts"]
    assert {"heatmap.png", "overlay.png", "input.png", "heatmap.npy"} <= set(links)
    assert stack.client.get(f"/jobs/{job_id}/artifacts/.pictures.npz").status_code == 404
    # The engine's renderer on the job's own arrays and input, here.
    heatmap = np.load(io.BytesIO(stack.client.get(links["heatmap.npy"]).content))
    signed = stack.client.get(links["summary.json"]).json()["heatmap_colours"]["signed"]
    assert signed  # a signed saliency map: the diverging colours and their overlay
    image = load_image("astronaut", (224, 224), "center_crop")[0].numpy()
    expected = {"heatmap.png": heatmap_image(heatmap, signed=signed),
                "overlay.png": overlay_image(image, heatmap, signed=signed),
                "input.png": image_from_tensor(image)}  # fmt: skip
    for name, picture in expected.items():
        first = stack.client.get(links[name])
        assert first.status_code == 200 and first.headers["content-type"] == "image/png"
        decoded = Image.open(io.BytesIO(first.content))
        assert decoded.format == "PNG" and decoded.size == (224, 224)
        assert first.content == png_bytes(picture), name
        assert stack.client.get(links[name]).content == first.content  # stored, served again
    bundle = stack.client.get(f"/jobs/{job_id}/bundle.zip")
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        assert set(archive.namelist()) == {*links, "job.json"}
        assert archive.read("overlay.png") == png_bytes(expected["overlay.png"])


def test_a_bundle_asked_for_first_draws_the_pictures(stack):
    job_id = stack.client.post("/explain", json={"sample": "coffee", "method": "gradcam"})
    view = long_poll(stack, job_id.json()["id"])
    assert view["status"] == "succeeded", view
    bundle = stack.client.get(f"/jobs/{view['id']}/bundle.zip")
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        assert set(archive.namelist()) == {*view["artifacts"], "job.json"}
        overlay = archive.read("overlay.png")
    assert Image.open(io.BytesIO(overlay)).size == (224, 224)
    assert stack.client.get(view["artifacts"]["overlay.png"]).content == overlay


def test_a_long_poll_answers_with_the_final_state_when_the_job_finishes(stack):
    request = {"sample": "rocket", "method": "integrated_gradients", "reuse": False,
               "options": {"steps": 32, "internal_batch_size": 4}}  # fmt: skip
    created = stack.client.post("/explain", json=request).json()
    begin = time.monotonic()
    moved = long_poll(stack, created["id"], since="queued:")  # any news: running or done
    assert moved["status"] in ("running", "succeeded"), moved
    view = long_poll(stack, created["id"])
    assert time.monotonic() - begin < 50  # answered at the finish, not at the end of its wait
    assert view["status"] == "succeeded", view
    assert view["progress"] == {"step": 32, "total": 32} and view["scores"]
    again = long_poll(stack, created["id"])  # a finished job answers at once
    assert again["status"] == "succeeded" and again["progress"] == view["progress"]


def test_jobs_that_run_at_once_share_the_cpus(stack, request):
    """The Celery worker here has one pool process, the embedded server two job threads: each
    job runs with the CPUs // jobs at once as torch's threads, and its summary records them."""
    jobs_at_once = 2 if request.node.callspec.params["stack"] == "embedded" else 1
    job_id = stack.client.post("/explain", json={"sample": "chelsea", "method": "saliency"})
    view = long_poll(stack, job_id.json()["id"])
    assert view["status"] == "succeeded", view
    summary = stack.client.get(view["artifacts"]["summary.json"]).json()
    cpus = len(os.sched_getaffinity(0))
    assert summary["metadata"]["cpu_threads"] == max(1, cpus // jobs_at_once)
