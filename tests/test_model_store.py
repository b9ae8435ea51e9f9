"""The model store over real HTTP with a real redis-server and Celery worker: an admin uploads a
TorchScript image model, a state dict for a factory and a train-series model, a worker started
afterwards runs all three, and every bad upload gets its 4xx in the uploader's terms: factories
off the operator's allow-list are never called, and archives calling operators off the allow-list
(a TorchScript model reading a server file) are refused before they run."""

from __future__ import annotations

import io
import json

import pytest
import torch

from engine.models.series import BUNDLED
from testkit.stack import Api, RedisServer, Worker, service_env
from tests.tiny_models import ReadsAFile, tiny_cnn

ADMIN = {"X-Admin-Key": "admin-secret"}
IMAGE_CONFIG = {"name": "tiny", "source": "torchscript", "input_size": [32, 32],
                "labels": ["left", "right"], "mean": [0.5] * 3, "std": [0.25] * 3}  # fmt: skip


def torchscript_bytes() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(tiny_cnn().eval()), buffer)
    return buffer.getvalue()


def pickled_module_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(tiny_cnn(), buffer)  # a whole pickled module, not a state dict
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    redis = RedisServer(folder)
    env = service_env(redis.url, folder / "artifacts", admin_keys="admin-secret",
                      api_keys="user-key", preload_models="",
                      allowed_factories="torchvision,tests.tiny_models:tiny_cnn")  # fmt: skip
    api = Api(env, folder)
    api.client.headers["X-API-Key"] = "user-key"
    yield api, env, folder
    api.stop()
    redis.stop()


def upload(api: Api, config: dict, weights: bytes, headers=ADMIN):
    return api.client.post("/models", headers=headers, files={"weights": ("w.pt", weights)},
                           data={"config": json.dumps(config)})  # fmt: skip


def test_uploaded_models_run_on_a_worker_started_afterwards(stack):
    api, env, folder = stack
    added = upload(api, IMAGE_CONFIG, torchscript_bytes())
    assert added.status_code == 201, added.text
    assert added.json()["stored"] and "saliency" in added.json()["methods"]
    gru = upload(api, {"name": "my_gru", "source": "series"}, BUNDLED.read_bytes())
    assert gru.status_code == 201, gru.text
    assert gru.json()["input_kind"] == "timeseries" and gru.json()["input_size"] == [100, 3]
    torch.manual_seed(1)
    state = io.BytesIO()
    torch.save(tiny_cnn().state_dict(), state)
    factory = {"name": "tiny_sd", "source": "state_dict", "factory": "tests.tiny_models:tiny_cnn",
               "input_size": [32, 32], "labels": ["left", "right"], "normalize": False}  # fmt: skip
    assert upload(api, factory, state.getvalue()).status_code == 201
    listed = {m["name"]: m for m in api.client.get("/models").json()}
    assert listed["tiny"]["stored"] and not listed["efficientnet_lite0"]["stored"]
    worker = Worker(env, folder)  # knows nothing of the uploads but the shared folder
    try:
        image = {"model": "tiny", "sample": "chelsea", "method": "integrated_gradients"}
        series = {"model": "my_gru", "sample": "state:2", "method": "saliency"}
        image_job = api.client.post("/explain", json=image)
        series_job = api.client.post("/explain", json=series)
        factory_job = api.client.post("/explain", json=image | {"model": "tiny_sd"})
        image_view = api.wait_done(image_job.json()["id"], timeout=120)
        series_view = api.wait_done(series_job.json()["id"], timeout=120)
        factory_view = api.wait_done(factory_job.json()["id"], timeout=120)
    finally:
        worker.process.stop()
    assert image_view["status"] == "succeeded", image_view
    assert image_view["prediction"]["label"] in ("left", "right")
    assert series_view["status"] == "succeeded", series_view
    assert "auroc" in series_view["scores"]
    assert factory_view["status"] == "succeeded", factory_view


