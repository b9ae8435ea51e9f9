"""The distributed service on an S3 store (a real SeaweedFS server, testkit.s3): the API and a
Celery worker with local folders of their own, sharing nothing but Redis and the bucket. A model
uploaded through the API before the worker started runs on it; the job's artifacts land in the
bucket and download over the API, one by one and as bundle.zip; a pattern set made on the worker
is listed by the API; presigned redirects serve the bucket's bytes; an unreachable store is 503."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from testkit.s3 import s3_server
from testkit.stack import Api, RedisServer, Worker, free_port, service_env
from tests.tiny_models import tiny_cnn

ADMIN = {"X-Admin-Key": "admin-secret"}
TINY = {"name": "tiny", "source": "state_dict", "factory": "tests.tiny_models:tiny_cnn",
        "input_size": [32, 32], "labels": ["left", "right"], "normalize": False}  # fmt: skip
EXPLAIN = {"model": "tiny", "sample": "chelsea", "method": "saliency", "target": 0}
PREFIX = "stack"


def tiny_weights() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(tiny_cnn().state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3stack")
    settings = {"admin_keys": "admin-secret", "preload_models": ",",
                "allowed_factories": "tests.tiny_models:tiny_cnn"}  # fmt: skip
    with s3_server(folder / "s3") as s3:
        redis = RedisServer(folder)
        api = worker = None
        try:
            api = Api(service_env(redis.url, folder / "api", **settings) | s3.env(PREFIX), folder)
            added = api.client.post("/models", headers=ADMIN, data={"config": json.dumps(TINY)},
                                    files={"weights": ("w.pt", tiny_weights())})  # fmt: skip
            assert added.status_code == 201, added.text
            # started after the upload, with an empty folder of its own
            worker_env = service_env(redis.url, folder / "worker", **settings) | s3.env(PREFIX)
            worker = Worker(worker_env, folder)
            yield api, s3, redis, folder
        finally:
            if worker is not None:
                worker.process.stop()
            if api is not None:
                api.stop()
            redis.stop()


def test_artifacts_land_in_the_bucket_and_download_over_the_api(stack):
    api, s3, _, folder = stack
    assert s3.keys(f"{PREFIX}/models/tiny/") == [
        f"{PREFIX}/models/tiny/{name}" for name in ("inspection.json", "model.json", "weights.pt")
    ]
    created = api.client.post("/explain", json=EXPLAIN)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    view = api.wait_done(job_id, timeout=90)
    assert view["status"] == "succeeded", view
    outputs = {key.rsplit("/", 1)[1] for key in s3.keys(f"{PREFIX}/{job_id}/outputs/")}
    pictures = {name for name in view["artifacts"] if name.endswith(".png")}  # drawn when asked
    assert outputs == set(view["artifacts"]) - pictures | {".pictures.npz"}
    assert (folder / "worker" / "models" / "tiny" / "weights.pt").is_file()  # its mirror
    assert not (folder / "worker" / job_id).exists()  # nothing of the job stays on its disk
    bucket = s3.client()
    for name, link in view["artifacts"].items():
        answer = api.client.get(link)
        assert answer.status_code == 200, answer.text
        stored = bucket.get_object(Bucket=s3.bucket, Key=f"{PREFIX}/{job_id}/outputs/{name}")
        assert answer.content == stored["Body"].read()
        assert answer.headers["content-length"] == str(len(answer.content))
    outputs = {key.rsplit("/", 1)[1] for key in s3.keys(f"{PREFIX}/{job_id}/outputs/")}
    assert outputs == set(view["artifacts"])  # the pictures' sources deleted once drawn
    bundle = api.client.get(f"/jobs/{job_id}/bundle.zip")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        assert sorted(archive.namelist()) == sorted([*view["artifacts"], "job.json"])
        assert json.loads(archive.read("job.json"))["status"] == "succeeded"
        assert (
            archive.read("overlay.png") == api.client.get(view["artifacts"]["overlay.png"]).content
        )
    assert api.client.get(f"/jobs/{'0' * 32}/bundle.zip").status_code == 404


def test_a_pattern_set_made_on_the_worker_is_listed_by_the_api(stack):
    api, s3, _, _ = stack
    created = api.client.post("/patterns", json={"model": "tiny"})
    assert created.status_code == 202, created.text
    assert api.wait_done(created.json()["id"], timeout=90)["status"] == "succeeded"
    stored = s3.keys(f"{PREFIX}/cache/patterns/")
    assert len(stored) == 2 and stored[0].endswith(".json") and stored[1].endswith(".pt")
    (listed,) = api.client.get("/patterns").json()  # the API's own cache folder was empty
    assert listed["model"] == "tiny" and listed["file"] == stored[1].rsplit("/", 1)[1]
    job = api.client.post("/explain", json=EXPLAIN | {"method": "pattern_attribution"})
    assert job.status_code == 202, job.text
    assert api.wait_done(job.json()["id"], timeout=90)["status"] == "succeeded"


def test_presigned_redirects_and_an_unreachable_store(stack, tmp_path, monkeypatch):
    """In-process apps on the same Redis and bucket: one that redirects to presigned URLs, one
    whose store endpoint does not answer."""
    from jobs.settings import Settings
    from service.app import create_app

    api, s3, redis, _ = stack
    job_id = api.client.post("/explain", json=EXPLAIN).json()["id"]  # the first job's twin
    view = api.wait_done(job_id, timeout=90)
    monkeypatch.setenv("EXPLAINER_CACHE_DIR", str(tmp_path / "cache"))  # create_app sets it
    for name, value in s3.env(PREFIX, presign=True).items():
        monkeypatch.setenv(name, value)
    presigned = TestClient(create_app(Settings(broker_url=redis.url, artifact_dir=tmp_path)))
    answer = presigned.get(view["artifacts"]["overlay.png"], follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"].startswith(s3.url)
    fetched = httpx.get(answer.headers["location"])
    assert fetched.status_code == 200
    assert fetched.content == api.client.get(view["artifacts"]["overlay.png"]).content
    assert "X-Amz-Signature" in answer.headers["location"]
    assert presigned.get("/health").json()["store"] is True

    monkeypatch.setenv("EXPLAINER_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    away = TestClient(create_app(Settings(artifact_dir=tmp_path / "embedded")))  # no lifespan
    refused = away.post("/explain", json={"sample": "chelsea", "method": "saliency"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "store_unavailable"
    assert refused.headers["retry-after"]
    assert away.get("/models").status_code == 503
    health = away.get("/health").json()  # it said ok while every submit was a 503
    assert health["status"] == "degraded" and health["store"] is False, health
    records_here = TestClient(create_app(Settings(broker_url=redis.url, artifact_dir=tmp_path)))
    bundle = records_here.get(f"/jobs/{job_id}/bundle.zip")  # was a 200 with a broken zip
    assert bundle.status_code == 503 and bundle.json()["error"]["code"] == "store_unavailable"
