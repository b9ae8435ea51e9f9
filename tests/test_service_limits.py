"""Every accepted request has a bound (issue 25, findings 3, 4, 7 and 13): memory per job for
every method and size, cancel and time limits that reach every loop, headers answered, and URLs
that never come from the client's Host header. One embedded server with short time limits and
a public URL."""

from __future__ import annotations

import io
import json
import socket
import time

import httpx
import pytest
from PIL import Image

from testkit.stack import Api, service_env, wait_for

PUBLIC_URL = "https://explainer.example.org/api"
SOFT_LIMIT_S = 20  # long enough for a first pass on a busy machine


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    limits = {"soft_time_limit_s": SOFT_LIMIT_S, "hard_time_limit_s": SOFT_LIMIT_S + 4}
    env = service_env(None, folder / "artifacts", preload_models="", public_url=PUBLIC_URL,
                      **limits)  # fmt: skip
    server = Api(env, folder)
    yield server
    server.stop()


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def submit_image(api: Api, data: bytes, request: dict) -> httpx.Response:
    files = {"image": ("big.png", data, "image/png")}
    return api.client.post("/explain", files=files, data={"request": json.dumps(request)})


@pytest.mark.parametrize(
    ("method", "options"),
    [("saliency", {}), ("integrated_gradients", {"steps": 40}), ("gradcam", {})],
)
def test_a_pass_that_cannot_fit_the_memory_budget_is_refused_at_submit(api, method, options):
    """A 5000×5000 PNG (a few kB) explained at its own size: one row through EfficientNet-Lite0
    needs about 37 GB (79 MB at 224², measured), over the 8 GB budget; it was accepted."""
    data = png(5000)
    assert len(data) < 100_000
    request = {"model": "efficientnet_lite0", "method": method, "options": options,
               "resize": "none"}  # fmt: skip
    response = submit_image(api, data, request)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert f"{method} on efficientnet_lite0 at 5000×5000 needs about" in message
    needed = float(message.split("needs about ")[1].split(" GB")[0])
    assert 30 < needed < 45, message
    assert "limit is 8.0 GB" in message and "resize" in message


def test_an_image_that_fits_the_budget_at_its_size_is_accepted(api):
    response = submit_image(api, png(600), {"method": "saliency", "resize": "none"})
    assert response.status_code == 202, response.text
    assert api.wait_done(response.json()["id"], timeout=120)["status"] == "succeeded"


def test_cancel_and_the_time_limit_reach_a_method_inside_a_noise_tunnel(api):
    """IG with 2000 steps inside a 10-sample noise tunnel (20,000 passes, the budget): it
    reported no progress, ignored DELETE for minutes and outlived its time limits, and the next
    job waited for it. Now it reports progress, stops within seconds of DELETE, fails at the
    soft limit, and the next job runs at once."""
    request = {"sample": "chelsea", "method": "integrated_gradients",
               "options": {"steps": 2000, "internal_batch_size": 4,
                           "smoothing": {"samples": 10}}}  # fmt: skip
    job = api.client.post("/explain", json=request).json()

    def progressed() -> dict | None:
        view = api.client.get(f"/jobs/{job['id']}").json()
        return view if (view["progress"] or {}).get("step", 0) > 0 or view["finished_at"] else None

    assert wait_for(progressed, 60, "progress of the wrapped IG")["status"] == "running"
    asked = time.monotonic()
    assert api.client.delete(f"/jobs/{job['id']}").status_code == 200
    view = api.wait_done(job["id"], timeout=30)
    assert view["status"] == "cancelled", view
    assert time.monotonic() - asked < 10  # one pass of 4 rows, on a busy machine

    again = api.client.post("/explain", json={**request, "seed": 1}).json()
    started = time.monotonic()
    view = api.wait_done(again["id"], timeout=60)
    assert view["status"] == "failed" and "time limit" in view["error"], view
    assert SOFT_LIMIT_S - 1 < time.monotonic() - started < SOFT_LIMIT_S + 20

    following = api.client.post("/explain", json={"sample": "coffee", "method": "saliency"})
    assert api.wait_done(following.json()["id"], timeout=30)["status"] == "succeeded"


def test_urls_come_from_the_configured_public_url_never_the_host_header(api):
    response = api.client.post("/explain", json={"sample": "rocket", "method": "saliency"},
                               headers={"Host": "evil.example:1"})  # fmt: skip
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["url"] == f"{PUBLIC_URL}/jobs/{created['id']}"
    view = api.wait_done(created["id"], timeout=60)
    links = api.client.get(f"/jobs/{created['id']}", headers={"Host": "evil.example:1"}).json()
    assert links["artifacts"] and all(
        link.startswith(f"{PUBLIC_URL}/jobs/{created['id']}/artifacts/")
        for link in links["artifacts"].values()
    ), links
    assert view["status"] == "succeeded"


def test_a_huge_header_gets_an_answer(api):
    """A 1 MB header line: a 431 in the API's error shape (the connection was reset)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000
                           + b"\r\n\r\n")  # fmt: skip
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), head
    assert json.loads(body)["error"]["code"] == "headers_too_large"