@pytest.mark.parametrize(
    ("config", "weights", "headers", "status", "words"),
    [
        (IMAGE_CONFIG | {"name": "nokey"}, "torchscript", {}, 401, "admin key is required"),
        (IMAGE_CONFIG | {"name": "wrongkey"}, "torchscript", {"X-Admin-Key": "user-key"}, 401,
         "not valid"),
        (IMAGE_CONFIG | {"name": "garbage"}, "garbage", ADMIN, 422, "cannot be loaded"),
        (IMAGE_CONFIG | {"name": "pickle", "source": "state_dict",
                         "factory": "tests.tiny_models:tiny_cnn"}, "pickle", ADMIN, 422,
         "pickled Python objects"),
        (IMAGE_CONFIG | {"name": "shape", "labels": ["a", "b", "c"]}, "torchscript", ADMIN, 422,
         "answers (2, 2)"),
        (IMAGE_CONFIG | {"name": "efficientnet_lite0"}, "torchscript", ADMIN, 409, "built-in"),
        (IMAGE_CONFIG | {"name": "../etc"}, "torchscript", ADMIN, 422, "invalid"),
    ],
    ids=["no-admin-key", "api-key-as-admin", "garbage", "pickle", "wrong-shape", "name-clash",
         "path-name"],
)  # fmt: skip
def test_bad_uploads_are_refused_with_their_4xx(stack, config, weights, headers, status, words):
    api, _, folder = stack
    data = {"torchscript": torchscript_bytes, "garbage": lambda: b"not a model",
            "pickle": pickled_module_bytes}[weights]()  # fmt: skip
    response = upload(api, config, data, headers)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"] or words in response.text
    assert not any(p.name.startswith(".incoming") for p in (folder / "artifacts/models").iterdir())


OFF_THE_LIST = ["os:system", "subprocess:run", "builtins:open", "torchvision.models:get_weight",
                "tests.tiny_models:RowLimitedCNN"]  # fmt: skip


@pytest.mark.parametrize("factory", OFF_THE_LIST)
def test_factories_off_the_allow_list_are_refused_and_never_called(stack, factory, tmp_path):
    api, _, _ = stack
    marker = tmp_path / "created"
    config = {"name": "probe", "source": "state_dict", "factory": factory, "normalize": False,
              "factory_kwargs": {"args": ["touch", str(marker)], "file": str(marker),
                                 "command": f"touch {marker}", "mode": "w"}}  # fmt: skip
    response = upload(api, config, b"x")
    assert response.status_code == 422 and "EXPLAINER_ALLOWED_FACTORIES" in response.text
    assert not marker.exists()
    downloads = upload(api, config | {"factory": "torchvision.models:resnet18",
                                      "factory_kwargs": {"weights": "DEFAULT"}}, b"x")  # fmt: skip
    assert downloads.status_code == 422 and "weights come from the uploaded" in downloads.text


def test_delete_removes_a_stored_model_and_keeps_built_ins(stack):
    api, _, _ = stack
    assert upload(api, IMAGE_CONFIG | {"name": "doomed"}, torchscript_bytes()).status_code == 201
    assert api.client.delete("/models/doomed", headers=ADMIN).status_code == 204
    assert "doomed" not in {m["name"] for m in api.client.get("/models").json()}
    gone = api.client.post("/explain", json={"model": "doomed", "sample": "chelsea",
                                             "method": "saliency"})  # fmt: skip
    assert gone.status_code == 422 and "unknown model" in gone.text
    assert api.client.delete("/models/efficientnet_lite0", headers=ADMIN).status_code == 409
    assert api.client.delete("/models/doomed", headers=ADMIN).status_code == 404


def test_an_archive_that_reads_a_server_file_is_refused_and_reads_nothing(stack, tmp_path):
    """The probe's archive: a TorchScript model whose forward maps a file of the server
    (torch.from_file; with shared=True it creates the file when missing) and adds its first
    byte to the scores. It is refused before it runs, naming the operator and the setting."""
    api, _, folder = stack
    marker = tmp_path / "server-file"
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(ReadsAFile(str(marker)).eval()), buffer)
    response = upload(api, IMAGE_CONFIG | {"name": "peek"}, buffer.getvalue())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "model_refused"
    assert "aten::from_file" in error["message"]
    assert "EXPLAINER_ALLOWED_OPERATORS" in error["message"]
    assert not marker.exists()
    assert "peek" not in {m["name"] for m in api.client.get("/models").json()}
    assert not (folder / "artifacts/models/peek").exists()


def test_probe_failures_are_told_in_the_uploaders_terms(stack):
    """A factory argument of the wrong type fails deep inside the factory's code; the message
    says what to check, not Python's "'str' object is not callable"."""
    api, _, _ = stack
    config = {"name": "badkw", "source": "state_dict", "factory": "torchvision.models:resnet18",
              "factory_kwargs": {"norm_layer": "batchnorm"}, "normalize": False}  # fmt: skip
    response = upload(api, config, b"unused")
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "factory_kwargs" in message
    assert not any(word in message for word in ("object", "'str'", "NoneType", "Error"))
