"""Bad input over real HTTP: each a clear 4xx in the one error shape, and nothing crashes."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from engine.data import load_sample
from testkit.stack import Api, free_port, service_env
from tests.test_inputs import (
    damaged_zip,
    image_zip,
    mpo,
    png_header_only,
    png_metadata_bomb,
    sixteen_bit_grey_png,
)
from tests.test_metrics import CP_RATIOS, strict_json
from tests.test_timeseries import npy, npy_header_only

SERIES = {"model": "state_gru", "method": "extremal_mask"}
LIMIT_BYTES = 1_000_000
LIMIT_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embedded")
    env = service_env(None, folder / "artifacts", max_upload_bytes=LIMIT_BYTES,
                      max_pixels=LIMIT_PIXELS, max_model_passes=500, preload_models="")  # fmt: skip
    env["TORCH_HOME"] = str(folder / "torch")  # no torchvision weights in its hub cache
    server = Api(env, folder)
    yield server
    server.stop()


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def upload(api: Api, data: bytes, request: dict | None = None):
    return api.client.post(
        "/explain", files={"image": ("x", data, "application/octet-stream")},
        data={"request": json.dumps(request or {"method": "saliency"})},
    )  # fmt: skip


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["message"]
    for word in words:
        assert word in error["message"], error["message"]


JPEG = encode(Image.fromarray(load_sample("coffee")), "JPEG")


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, ["empty"]),
        (b"definitely not an image", 422, ["not a readable image"]),
        (JPEG[: len(JPEG) // 2], 422, ["truncated"]),
        (png_header_only(100_000, 100_000), 413, ["too large"]),
        (encode(Image.new("RGB", (2500, 2000), (9, 9, 9)), "PNG"), 413, ["2500×2000", "limit"]),
        (encode(Image.new("RGB", (8, 8)), "GIF"), 422, ["GIF"]),
        # 10000×1 fits the pixel limit, but centre-cropping it to 224² would first scale it to
        # 2 240 000×224 (6 GB in the worker): refused at submit.
        (encode(Image.new("RGB", (10_000, 1)), "PNG"), 413, ["scaled to 2240000×224", "ratio"]),
    ],
    ids=["empty", "not-an-image", "truncated-jpeg", "decompression-bomb", "huge", "gif", "strip"],
)
def test_bad_images(api, data, status, words):
    assert_error(upload(api, data), status, *words)


def test_an_image_kept_at_its_size_is_checked_at_that_size(api):
    """resize='none': a 16×16 image would fail inside the model's first convolution, and a
    1000×1000 one costs 20× the passes of 224²: both are refused at submit."""
    kept = {"method": "saliency", "resize": "none"}
    assert_error(upload(api, encode(Image.new("RGB", (16, 16)), "PNG"), kept), 422,
                 "16×16", "smallest side of 32")  # fmt: skip
    large = encode(Image.new("RGB", (1000, 1000), (9, 9, 9)), "PNG")
    ig = {"method": "integrated_gradients", "resize": "none", "seed": 7}
    assert_error(upload(api, large, ig | {"options": {"steps": 30}}), 422, "598 model passes",
                 "(integrated_gradients 30, × 19.93 for 1000×1000 pixels)")  # fmt: skip
    accepted = upload(api, large, ig | {"options": {"steps": 20}})
    assert accepted.status_code == 202
    api.client.delete(f"/jobs/{accepted.json()['id']}")  # what it costs is all this test needs


def test_values_must_have_the_documented_json_types(api):
    """Strict types: true is not a number and "3" is not an integer (pydantic would convert);
    3.0 is an integer, as in JSON Schema."""
    for options in ({"steps": True}, {"steps": "3"}, {"blur_sigma": True}, {"steps": 3.5}):
        body = {"sample": "chelsea", "method": "integrated_gradients", "options": options}
        assert_error(api.client.post("/explain", json=body), 422, "options.")
    body = {"sample": "chelsea", "method": "integrated_gradients", "options": {"steps": 3.0}}
    created = api.client.post("/explain", json=body)
    assert created.status_code == 202, created.text
    assert api.wait_done(created.json()["id"])["options"]["steps"] == 3


@pytest.mark.parametrize(
    ("request_body", "status", "words"),
    [
        ({"sample": "chelsea", "method": "saliency", "model": "nope"}, 422, ["unknown model"]),
        ({"sample": "chelsea", "method": "nope"}, 422, ["unknown method 'nope'; known: "]),
        ({"sample": "chelsea", "method": "saliency", "options": {"bogus": 1}}, 422, ["bogus"]),
        (
            {"sample": "chelsea", "method": "integrated_gradients", "options": {"steps": 0}},
            422,
            ["options.steps"],
        ),
        (
            {"sample": "chelsea", "method": "integrated_gradients", "options": {"steps": 1000}},
            422,
            ["limit"],
        ),
        ({"sample": "nothing", "method": "saliency"}, 422, ["unknown sample"]),
        ({"sample": "chelsea", "series": [[1.0]], "method": "saliency"}, 422, ["exactly one"]),
        ({"method": "saliency"}, 422, ["exactly one"]),
        (SERIES | {"series": [[1.0, 2.0, 3.0], [3.0]]}, 422, ["time × features"]),
        (SERIES | {"series": [[1.0, 2.0, 3.0], [float("nan")] * 3]}, 422, ["finite"]),
        (SERIES | {"series": [[1.0, 2.0, 3.0]]}, 422, ["at least 2 time steps", "got 1 step"]),
        (SERIES | {"series": [[1e308] * 3] * 2}, 422, ["finite as float32"]),
        (SERIES | {"series": [[0.5] * 3] * 20_000}, 413, ["limits"]),
        (SERIES | {"series": [[0.5, 0.1]] * 4}, 422, ["takes 3 features", "has 2"]),
        (SERIES | {"series": [[0.5] * 3] * 2, "truth": [[1, 0, 0]]}, 422, ["truth", "(2, 3)"]),
        (SERIES | {"series": [[0.5] * 3] * 2, "truth": [[2, 0, 0]] * 2}, 422, ["truth"]),
        (SERIES | {"sample": "chelsea"}, 422, ["state_gru takes time series"]),
        ({"series": [[0.5], [0.1]], "method": "saliency"}, 422, ["takes images"]),
        ({"sample": "state:1", "method": "saliency"}, 422, ["takes images"]),
        ({"sample": "chelsea", "method": "saliency", "truth": [[1]]}, 422, ["truth is for"]),
        (
            {"sample": "state:1", "model": "state_gru", "method": "gradcam"},
            422,
            ["does not explain timeseries"],
        ),
        (
            {
                "sample": "state:1",
                "model": "state_gru",
                "method": "integrated_gradients",
                "options": {"baseline": "mean"},
            },
            422,
            ["mean baseline is for images"],
        ),
        ({"image": "%%%not base64%%%", "method": "saliency"}, 422, ["base64"]),
        ({"sample": "chelsea", "method": "saliency", "seed": -1}, 422, ["seed"]),
        ({"sample": "chelsea", "method": "saliency", "metrics": ["xyz"]}, 422, ["unknown metric"]),
        ({"sample": "chelsea", "method": "extremal_mask"}, 422, ["does not explain image"]),
        (
            {"sample": "chelsea", "method": "pattern_net", "options": {"patterns": "/etc/passwd"}},
            422,
            ["patterns cannot name a file"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "crigrad",
                "options": {"base": "integrated_gradients", "base_options": {"steps": 100000}},
            },
            422,
            ["steps"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "gad",
                "options": {"base": "smoothgrad", "base_options": {"samples": 999}},
            },
            422,
            ["4995 model passes", "limit is 500"],
        ),
        ({"sample": "chelsea", "method": "crigrad", "options": {"base": "gradcam"}}, 422, ["base"]),
        # Bounds the worker would hit are 422s at submit.
        ({"sample": "chelsea", "method": "saliency", "target": 1000}, 422, ["target 1000"]),
        ({"sample": "chelsea", "method": "saliency", "target": 10**30}, 422, ["not a class"]),
        ({"sample": "chelsea", "method": "saliency", "target": -1}, 422, ["not a class"]),
        ({"sample": "chelsea", "method": "saliency", "target": "no such"}, 422, ["no class"]),
        ({"sample": "chelsea", "method": "saliency", "target": "x" * 300}, 422, ["target"]),
        # Unicode digits pass str.isdigit and then fail int(): a label, not a 500.
        ({"sample": "chelsea", "method": "saliency", "target": "²"}, 422, ["no class"]),
        ({"sample": "chelsea", "method": "saliency", "target": "٣"}, 422, ["no class"]),
        (
            {
                "sample": "chelsea",
                "method": "pixelmask",
                "options": {"stop_metric": "loss", "stop_value": float("nan")},
            },
            422,
            ["stop_value"],
        ),
        (
            {"sample": "chelsea", "method": "shearletx", "options": {"image_size": 16}},
            422,
            ["image_size"],
        ),
        # Mask methods hold every obfuscation of a step at once: 256 samples of 49 shearlets
        # at 512² need about 160 GB (accepted before, and run).
        (
            {
                "sample": "chelsea",
                "method": "shearletx",
                "options": {"noise_samples": 256, "image_size": 512},
            },
            422,
            ["shearletx on efficientnet_lite0 at 512×512 needs about", "noise_samples"],
        ),
        # Nested options obey the same limits and path policy as top-level ones.
        (
            {
                "sample": "chelsea",
                "method": "saliency",
                "options": {"smoothing": {"samples": 1000}},
            },
            422,
            ["1000 model passes", "limit is 500"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "gad",
                "options": {"base_options": {"smoothing": {"samples": 999}}},
            },
            422,
            ["4995 model passes", "limit is 500"],
        ),
        # The cost counts every option that multiplies work, the metrics' included.
        (
            {
                "sample": "chelsea",
                "method": "smoothgrad_ig",
                "options": {"steps": 30, "samples": 20},
            },
            422,
            ["600 model passes", "limit is 500"],
        ),
        (
            {"sample": "chelsea", "method": "pixelmask", "options": {"iterations": 40}},
            422,
            ["641 model passes", "limit is 500"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "saliency",
                "metrics": ["sensitivity_n", "degradation"],
            },
            422,
            [
                "687 model passes (saliency 1, sensitivity_n 385, degradation 301)",
                "limit is 500",
                "leave out a metric",
            ],
        ),
        (
            {"sample": "chelsea", "method": "expected_gradients", "options": {"references": "/"}},
            422,
            ["options.references cannot name a file"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "crigrad",
                "options": {"base": "expected_gradients", "base_options": {"references": "/etc"}},
            },
            422,
            ["options.base_options.references cannot name a file"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "saliency",
                "metrics": [{"name": "faithfulness", "steps": 1}],
            },
            422,
            ["faithfulness", "steps"],
        ),
        (
            {
                "sample": "chelsea",
                "method": "saliency",
                "metrics": [{"name": "iterations_to_target", "target": 2.0}],
            },
            422,
            ["needs a mask method"],
        ),
    ],
)
def test_bad_requests(api, request_body, status, words):
    response = api.client.post(
        "/explain", content=json.dumps(request_body), headers={"content-type": "application/json"}
    )
    assert_error(response, status, *words)


def test_bad_bodies(api):
    as_json = {"content-type": "application/json"}
    assert_error(
        api.client.post("/explain", content=b"{not", headers=as_json), 400, "not valid JSON"
    )
    assert_error(
        api.client.post("/explain", content=b"x", headers={"content-type": "text/plain"}), 415
    )
    huge = base64.b64encode(b"\0" * (2 * LIMIT_BYTES)).decode()
    assert_error(api.client.post("/explain", json={"image": huge, "method": "saliency"}), 413,
                 "limit")  # fmt: skip
    assert_error(upload(api, JPEG, {"method": "saliency", "sample": "chelsea"}), 422, "file field")


def test_server_still_healthy_after_bad_input(api):
    assert api.client.get("/health").json()["status"] == "ok"
    created = api.client.post("/explain", json={"sample": "chelsea", "method": "saliency"})
    assert created.status_code == 202
    assert api.wait_done(created.json()["id"])["status"] == "succeeded"


def test_api_keys(tmp_path):
    env = service_env(None, tmp_path / "artifacts", api_keys="k1,k2", preload_models="")
    api = Api(env, tmp_path, name="keyed")
    try:
        assert api.client.get("/health").status_code == 200
        assert_error(api.client.get("/methods"), 401, "API key is required")
        assert_error(api.client.get("/methods", headers={"x-api-key": "bad"}), 401, "not valid")
        assert api.client.get("/methods", headers={"x-api-key": "k2"}).status_code == 200
        bearer = {"authorization": "Bearer k1"}
        created = api.client.post("/explain", json={"sample": "chelsea", "method": "saliency"},
                                  headers=bearer)  # fmt: skip
        assert created.status_code == 202
        assert_error(api.client.get(f"/jobs/{created.json()['id']}"), 401)
        assert api.wait_done(created.json()["id"], **bearer)["status"] == "succeeded"
    finally:
        api.stop()


def test_each_key_sees_only_its_own_jobs(tmp_path):
    """A job belongs to the key that made it: another key gets 404 for it, its artifacts and
    its cancel, and neither identical content nor the same idempotency key returns it."""
    env = service_env(None, tmp_path / "artifacts", api_keys="k1,k2", preload_models="")
    api = Api(env, tmp_path, name="tenants")
    one, two = {"x-api-key": "k1"}, {"x-api-key": "k2"}
    request = {"sample": "chelsea", "method": "saliency", "idempotency_key": "same"}
    try:
        first = api.client.post("/explain", json=request, headers=one).json()["id"]
        assert api.wait_done(first, **one)["status"] == "succeeded"
        assert (
            api.client.get(f"/jobs/{first}/artifacts/overlay.png", headers=one).status_code == 200
        )
        for response in (
            api.client.get(f"/jobs/{first}", headers=two),
            api.client.get(f"/jobs/{first}/artifacts/overlay.png", headers=two),
            api.client.delete(f"/jobs/{first}", headers=two),
        ):
            assert_error(response, 404, "no job")
        again = api.client.post("/explain", json=request, headers=two)
        assert again.status_code == 202 and again.json()["id"] != first
        assert api.wait_done(again.json()["id"], **two)["status"] == "succeeded"
        same = api.client.post("/explain", json=request, headers=one)  # k1's own: reused
        assert same.status_code == 200 and same.json()["id"] == first
        # each key lists its own jobs only
        assert [j["id"] for j in api.client.get("/jobs", headers=one).json()] == [first]
        listed = api.client.get("/jobs", headers=two).json()
        assert [j["id"] for j in listed] == [again.json()["id"]]
        assert listed[0]["status"] == "succeeded" and "overlay.png" in listed[0]["artifacts"]
        schemes = api.client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
    finally:
        api.stop()


def test_refuses_public_bind_without_keys():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "service", "--host", "0.0.0.0"], capture_output=True, text=True,
        timeout=60, env={**__import__("os").environ, "EXPLAINER_API_KEYS": ""},
    )  # fmt: skip
    assert done.returncode == 2 and "without API keys" in done.stderr


def test_bodies_the_json_parser_cannot_take_are_400s(api):
    as_json = {"content-type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_error(api.client.post("/explain", content=deep, headers=as_json), 400, "too deeply")
    huge_integer = b'{"sample": "chelsea", "method": "saliency", "seed": ' + b"9" * 5000 + b"}"
    assert_error(api.client.post("/explain", content=huge_integer, headers=as_json), 400,
                 "out of range")  # fmt: skip


def test_errors_do_not_echo_large_inputs(api):
    response = api.client.post("/explain", json={"sample": "chelsea", "method": "m" * 100_000})
    assert_error(response, 422, "unknown method", "known: cartoonx")
    assert len(response.content) < 3000


def test_method_not_allowed_says_what_is(api):
    response = api.client.get("/explain")
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_head_is_answered_as_get_without_the_body(api):
    for path in ("/health", "/methods", "/samples/chelsea/thumbnail.png"):
        got, head = api.client.get(path), api.client.head(path)
        assert got.status_code == head.status_code == 200 and got.content and head.content == b""
        for header in ("content-type", "content-length"):
            assert head.headers[header] == got.headers[header], (path, header)
    refused = api.client.head("/explain")  # GET is no more allowed there than HEAD
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    response = api.client.post("/health")
    assert_error(response, 405)
    assert response.headers["allow"] == "GET, HEAD"
    static = api.client.post("/ui/style.css")  # a mounted file, which a route lists no method of
    assert static.status_code == 405 and static.headers["allow"] == "GET, HEAD"


def test_store_outage_is_a_503_with_retry_after(tmp_path):
    """Redis down (nothing listens on its port): every call that needs it answers 503 in the
    error shape within a second, and asks the client to retry."""
    env = service_env(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "artifacts",
                      preload_models="")  # fmt: skip
    api = Api(env, tmp_path, name="no-redis")
    try:
        calls = [("post", "/explain", {"json": {"sample": "chelsea", "method": "saliency"}}),
                 ("get", "/jobs/0123456789abcdef", {}), ("delete", "/jobs/0123456789abcdef", {}),
                 ("get", "/jobs/0123456789abcdef/artifacts/overlay.png", {})]  # fmt: skip
        for verb, path, extra in calls:
            started = time.perf_counter()
            response = getattr(api.client, verb)(path, **extra)
            assert time.perf_counter() - started < 1.0, path
            assert_error(response, 503, "unavailable")
            assert response.headers["retry-after"] == "5"
        assert api.client.get("/methods").status_code == 200  # needs no Redis
    finally:
        api.stop()


def test_a_full_artifact_disk_is_a_507_that_leaves_nothing_behind(tmp_path):
    """The API process may write files of at most 200 kB (RLIMIT_FSIZE): a 300 kB upload fits
    the upload limit but not the disk, and gets 507 with no temporary file or folder left."""
    artifacts = tmp_path / "artifacts"
    env = service_env(None, artifacts, preload_models="")
    api = Api(env, tmp_path, name="full-disk", max_file_bytes=200_000)
    noise = np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    try:
        data = encode(Image.fromarray(noise), "PNG")
        assert 200_000 < len(data) < LIMIT_BYTES
        refused = upload(api, data)
        assert_error(refused, 507, "no room")
        assert refused.headers["retry-after"] == "60"  # (it had none)
        # the job records, the measured pass times and the model store
        left = sorted(p.name for p in artifacts.iterdir())
        assert left == [
            "jobs.sqlite3",
            "jobs.sqlite3-shm",
            "jobs.sqlite3-wal",
            "models",
            "pass_times.sqlite3",
            "pass_times.sqlite3-shm",
            "pass_times.sqlite3-wal",
        ]
        assert list((artifacts / "models").iterdir()) == []
        created = api.client.post("/explain", json={"sample": "chelsea", "method": "saliency"})
        assert created.status_code == 202  # a sample needs no room: the service goes on
    finally:
        api.stop()


# --- inputs decoded faithfully or refused, finite JSON (issue 25, findings 10-12) -------------


def input_seen(api: Api, data: bytes) -> np.ndarray:
    """The image a saliency job on ``data`` explained: its input.png artifact, as RGB floats."""
    created = upload(api, data)
    assert created.status_code == 202, created.text
    view = api.wait_done(created.json()["id"])
    assert view["status"] == "succeeded", view
    picture = api.client.get(view["artifacts"]["input.png"])
    return np.asarray(Image.open(io.BytesIO(picture.content)).convert("RGB"), dtype=float)


def test_sixteen_bit_and_mpo_images_are_explained_as_they_look(api):
    """A mid-grey 16-bit PNG was explained as a white image (mean 255, not 78); an MPO (a phone
    camera's JPEG) was refused as 'format MPO not accepted'."""
    grey = input_seen(api, sixteen_bit_grey_png(20_000))
    assert abs(grey.mean() - 20_000 / 257) < 2, grey.mean()
    first_frame = input_seen(api, mpo((200, 40, 10), (0, 0, 0)))
    assert np.abs(first_frame.reshape(-1, 3).mean(0) - (200, 40, 10)).max() < 3


@pytest.mark.parametrize("kind", ["zTXt", "iTXt", "iCCP", "zTXt-late"])
def test_png_metadata_bombs_are_413s(api, kind):
    """A 50 KB PNG whose text or ICC chunk inflates to 50 MB was a 500 (Pillow's ValueError)."""
    assert_error(upload(api, png_metadata_bomb(kind)), 413, f"PNG {kind[:4]} chunk",
                 "decompresses to more than 1048576 bytes")  # fmt: skip


def upload_series(api: Api, data: bytes):
    request = SERIES | {"options": {"iterations": 20}}
    return api.client.post(
        "/explain", files={"series": ("s.npy", data, "application/octet-stream")},
        data={"request": json.dumps(request)},
    )  # fmt: skip


def test_npy_series_are_checked_header_first(api):
    """A header claiming 10¹² × 3 float64 was allocated (a MemoryError, a 500); a complex series
    was accepted with its imaginary part dropped."""
    assert_error(upload_series(api, npy_header_only((10**12, 3))), 413,
                 "1000000000000×3", "limits")  # fmt: skip
    assert_error(upload_series(api, npy_header_only((10, 3))), 422, "header says 240 bytes")
    assert_error(upload_series(api, npy(np.ones((8, 3)) * (1 + 2j))), 422, "complex numbers")
    assert_error(upload_series(api, npy(np.zeros((8, 3), dtype=object))), 422, "object")
    accepted = upload_series(api, npy(np.full((8, 3), 0.5)))
    assert accepted.status_code == 202, accepted.text
    assert api.wait_done(accepted.json()["id"])["status"] == "succeeded"


def test_series_the_engine_cannot_explain_are_refused_at_submit(api):
    """A one-step series (JSON or a one-line CSV) was accepted, then its job failed with an
    internal error; so did 1e308, which float32 makes inf. The engine's rule, at submit."""
    for data, words in [(b"1,2,3\n", ["at least 2 time steps"]),
                        (b"1e308,1,1\n1,2,3\n", ["finite as float32"]),
                        (npy(np.ones((1, 3))), ["at least 2 time steps"])]:  # fmt: skip
        response = api.client.post(
            "/explain", files={"series": ("s.csv", data, "text/csv")},
            data={"request": json.dumps(SERIES | {"method": "saliency"})},
        )  # fmt: skip
        assert_error(response, 422, *words)
        assert response.json()["error"]["code"] == "invalid_series"
    accepted = api.client.post(
        "/explain", json=SERIES | {"method": "saliency", "series": [[1.0, 2.0, 3.0]] * 2}
    )
    assert accepted.status_code == 202, accepted.text
    assert api.wait_done(accepted.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("crc", ["images: zip entry 'b.png' is corrupt", "Bad CRC-32"]),
        ("encrypted", ["images: zip entry 'b.png' is encrypted"]),
        ("deflate64", ["images: zip entry 'b.png' uses compression method 9 (Deflate64)"]),
    ],
)
def test_unreadable_zip_entries_are_422s_naming_the_entry(api, damage, words):
    """A bad CRC, an encrypted entry and Deflate64 were 500s on both training routes."""
    archive = damaged_zip(["a.png", "b.png"], "b.png", damage)
    response = api.client.post(
        "/patterns", data={"request": json.dumps({"model": "efficientnet_lite0"})},
        files={"images": ("images.zip", archive)},
    )  # fmt: skip
    assert_error(response, 422, *words)
    request = {"model": "efficientnet_lite0", "class_a": 285, "class_b": 967, "epochs": 1}
    response = api.client.post(
        "/support-sets", data={"request": json.dumps(request)},
        files={"images_a": ("a.zip", image_zip(["a.png"])), "images_b": ("b.zip", archive)},
    )  # fmt: skip
    assert_error(response, 422, *[word.replace("images:", "images_b:") for word in words])


