"""The artifact contract, run on both object stores: the local directory and a real SeaweedFS S3
server (testkit.s3, on free ports). Write, read, list, delete, whole-object visibility, missing
objects, the expiry sweep, the streamed zip bundle; then the S3 mirror that keeps a local folder
in step with a prefix by ETag, and an unreachable store as StoreUnavailable."""

from __future__ import annotations

import io
import threading
import time
import uuid
import zipfile

import pytest

from jobs.artifact_store import ArtifactStore
from jobs.objects import LocalObjects, ObjectMissing, S3Objects, StoreUnavailable
from testkit.s3 import s3_server
from testkit.stack import free_port

JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3, monkeypatch):
    """boto3 reads the key from the usual AWS variables, as the service does."""
    for name, value in s3.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3


@pytest.fixture(params=["local", "s3"])
def objects(request, tmp_path):
    if request.param == "local":
        return LocalObjects(tmp_path / "store")
    s3 = request.getfixturevalue("s3_env")
    return S3Objects(s3.bucket, f"contract-{uuid.uuid4().hex[:8]}", s3.url)


@pytest.fixture
def artifacts(objects, tmp_path):
    return ArtifactStore(tmp_path / "scratch", objects)


def publish(artifacts: ArtifactStore, job_id: str, files: dict[str, bytes]) -> None:
    staging = artifacts.staging_dir(job_id, 1)
    for name, data in files.items():
        (staging / name).write_bytes(data)
    artifacts.publish(job_id, staging)


def read(artifacts: ArtifactStore, job_id: str, name: str) -> bytes | None:
    chunks = artifacts.stream(job_id, name)
    return None if chunks is None else b"".join(chunks)


def test_write_read_list_delete(artifacts, objects):
    artifacts.save_input(JOB, b"input bytes")
    assert artifacts.load_input(JOB) == b"input bytes"
    publish(artifacts, JOB, {"overlay.png": b"png", "summary.json": b"{}"})
    assert read(artifacts, JOB, "overlay.png") == b"png"
    assert artifacts.exists(JOB, "summary.json") and not artifacts.exists(JOB, "mask.npz")
    keys = [info.key for info in objects.list(f"{JOB}/")]
    assert keys == [f"{JOB}/input.bin", f"{JOB}/outputs/overlay.png", f"{JOB}/outputs/summary.json"]
    info = objects.stat(f"{JOB}/outputs/overlay.png")
    assert info is not None and info.size == 3 and info.etag
    assert not list((artifacts.root / JOB).glob(".staging-*"))  # nothing staged is left
    artifacts.remove_input(JOB)
    with pytest.raises(ObjectMissing):
        artifacts.load_input(JOB)
    assert read(artifacts, JOB, "overlay.png") == b"png"  # its outputs stay
    objects.delete([f"{JOB}/outputs/overlay.png", "never/was"])
    assert [i.key for i in objects.list(f"{JOB}/")] == [f"{JOB}/outputs/summary.json"]


def test_a_second_finisher_is_discarded(artifacts):
    publish(artifacts, JOB, {"overlay.png": b"first", "summary.json": b"1"})
    publish(artifacts, JOB, {"overlay.png": b"second", "summary.json": b"2"})
    assert read(artifacts, JOB, "overlay.png") == b"first"


def test_missing_objects_and_names_with_a_path(artifacts, objects):
    assert read(artifacts, JOB, "overlay.png") is None
    assert objects.stat(f"{JOB}/outputs/overlay.png") is None
    with pytest.raises(ObjectMissing):
        artifacts.load_input(OTHER)
    with pytest.raises(ObjectMissing):
        objects.get_bytes("no/such/object")
    publish(artifacts, JOB, {"summary.json": b"{}"})
    for name in ("../outputs/summary.json", ".staging-1", "a/b", ""):
        assert read(artifacts, JOB, name) is None and not artifacts.exists(JOB, name)


def test_objects_are_visible_whole_or_not_at_all(artifacts):
    """A reader polling while a 16 MiB output is published never sees part of it, and never
    sees summary.json before every other output."""
    big = bytes(range(256)) * (16 * 4096)
    seen: list[int] = []
    early: list[str] = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            data = read(artifacts, JOB, "attribution.npy")
            seen.append(-1 if data is None else (len(data) if data == big else -2))
            if artifacts.exists(JOB, "summary.json") and not artifacts.exists(JOB, "mask.npz"):
                early.append("summary before mask")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        publish(artifacts, JOB, {"attribution.npy": big, "mask.npz": b"m", "summary.json": b"{}"})
        time.sleep(0.2)
    finally:
        done.set()
        thread.join()
    assert -2 not in seen and len(big) in seen, seen[:20]
    assert not early


def test_the_sweep_deletes_expired_jobs_only(artifacts, objects):
    artifacts.save_input(JOB, b"old")
    publish(artifacts, JOB, {"summary.json": b"{}"})
    objects.put_bytes("models/tiny/model.json", b"{}")  # not a job: never swept
    objects.put_bytes("cache/patterns/x.pt", b"p")
    time.sleep(3.1)  # S3 keeps modification times to the second
    artifacts.save_input(OTHER, b"new")
    assert artifacts.sweep(ttl_s=2, every_s=0) == 1
    assert objects.list(f"{JOB}/") == [] and artifacts.load_input(OTHER) == b"new"
    assert {i.key for i in objects.list("models/")} == {"models/tiny/model.json"}
    assert objects.stat("cache/patterns/x.pt") is not None
    assert artifacts.sweep(ttl_s=2, every_s=300) == 0  # not again this soon


