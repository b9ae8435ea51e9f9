"""Training sets per API key, and training zips decoded on the workers, over real HTTP with a
real redis-server and Celery worker.

A pattern set or support set belongs to the key that made it: another key neither sees it
(GET /patterns, GET /support-sets, GET /models) nor uses it (its explanations are a 422 until
it has its own), and its own set never changes the first key's results. A set made with an
admin key is shared with every key, read-only. The API only checks an uploaded zip (entries,
declared sizes, image headers); the worker decodes it, and what only decoding finds is the
job's failure message."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import load_sample
from testkit.stack import Api, distributed_stack
from tests.tiny_models import tiny_cnn

ADMIN_KEY = "admin-secret"
TINY = {"name": "tiny", "source": "state_dict", "factory": "tests.tiny_models:tiny_cnn",
        "input_size": [32, 32], "labels": ["left", "right"], "normalize": False}  # fmt: skip
PA = {"model": "tiny", "sample": "chelsea", "method": "pattern_attribution", "target": 0,
      "reuse": False}  # fmt: skip
GAD = {"model": "tiny", "sample": "chelsea", "method": "gad", "target": 0,
       "options": {"classes": [0, 1]}, "reuse": False}  # fmt: skip


class Caller:
    """The stack's API as one API key (and optionally an admin key) sees it."""

    def __init__(self, api: Api, key: str, admin: str | None = None):
        self.api = api
        self.headers = {"X-API-Key": key} | ({"X-Admin-Key": admin} if admin else {})

    def get(self, path: str):
        return self.api.client.get(path, headers=self.headers)

    def post(self, path: str, **kwargs):
        return self.api.client.post(path, headers=self.headers, **kwargs)

    def done(self, created) -> dict:
        """The finished view of the job a POST answered 202 for."""
        assert created.status_code == 202, created.text
        return self.api.wait_done(created.json()["id"], timeout=180, **self.headers)

    def train(self, path: str, request: dict, zips: dict[str, bytes] | None = None) -> dict:
        """A training job (JSON, or multipart with zips) run to its end."""
        if zips is None:
            return self.done(self.post(path, json=request))
        files = {name: (f"{name}.zip", data) for name, data in zips.items()}
        return self.done(self.post(path, data={"request": json.dumps(request)}, files=files))

    def attribution(self, request: dict) -> np.ndarray:
        """The attribution of an explanation that must succeed."""
        view = self.done(self.post("/explain", json=request))
        assert view["status"] == "succeeded", view
        data = self.api.client.get(view["artifacts"]["attribution.npy"], headers=self.headers)
        return np.load(io.BytesIO(data.content))

    def methods(self, model: str) -> list[str]:
        (described,) = [m for m in self.get("/models").json() if m["name"] == model]
        return described["methods"]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def photos(*names: str) -> bytes:
    """A zip of bundled photographs as PNGs."""
    return zipped({f"photos/{name}.png": png(load_sample(name)) for name in names})


def large_png(width: int, height: int, shade: int) -> bytes:
    """A PNG of width × height pixels that compresses to a few kilobytes (one colour)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 255 - shade, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenants")
    with distributed_stack(folder, api_keys="key-a,key-b,key-c,key-ops", admin_keys=ADMIN_KEY,
                           allowed_factories="torchvision,tests.tiny_models:tiny_cnn",
                           preload_models="", max_training_epochs=2) as api:  # fmt: skip
        torch.manual_seed(3)
        weights = io.BytesIO()
        torch.save(tiny_cnn().state_dict(), weights)
        added = api.client.post("/models", headers={"X-Admin-Key": ADMIN_KEY},
                                data={"config": json.dumps(TINY)},
                                files={"weights": ("w.pt", weights.getvalue())})  # fmt: skip
        assert added.status_code == 201, added.text
        yield api


def test_a_keys_pattern_set_is_its_own(stack):
    """Key B's POST /patterns changes neither key A's results nor what A sees, and B's own
    explanations use B's set."""
    a, b = Caller(stack, "key-a"), Caller(stack, "key-b")
    made = a.train("/patterns", {"model": "tiny"})
    assert made["status"] == "succeeded", made
    before = a.attribution(PA)
    other = b.train("/patterns", {"model": "tiny", "estimator": "linear"},
                    {"images": photos("coffee", "rocket", "camera")})  # fmt: skip
    assert other["status"] == "succeeded", other
    np.testing.assert_array_equal(a.attribution(PA), before)  # A's set is untouched
    assert not np.allclose(b.attribution(PA), before, rtol=0.05)  # B's jobs use B's set
    assert [s["job"] for s in a.get("/patterns").json()] == [made["id"]]
    assert [s["job"] for s in b.get("/patterns").json()] == [other["id"]]
    assert made["options"]["shared"] is other["options"]["shared"] is False


def test_a_key_without_sets_sees_none_and_is_refused_at_submit(stack):
    """Key C has made no set: other keys' sets are neither listed nor offered nor used."""
    a, c = Caller(stack, "key-a"), Caller(stack, "key-c")
    if not a.get("/patterns").json():
        assert a.train("/patterns", {"model": "tiny"})["status"] == "succeeded"
    assert c.get("/patterns").json() == []
    assert "pattern_attribution" in a.methods("tiny")
    assert not {"pattern_net", "pattern_attribution", "pattern_guided_ig"} & set(c.methods("tiny"))
    refused = c.post("/explain", json=PA)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "needs_training"
    assert "(yours, or shared by an admin)" in error["message"]
    assert error["message"].endswith("make them first with POST /patterns")