def test_a_black_image_has_undefined_cp_scores_as_null_with_a_reason(api):
    """Every CP ratio of an all-black image is 0/0: summary.json and history.json held bare NaN
    (not JSON). Now each is null, and undefined_scores says why; the retained probability,
    which is defined, stays a number."""
    black = encode(Image.new("RGB", (64, 64)), "PNG")
    request = {"method": "pixelmask", "options": {"iterations": 2}, "resize": "none",
               "metrics": ["cp_shearletx", "cp_startgrad"]}  # fmt: skip
    created = upload(api, black, request)
    assert created.status_code == 202, created.text
    assert api.wait_done(created.json()["id"])["status"] == "succeeded"
    view = strict_json(api.client.get(f"/jobs/{created.json()['id']}").text)
    assert {key for key, value in view["scores"].items() if value is None} == CP_RATIOS
    assert set(view["undefined_scores"]) == CP_RATIOS
    assert all("all black" in reason for reason in view["undefined_scores"].values())
    assert view["scores"]["retained_probability_sg"] == pytest.approx(1.0)
    summary = strict_json(api.client.get(view["artifacts"]["summary.json"]).text)
    assert summary["scores"] == view["scores"]
    assert summary["undefined_scores"] == view["undefined_scores"]
    history = strict_json(api.client.get(view["artifacts"]["history.json"]).text)
    assert history["cp_l1_sg"] == [None] * 3 and None not in history["loss"]


def test_a_model_without_its_weights_file_lists_no_methods_and_is_refused(api):
    """torchvision models read their weights from the torch hub cache: without the file, the
    listing offered 24 methods and every job failed at run time, naming a server path."""
    listed = {model["name"]: model for model in api.client.get("/models").json()}
    assert listed["resnet18"]["methods"] == []
    assert "resnet18-" in listed["resnet18"]["unavailable"]
    bundled = listed["efficientnet_lite0"]
    assert bundled["methods"] and "unavailable" not in bundled
    assert listed["state_gru"]["mean"] is None and listed["state_gru"]["std"] is None
    request = {"sample": "chelsea", "model": "resnet18", "method": "saliency"}
    response = api.client.post("/explain", json=request)
    assert_error(response, 422, "no weights on this server")
    assert response.json()["error"]["code"] == "model_unavailable"
    assert "/torch/" not in response.json()["error"]["message"]  # no server path
