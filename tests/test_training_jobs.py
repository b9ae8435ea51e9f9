"""Training jobs over real HTTP with a real redis-server and Celery worker: an explanation that
needs a trained set is refused until POST /patterns or POST /support-sets has made it, then it
runs; the sets are listed, and bad training requests get their 4xx."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.data import load_sample
from testkit.stack import Api, distributed_stack, wait_for

PGIG = {"sample": "chelsea", "method": "pattern_guided_ig", "options": {"steps": 4}}
GAD = {"sample": "chelsea", "method": "gad", "target": 285, "options": {"classes": [285, 967]}}


def zipped(names: list[str], extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            png = io.BytesIO()
            Image.fromarray(load_sample(name)).save(png, format="PNG")
            archive.writestr(f"photos/{name}.png", png.getvalue())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("training")
    for name, photos in (("cats", ["chelsea"]), ("things", ["coffee", "rocket"])):
        (folder / name).mkdir()
        for photo in photos:
            Image.fromarray(load_sample(photo)).save(folder / name / f"{photo}.png")
    offered = f"cats={folder / 'cats'};things={folder / 'things'}"
    with distributed_stack(folder, max_training_epochs=3, training_sets=offered,
                           max_training_upload_bytes=3_000_000) as api:  # fmt: skip
        yield api


def support_request(api: Api, request: dict, images_a: bytes, images_b: bytes):
    return api.client.post(
        "/support-sets", data={"request": json.dumps(request)},
        files={"images_a": ("a.zip", images_a), "images_b": ("b.zip", images_b)},
    )  # fmt: skip


def test_pattern_set_made_over_the_api_then_used(stack):
    refused = stack.client.post("/explain", json=PGIG)
    assert refused.status_code == 422 and "POST /patterns" in refused.json()["error"]["message"]
    created = stack.client.post("/patterns", json={"model": "efficientnet_lite0"})
    assert created.status_code == 202, created.text
    view = stack.wait_done(created.json()["id"], timeout=180)
    assert view["status"] == "succeeded", view
    assert view["scores"] == {"images": 16, "layers": 50}
    assert view["progress"] == {"step": 16, "total": 16}
    (listed,) = stack.client.get("/patterns").json()
    assert listed["model"] == "efficientnet_lite0" and listed["job"] == view["id"]
    explained = stack.client.post("/explain", json=PGIG)
    assert explained.status_code == 202, explained.text
    assert stack.wait_done(explained.json()["id"])["status"] == "succeeded"


def test_support_set_made_from_uploaded_images_then_used(stack):
    refused = stack.client.post("/explain", json=GAD)
    assert refused.status_code == 422
    assert "POST /support-sets" in refused.json()["error"]["message"]
    request = {"class_a": "Egyptian cat", "class_b": 967, "epochs": 1}
    created = support_request(stack, request, zipped(["chelsea", "astronaut"]),
                              zipped(["coffee", "rocket"], {"notes.txt": b"skipped"}))  # fmt: skip
    assert created.status_code == 202, created.text
    view = stack.wait_done(created.json()["id"], timeout=180)
    assert view["status"] == "succeeded", view
    assert view["scores"] == {"images": 4, "networks": 4}
    (listed,) = [s for s in stack.client.get("/support-sets").json() if s["job"] == view["id"]]
    assert listed["classes"] == [285, 967] and listed["images"] == 4
    explained = stack.client.post("/explain", json=GAD)
    assert explained.status_code == 202, explained.text
    assert stack.wait_done(explained.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("request_body", "files", "status", "words"),
    [
        ({"class_a": 285, "class_b": 285, "epochs": 1}, ("ok", "ok"), 422, "two different"),
        ({"class_a": 285, "class_b": 967, "epochs": 50}, ("ok", "ok"), 422, "limit 3"),
        ({"class_a": 285, "class_b": "no such", "epochs": 1}, ("ok", "ok"), 422, "no such"),
        ({"class_a": 285, "class_b": 967, "epochs": 1}, ("ok", "empty"), 422, "no PNG, JPEG"),
        ({"class_a": 285, "class_b": 967, "epochs": 1}, ("ok", "not-zip"), 422, "not a zip"),
        ({"class_a": 285, "class_b": 967, "epochs": 1}, ("ok", "large"), 413,
         "images_b above 3000000 bytes"),
        ({"class_a": 285, "class_b": 967, "model": "state_gru", "epochs": 1}, ("ok", "ok"), 422,
         "not an image model"),
    ],
    ids=["same-class", "epochs", "label", "no-images", "not-zip", "large-zip", "series-model"],
)  # fmt: skip
def test_bad_support_set_requests(stack, request_body, files, status, words):
    noise = np.random.default_rng(0).bytes(3_200_000)  # does not compress
    archives = {"ok": zipped(["chelsea"]), "empty": zipped([], {"a.txt": b"x"}),
                "not-zip": b"plain bytes", "large": zipped([], {"big.png": noise})}  # fmt: skip
    response = support_request(stack, request_body, *(archives[f] for f in files))
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_support_set_from_image_folders_the_server_offers(stack):
    """JSON body naming two folders of EXPLAINER_TRAINING_SETS instead of uploading zips."""
    request = {"class_a": 285, "class_b": 504, "images_a": "cats", "images_b": "things",
               "epochs": 1}  # fmt: skip
    created = stack.client.post("/support-sets", json=request)
    assert created.status_code == 202, created.text
    view = stack.wait_done(created.json()["id"], timeout=180)
    assert view["status"] == "succeeded", view
    assert view["scores"]["images"] == 3
    unknown = stack.client.post("/support-sets", json=request | {"images_b": "/etc"})
    assert unknown.status_code == 422
    assert "offered: samples, cats, things" in unknown.json()["error"]["message"]
    patterns = stack.client.post("/patterns", json={"images": "nope"})
    assert patterns.status_code == 422 and "no image set 'nope'" in patterns.text


def test_a_training_job_reports_progress_and_can_be_cancelled(stack):
    """A support-set job reports every epoch of every network; DELETE stops it at the next."""
    photos = ["chelsea", "astronaut", "coffee", "rocket", "camera", "coins", "clock", "moon"]
    request = {"class_a": 285, "class_b": 504, "epochs": 3}
    created = support_request(stack, request, zipped(photos), zipped(photos[::-1]))
    assert created.status_code == 202, created.text
    job = created.json()["id"]
    first = wait_for(lambda: stack.client.get(f"/jobs/{job}").json()["progress"], 120,
                     "the first epoch")  # fmt: skip
    assert first["total"] == 4 * 3 and "loss" in first and "alpha" in first
    stack.client.delete(f"/jobs/{job}")
    view = stack.wait_done(job, timeout=120)
    assert view["status"] == "cancelled", view
    assert view["progress"]["step"] < 12