def test_an_admins_support_set_is_shared_read_only(stack):
    """A set made with an admin key serves every key that has none of its own, listed as shared
    without the admin's job; a key's own set comes first; a wrong admin key is a 401."""
    c, ops = Caller(stack, "key-c"), Caller(stack, "key-ops", admin=ADMIN_KEY)
    refused = c.post("/explain", json=GAD)
    assert refused.status_code == 422 and "POST /support-sets" in refused.text
    request = {"model": "tiny", "class_a": "left", "class_b": "right", "epochs": 1}
    zips = {"images_a": photos("chelsea", "astronaut"), "images_b": photos("coffee", "rocket")}
    shared = ops.train("/support-sets", request, zips)
    assert shared["status"] == "succeeded", shared
    (listed,) = c.get("/support-sets").json()
    assert listed["shared"] is True and "job" not in listed and listed["classes"] == [0, 1]
    assert shared["options"]["shared"] is True
    assert "gad" in c.methods("tiny")
    assert c.done(c.post("/explain", json=GAD))["status"] == "succeeded"

    own = c.train("/support-sets", request | {"epochs": 2}, zips)
    assert own["status"] == "succeeded", own
    mine, theirs = c.get("/support-sets").json()
    assert (mine["job"], mine["shared"], mine["epochs"]) == (own["id"], False, 2)
    assert theirs["shared"] is True
    assert [s["shared"] for s in Caller(stack, "key-b").get("/support-sets").json()] == [True]
    bad_admin = Caller(stack, "key-c", admin="not-the-admin-key")
    denied = bad_admin.post("/support-sets", data={"request": json.dumps(request)},
                            files={k: (f"{k}.zip", v) for k, v in zips.items()})  # fmt: skip
    assert denied.status_code == 401, denied.text


def test_a_new_set_is_a_new_job_for_reuse(stack):
    """An identical explanation is reused until the set it used is made again."""
    a = Caller(stack, "key-a")
    if not a.get("/patterns").json():
        assert a.train("/patterns", {"model": "tiny"})["status"] == "succeeded"
    reusable = PA | {"reuse": True}
    first = a.post("/explain", json=reusable)  # 200 where an earlier test made the same job
    assert first.status_code in (200, 202), first.text
    assert stack.wait_done(first.json()["id"], **a.headers)["status"] == "succeeded"
    again = a.post("/explain", json=reusable)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    remade = a.train("/patterns", {"model": "tiny", "estimator": "linear"})
    assert remade["status"] == "succeeded", remade
    fresh = a.post("/explain", json=reusable)
    assert fresh.status_code == 202, fresh.text  # a new job, on the new set
    assert a.done(fresh)["status"] == "succeeded"


def test_training_zips_are_decoded_on_the_worker(stack):
    """Two 25-Mpx PNGs in a 60 KB zip: the API answers without decoding them (its peak memory
    does not grow by the ~300 MB a decoded one takes), the worker decodes them."""
    a = Caller(stack, "key-a")
    archive = zipped({f"big/{i}.png": large_png(5000, 5000, 60 * i) for i in range(2)})
    assert len(archive) < 100_000
    pid = stack.process.proc.pid
    peak = peak_rss_mb(pid)
    started = time.monotonic()
    created = a.post("/patterns", data={"request": json.dumps({"model": "tiny"})},
                     files={"images": ("big.zip", archive)})  # fmt: skip
    answered = time.monotonic() - started
    grown = peak_rss_mb(pid) - peak
    assert created.status_code == 202, created.text
    assert grown < 150, f"the API's peak memory grew by {grown:.0f} MB"
    view = a.done(created)
    assert view["status"] == "succeeded", view
    assert view["scores"]["images"] == 2
    print(f"API answered in {answered:.2f} s, peak RSS +{grown:.0f} MB")


def test_zip_headers_are_checked_by_the_api_and_the_rest_by_the_worker(stack):
    """Dimensions above the pixel limit are a 422 at submit, from the header; a PNG whose pixel
    data is cut short passes the header check and fails its job, saying which file."""
    a = Caller(stack, "key-a")
    request = {"request": json.dumps({"model": "tiny"})}
    oversized = zipped({"huge.png": large_png(6000, 5000, 0)})
    refused = a.post("/patterns", data=request, files={"images": ("z.zip", oversized)})
    assert refused.status_code == 422, refused.text
    assert "huge.png: image has 6000×5000 pixels" in refused.json()["error"]["message"]
    whole = png(load_sample("coffee"))
    truncated = zipped({"ok/chelsea.png": png(load_sample("chelsea")),
                        "ok/cut.png": whole[: len(whole) // 2]})  # fmt: skip
    view = a.done(a.post("/patterns", data=request, files={"images": ("z.zip", truncated)}))
    assert view["status"] == "failed", view
    assert view["error"].startswith("images: ok/cut.png: ") and "PNG" in view["error"], view