def test_a_bundle_zips_every_output_and_the_extras(artifacts):
    files = {"overlay.png": b"png" * 1000, "summary.json": b'{"a": 1}', "heatmap.npy": b"h"}
    publish(artifacts, JOB, files)
    data = b"".join(artifacts.bundle(JOB, [*files, "mask.npz"], {"job.json": b"{}"}))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted([*files, "job.json"])  # mask.npz: none
        assert archive.read("overlay.png") == files["overlay.png"]


def test_the_s3_mirror_follows_etags(s3_env, tmp_path):
    s3 = s3_env
    prefix = f"mirror-{uuid.uuid4().hex[:8]}"
    writer = S3Objects(s3.bucket, prefix, s3.url)
    here = writer.mirror("models/", tmp_path / "here")
    there = S3Objects(s3.bucket, prefix, s3.url).mirror("models/", tmp_path / "there")
    (tmp_path / "here" / "tiny").mkdir(parents=True)
    (tmp_path / "here" / "tiny" / "weights.pt").write_bytes(b"w1")
    here.push([tmp_path / "here" / "tiny" / "weights.pt"])
    assert there.pull(force=True)
    assert (tmp_path / "there" / "tiny" / "weights.pt").read_bytes() == b"w1"
    assert not there.pull(force=True)  # same ETag: nothing downloaded
    writer.put_bytes("models/tiny/weights.pt", b"w2")  # replaced elsewhere
    assert there.pull(force=True)
    assert (tmp_path / "there" / "tiny" / "weights.pt").read_bytes() == b"w2"
    (tmp_path / "there" / ".incoming-1").mkdir()
    (tmp_path / "there" / ".incoming-1" / "weights.pt").write_bytes(b"wip")
    here.remove("tiny/")
    assert there.pull(force=True)
    assert not (tmp_path / "there" / "tiny" / "weights.pt").exists()
    assert (tmp_path / "there" / ".incoming-1" / "weights.pt").exists()  # work in progress
    # a local store's mirror is the folder itself: nothing to copy
    assert not LocalObjects(tmp_path / "local").mirror("models/", tmp_path / "local").pull()


def test_an_unreachable_store_is_store_unavailable(s3_env, tmp_path):
    dead = S3Objects(s3_env.bucket, "x", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        dead.get_bytes("a")
    with pytest.raises(StoreUnavailable):
        dead.put_bytes("a", b"x")
    assert ArtifactStore(tmp_path, dead).sweep(60, every_s=0) == 0  # skipped, not raised
    assert time.monotonic() - started < 20


def test_a_model_replaced_in_the_bucket_is_registered_anew(s3_env, tmp_path):
    """A model store on an empty folder registers the models of the bucket, and registers one
    again when its weights' ETag changes (deleted and added again elsewhere, same config)."""
    import json

    import torch

    from engine.models import MODELS, cached_model
    from jobs.model_store import ModelStore
    from tests.tiny_models import tiny_cnn

    def weights(seed: int) -> bytes:
        torch.manual_seed(seed)
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(tiny_cnn().eval()), buffer)
        return buffer.getvalue()

    s3 = s3_env
    objects = S3Objects(s3.bucket, f"models-{uuid.uuid4().hex[:8]}", s3.url)
    name = f"replaced_{uuid.uuid4().hex[:6]}"
    config = {"name": name, "torchscript": "weights.pt", "input_size": [32, 32],
              "labels": ["a", "b"], "normalize": False}  # fmt: skip
    objects.put_bytes(f"models/{name}/weights.pt", weights(0))
    objects.put_bytes(f"models/{name}/model.json", json.dumps(config).encode())
    store = ModelStore(tmp_path / "models", objects=objects)
    try:
        store.refresh()
        assert name in store.names() and name in MODELS
        x = torch.rand(1, 3, 32, 32)
        before = cached_model(name, None, "cpu").module(x)
        objects.put_bytes(f"models/{name}/weights.pt", weights(1))
        time.sleep(0.6)  # a mirror lists at most every half second
        store.refresh()
        after = cached_model(name, None, "cpu").module(x)
        assert not torch.allclose(before, after)  # the new weights run
        objects.delete([f"models/{name}/weights.pt", f"models/{name}/model.json"])
        time.sleep(0.6)
        store.refresh()
        assert name not in store.names() and name not in MODELS
    finally:
        MODELS.pop(name, None)
        cached_model.cache_clear()


def test_a_job_whose_store_is_away_fails_in_the_users_terms(s3_env, tmp_path):
    """The worker computes the explanation, then cannot store it: the job fails saying so (not
    'internal error'), and nothing of it is left on the worker's disk."""
    from jobs.records import JobRecord
    from jobs.runner import STORE_AWAY_MESSAGE, run_job
    from jobs.settings import Settings
    from jobs.store import MemoryJobStore

    dead = S3Objects(s3_env.bucket, "away", f"http://127.0.0.1:{free_port()}")
    store = MemoryJobStore(ttl_s=60)
    store.create(JobRecord(id=JOB, created_at=time.time(), model="efficientnet_lite0",
                           method="saliency", options={}, content_hash="h",
                           input={"kind": "sample", "name": "chelsea"}))  # fmt: skip
    artifacts = ArtifactStore(tmp_path, dead)
    assert run_job(JOB, store, artifacts, Settings(preload_models=())) == "failed"
    assert store.get(JOB).error == STORE_AWAY_MESSAGE
    assert not (tmp_path / JOB).exists()
