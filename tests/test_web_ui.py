"""The web page in a real browser: Playwright's Python package drives Debian's Chromium
(/usr/bin/chromium, installed by ./test.sh; no browser download) against the API over real HTTP,
embedded mode with the bundled model, and one test in distributed mode (redis-server, a Celery
worker, API keys).

Every test fails on a console error, an uncaught page error, a failed request, or an HTTP error
the test did not announce with ``watched.allow(status, path)``; every test saves a screenshot in
``build/screenshots/`` (EXPLAINER_SCREENSHOT_DIR). Expected values come from the API itself
(GET /jobs, GET /methods, a direct POST), not from the page.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, Request, Response, sync_playwright

from engine.data import load_sample
from testkit.browser import launch_chromium
from testkit.stack import ROOT, Api, distributed_stack, service_env

SCREENSHOTS = Path(os.environ.get("EXPLAINER_SCREENSHOT_DIR", ROOT / "build" / "screenshots"))
TERMINAL = ("succeeded", "failed", "cancelled")
# Chromium's console line for any HTTP error response; the response itself is checked instead.
HTTP_ERROR_LINE = re.compile(r"^Failed to load resource: the server responded with a status of")


class Watched:
    """A page whose console errors, page errors, failed requests and unannounced HTTP errors
    are collected as problems."""

    def __init__(self, page: Page):
        self.page, self.problems, self.allowed = page, [], []
        self.leaving = False
        self.posts: list[Request] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.on("request", lambda r: self.posts.append(r) if r.method == "POST" else None)

    def allow(self, status: int, path: str) -> None:
        """Announce a deliberate HTTP error: ``status`` from a URL path starting with ``path``."""
        self.allowed.append((status, path))

    def leave(self) -> None:
        """Announce that the page is about to load another document: the browser aborts what
        the old document still had in flight (a poll, a thumbnail), which is no problem."""
        self.leaving = True

    def _console(self, message) -> None:
        if message.type == "error" and not HTTP_ERROR_LINE.match(message.text):
            self.problems.append(f"console error: {message.text}")

    def _failed(self, request: Request) -> None:
        if self.leaving and request.failure == "net::ERR_ABORTED":
            return
        self.problems.append(f"request failed: {request.method} {request.url} {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status < 400:
            return
        path = httpx.URL(response.url).path
        if not any(response.status == s and path.startswith(p) for s, p in self.allowed):
            self.problems.append(f"HTTP {response.status} from {response.request.method} {path}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    api = Api(service_env(None, folder / "artifacts"), folder)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def open_page(browser, request, width: int = 1280, height: int = 800) -> Watched:
    """A fresh browser context (its own session storage) with a watched page; at the end of the
    test a screenshot is saved and the page must have no problems."""
    context = browser.new_context(viewport={"width": width, "height": height})
    watched = Watched(context.new_page())

    def finish():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("[", "_").replace("]", "")
        watched.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        problems = watched.problems
        context.close()
        assert not problems, problems

    request.addfinalizer(finish)
    return watched


@pytest.fixture
def page(browser, request, server) -> Watched:
    watched = open_page(browser, request)
    watched.page.goto(server.url + "/")
    watched.page.wait_for_selector("#method option", state="attached")
    return watched


def job_id_of(page: Page) -> str:
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f]+$"))
    return page.url.rsplit("/", 1)[1]


def wait_status(page: Page, statuses: tuple[str, ...], timeout_s: float = 120) -> str:
    page.wait_for_function(
        "statuses => statuses.includes(document.querySelector('.status')?.dataset.status)",
        arg=list(statuses), timeout=timeout_s * 1000,
    )  # fmt: skip
    return page.locator(".status").first.get_attribute("data-status")


def wait_cells_succeeded(page: Page, count: int) -> None:
    """Wait until ``count`` cells of a compare grid show a succeeded job."""
    page.wait_for_function(
        "n => document.querySelectorAll('.cell .status[data-status=succeeded]').length === n",
        arg=count, timeout=120_000,
    )  # fmt: skip


def images_loaded(page: Page, selector: str) -> list[int]:
    """Natural widths of the images under ``selector`` once every one has loaded."""
    page.wait_for_function(
        "s => { const all = [...document.querySelectorAll(s)]; "
        "return all.length > 0 && all.every(i => i.complete && i.naturalWidth > 0); }",
        arg=selector, timeout=30_000,
    )  # fmt: skip
    return page.eval_on_selector_all(selector, "all => all.map(i => i.naturalWidth)")


def photograph_png(folder: Path, name: str = "chelsea") -> Path:
    path = folder / f"{name}.png"
    Image.fromarray(load_sample(name)).save(path)
    return path


def test_upload_png_and_gradcam_shows_overlay_and_label(page, server, tmp_path):
    p = page.page
    p.set_input_files("#input-file", str(photograph_png(tmp_path)))
    assert p.inner_text("#input-chosen").startswith("File: chelsea.png")
    p.select_option("#method", "gradcam")
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    assert wait_status(p, TERMINAL) == "succeeded"
    assert all(width > 0 for width in images_loaded(p, "figure.overlay img"))
    job = server.client.get(f"/jobs/{job_id}").json()
    assert job["method"] == "gradcam" and job["status"] == "succeeded"
    assert job["prediction"]["label"] in p.inner_text("#prediction")
    assert job["input_name"] == "chelsea.png"  # the uploaded file's name, kept by the API
    assert p.inner_text("#input-name") == "Input: chelsea.png"
    assert p.inner_text(".steps") == "step 1 of 1"  # one pass, counted as one step
    assert re.fullmatch(r"took \d+( min \d+)? s", p.inner_text(".eta"))
    upload = next(r for r in page.posts if r.url.endswith("/explain"))
    assert upload.headers["content-type"].startswith("multipart/form-data")
    # the uploaded photograph is what the job explained: same prediction as the sample itself
    direct = server.client.post("/explain", json={"sample": "chelsea", "method": "gradcam"})
    reference = server.wait_done(direct.json()["id"])
    assert reference["prediction"]["label"] == job["prediction"]["label"]
    health = server.client.get("/health").json()
    p.wait_for_selector("#server-state:not(:empty)")
    assert p.inner_text("#server-state").startswith(f"embedded · {health['device']} · ")
    # the session's history lists the job and reopens it
    p.click("nav >> text=History")
    session = p.locator("table.jobs", has_text="This browser session")
    row = session.locator("tr", has=p.locator(f"a[href='#/jobs/{job_id}']"))
    assert row.locator("td.input").inner_text() == "chelsea.png"
    server_row = p.locator("table.jobs", has_text="Recent jobs on this server").locator(
        "tr", has=p.locator(f"a[href='#/jobs/{job_id}']"))  # fmt: skip
    assert server_row.locator("td.input").inner_text() == "chelsea.png"
    p.fill("#history-filter", "chelsea.png gradcam")
    assert row.is_visible() and p.inner_text("#history-count").endswith("rows match.")
    p.fill("#history-filter", "no-such-input-anywhere")
    assert not row.is_visible() and p.inner_text("#history-count").startswith("0 of ")
    p.fill("#history-filter", "")
    row.locator(f"a[href='#/jobs/{job_id}']").click()
    assert wait_status(p, TERMINAL, 10) == "succeeded"
    assert p.inner_text("h1") == "gradcam on efficientnet_lite0"


def test_target_class_by_label_with_type_ahead(page, server):
    p = page.page
    page.allow(422, "/explain")
    labels = server.client.get("/models/efficientnet_lite0/labels").json()
    p.wait_for_function("n => document.querySelectorAll('#target-labels option').length === n",
                        arg=len(labels))  # fmt: skip
    p.select_option("#method", "gradcam")
    p.fill("#target", "no such class")
    p.click("button[type=submit]")
    p.wait_for_selector("#target-error:not(:empty)")
    direct = server.client.post("/explain", json={"sample": "chelsea", "method": "gradcam",
                                                  "target": "no such class"})  # fmt: skip
    assert p.inner_text("#target-error") == direct.json()["error"]["message"]
    p.fill("#target", "tiger cat")
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    assert wait_status(p, TERMINAL) == "succeeded"
    job = server.client.get(f"/jobs/{job_id}").json()
    assert job["prediction"]["target"] == labels.index("tiger cat")
    assert "explaining tiger cat" in p.inner_text("#prediction")


def test_waveletx_progress_rises_and_loss_curve_is_drawn(page, server):
    p = page.page
    p.select_option("#method", "waveletx")
    assert p.locator(".field.prominent #opt-init").count() == 1  # init shown prominently
    # the basic options (the catalogue's x-basic-options) shown, the rest under "advanced"
    schema = next(m for m in server.client.get("/methods").json()
                  if m["name"] == "waveletx")["options_schema"]  # fmt: skip
    basic = schema["x-basic-options"]
    assert {"init", "iterations", "image_size", "stop_metric"} <= set(basic)
    for name in schema["properties"]:
        assert p.is_visible(f"[id='opt-{name}']") == (name in basic), name
    p.fill("#opt-iterations", "30")
    p.click("details.advanced > summary")
    p.fill("#opt-noise_samples", "4")
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    seen: list[float] = []
    states: set[tuple[str, bool]] = set()  # (status text, the bar has a value)
    etas: list[str] = []
    sources: list[str] = []  # "server": the API's eta_s (the model's measured time per pass)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = p.evaluate("""() => { const q = s => document.querySelector(s);
            return [q('.status').textContent, q('progress').hasAttribute('value'),
                    q('progress').value, q('.eta').textContent, q('.eta').dataset.source]; }""")
        states.add((state[0], state[1]))
        etas.append(state[3])
        sources.append(state[4])
        value = float(state[2]) if state[1] else 0.0
        if not seen or value != seen[-1]:
            seen.append(value)
        if p.locator(".status").get_attribute("data-status") in TERMINAL:
            break
        time.sleep(0.02)
    assert wait_status(p, TERMINAL, 5) == "succeeded"
    # never an empty bar: until the first step it has no value (it moves) and says why
    assert all(has_value or text in ("loading", "queued", "starting") for text, has_value in states)
    assert any(re.fullmatch(r"about \d+( min \d+)? s left \(\d+( min \d+)? s so far\)", e)
               for e in etas), set(etas)  # fmt: skip
    # the server estimated it: the warm-up measured the model at this size
    from_server = {e for e, source in zip(etas, sources, strict=True) if source == "server"}
    assert any(e.startswith("about ") for e in from_server), (set(etas), set(sources))
    increases = sum(b > a for a, b in itertools.pairwise(seen))
    assert increases >= 2, seen
    assert seen == sorted(seen), seen
    job = server.client.get(f"/jobs/{job_id}").json()
    history = server.client.get(job["artifacts"]["history.json"]).json()
    p.wait_for_function("() => Number(document.querySelector('svg.chart').dataset.points) > 1")
    assert int(p.get_attribute("svg.chart", "data-points")) == len(history["loss"]) == 31
    ticks = p.locator("svg.chart text.tick").all_text_contents()
    assert {"0", "15", "30"} <= set(ticks)  # the iteration axis
    assert p.locator("svg.chart .axis-loss").count() == 1  # and the loss axis, with its ticks
    assert p.locator("svg.chart text.tick-loss").count() >= 2
    assert images_loaded(p, "img[data-artifact='explanation.png']")
    # every score of the job is listed with its meaning
    for key in job["scores"]:
        assert p.locator("table.scores th[scope=row]", has_text=key).count() >= 1


def test_compare_grid_of_three_methods(page, server):
    p = page.page
    p.click("nav >> text=Compare")
    p.wait_for_selector("#compare-gradcam")
    methods = ["gradcam", "saliency", "gradient_x_input"]
    for method in methods:
        p.check(f"#compare-{method}")
    p.click("button[type=submit]")
    p.wait_for_url(re.compile(r".*#/compare/[0-9a-f,]+$"))
    ids = p.url.rsplit("/", 1)[1].split(",")
    assert len(ids) == 3
    wait_cells_succeeded(p, 3)
    assert len(images_loaded(p, ".cell figure.overlay img.layer")) == 3
    jobs = [server.client.get(f"/jobs/{i}").json() for i in ids]
    assert sorted(j["method"] for j in jobs) == sorted(methods)
    header = p.locator("table.compare-scores thead th").all_inner_texts()
    assert [h for h in header if h in methods] == [j["method"] for j in jobs]


def test_compare_one_mask_method_with_three_inits(page, server):
    p = page.page
    p.click("nav >> text=Compare")
    p.check("#compare-pixelmask")
    for init in ("ones", "uniform", "startgrad"):
        p.set_checked(f"#init-{init}", True)
    p.fill("#mask-iterations", "3")
    p.click("button[type=submit]")
    p.wait_for_url(re.compile(r".*#/compare/[0-9a-f,]+$"))
    ids = p.url.rsplit("/", 1)[1].split(",")
    wait_cells_succeeded(p, 3)
    jobs = [server.client.get(f"/jobs/{i}").json() for i in ids]
    assert [(j["method"], j["options"]["init"], j["options"]["iterations"]) for j in jobs] == [
        ("pixelmask", "ones", 3),
        ("pixelmask", "uniform", 3),
        ("pixelmask", "startgrad", 3),
    ]
    header = p.locator("table.compare-scores thead th").all_inner_texts()
    assert header[1:4] == ["pixelmask · ones", "pixelmask · uniform", "pixelmask · startgrad"]
    row = p.locator("table.compare-scores tr", has=p.locator("th", has_text="mask_mean"))
    shown = [float(t) for t in row.locator("td.num").all_inner_texts()]
    assert shown == pytest.approx([j["scores"]["mask_mean"] for j in jobs], rel=1e-3)
    # the best value of the row is marked, by the glossary's direction (mask_mean: lower)
    assert server.client.get("/scores").json()["mask_mean"]["better"] == "lower"
    classes = [c.get_attribute("class") for c in row.locator("td.num").all()]
    best = [i for i, c in enumerate(classes) if "best" in c.split()]
    assert best == [i for i, v in enumerate(shown) if v == min(shown)]


def test_invalid_file_shows_the_api_message(page, server, tmp_path):
    p = page.page
    page.allow(422, "/explain")
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"this is not a picture\n" * 10)
    p.set_input_files("#input-file", str(fake))
    p.select_option("#method", "gradcam")
    p.click("button[type=submit]")
    p.wait_for_selector("#input-error:not(:empty)")
    direct = server.client.post(
        "/explain", files={"image": ("holiday.png", fake.read_bytes(), "image/png")},
        data={"request": '{"method": "gradcam"}'},
    )  # fmt: skip
    assert direct.status_code == 422
    assert p.inner_text("#input-error") == direct.json()["error"]["message"]
    assert "#/jobs/" not in p.url


def test_cancel_a_running_job(page, server):
    p = page.page
    p.select_option("#method", "waveletx")  # 300 iterations by default: a minute or more here
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    p.wait_for_function(
        "() => document.querySelector('.status').dataset.status === 'running' && "
        "Number(document.querySelector('progress').value) >= 1", timeout=60_000,
    )  # fmt: skip
    p.click("#cancel")
    assert wait_status(p, TERMINAL, 30) == "cancelled"
    assert p.inner_text(".status").lower() == "cancelled"
    assert server.client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_options_form_refuses_out_of_bounds_values(page, server):
    p = page.page
    page.allow(422, "/explain")  # the budget check below is the server's
    schema = next(m for m in server.client.get("/methods").json()
                  if m["name"] == "integrated_gradients")["options_schema"]  # fmt: skip
    maximum = schema["properties"]["steps"]["maximum"]
    p.select_option("#method", "integrated_gradients")
    p.fill("#opt-steps", str(maximum + 1))
    p.click("button[type=submit]")
    message = f"Input should be less than or equal to {maximum}"
    p.wait_for_selector("#opt-steps-error:not(:empty)")
    assert p.inner_text("#opt-steps-error") == message
    # nested: the noise tunnel's samples
    samples = schema["$defs"]["SmoothingOptions"]["properties"]["samples"]
    p.fill("#opt-steps", "4")
    p.check("#opt-smoothing-use")
    p.fill("[id='opt-smoothing.samples']", "0")
    p.click("button[type=submit]")
    error = p.locator("[id='opt-smoothing.samples-error']")
    assert error.inner_text() == f"Input should be greater than or equal to {samples['minimum']}"
    assert p.inner_text("#opt-steps-error") == ""
    assert not [r for r in page.posts if r.url.endswith("/explain")]  # refused before sending
    # within every bound but over the server's cost budget: the API's message on the form
    p.fill("#opt-steps", str(maximum))
    p.fill("[id='opt-smoothing.samples']", str(samples["maximum"]))
    p.click("button[type=submit]")
    p.wait_for_selector("#form-error:not(:empty)")
    direct = server.client.post("/explain", json={
        "sample": "chelsea", "method": "integrated_gradients",
        "options": {"steps": maximum, "smoothing": {"samples": samples["maximum"]}}})  # fmt: skip
    assert p.inner_text("#form-error") == direct.json()["error"]["message"]


def sent_body(watched: Watched) -> dict:
    """The JSON body of the page's last POST /explain."""
    return next(r for r in reversed(watched.posts) if r.url.endswith("/explain")).post_data_json


def test_nested_options_reach_the_api(page, server):
    p = page.page
    # a noise tunnel switched on with its defaults is sent, as an empty object
    p.select_option("#method", "saliency")
    p.check("#opt-smoothing-use")
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    assert sent_body(page)["options"] == {"smoothing": {}}
    recorded = server.client.get(f"/jobs/{job_id}").json()["options"]["smoothing"]
    assert recorded["kind"] == "smoothgrad" and recorded["samples"] == 25
    # an add-on's base options follow its base method, one level down, with a nested tunnel
    p.click("nav >> text=Explain")
    p.select_option("#method", "crigrad")
    p.select_option("#opt-base", "integrated_gradients")
    p.fill("[id='opt-base_options.steps']", "5")
    p.check("[id='opt-base_options.smoothing-use']")
    p.fill("[id='opt-base_options.smoothing.samples']", "2")
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    expected = {"base": "integrated_gradients",
                "base_options": {"steps": 5, "smoothing": {"samples": 2}}}  # fmt: skip
    assert sent_body(page)["options"] == expected
    job = server.wait_done(job_id)
    assert job["status"] == "succeeded", job["error"]
    recorded = job["options"]["base_options"]  # with every default filled in
    assert recorded["steps"] == 5 and recorded["smoothing"]["samples"] == 2
    assert wait_status(p, TERMINAL, 10) == "succeeded"


def test_job_page_reopens_by_its_url(browser, request, server):
    created = server.client.post("/explain", json={"sample": "coffee", "method": "layercam"})
    job = server.wait_done(created.json()["id"])
    watched = open_page(browser, request)
    p = watched.page
    p.goto(f"{server.url}/#/jobs/{job['id']}")
    assert wait_status(p, TERMINAL, 30) == "succeeded"
    assert p.inner_text("h1") == "layercam on efficientnet_lite0"
    assert job["prediction"]["label"] in p.inner_text("#prediction")
    assert all(width == 224 for width in images_loaded(p, "figure.overlay img"))
    p.click("text=Options and reproducibility record")
    p.wait_for_function("() => document.querySelector('pre.record').textContent.includes('sha256')")
    p.goto(f"{server.url}/#/jobs/{'0' * 32}")  # showed 'loading' and a Cancel button
    p.wait_for_function("() => document.querySelector('.job [role=alert]').textContent")
    assert "no job" in p.inner_text(".job [role=alert]") and not p.is_visible("#cancel")
    assert watched.problems == [f"HTTP 404 from GET /jobs/{'0' * 32}"]  # the one expected
    watched.problems.clear()


def test_undefined_scores_are_shown_with_their_reason(browser, request, server):
    """The CP ratios of an all-black image are 0/0: JSON null, which the page showed as 'null';
    it shows 'undefined' and the reason from the job's undefined_scores."""
    black = io.BytesIO()
    Image.new("RGB", (64, 64)).save(black, format="PNG")
    created = server.client.post(
        "/explain", files={"image": ("black.png", black.getvalue(), "image/png")},
        data={"request": json.dumps({"method": "saliency", "metrics": ["cp_shearletx"]})},
    )  # fmt: skip
    job = server.wait_done(created.json()["id"])
    assert job["status"] == "succeeded" and job["scores"]["cp_l1_sx"] is None, job
    p = open_page(browser, request).page
    p.goto(f"{server.url}/#/jobs/{job['id']}")
    assert wait_status(p, TERMINAL, 30) == "succeeded"
    row = p.locator("table.scores tr", has=p.locator("th", has_text=re.compile("^cp_l1_sx$")))
    assert row.locator("td.num").inner_text() == "undefined"
    assert f"Undefined here: {job['undefined_scores']['cp_l1_sx']}." in row.inner_text()


def test_time_series_sample_with_its_model(page, server):
    p = page.page
    p.select_option("#model", "state_gru")
    p.click("button[data-sample='state:3']")
    p.select_option("#method", "extremal_mask")
    p.fill("#opt-iterations", "20")
    p.click("button[type=submit]")
    job_id = job_id_of(p)
    assert wait_status(p, TERMINAL) == "succeeded"
    assert images_loaded(p, "img[data-artifact='series.png']")
    job = server.client.get(f"/jobs/{job_id}").json()
    assert "auroc" in job["scores"]  # the sample's ground truth came along
    row = p.locator("table.scores tr", has=p.locator("th", has_text=re.compile("^auroc$")))
    assert float(row.locator("td.num").inner_text()) == pytest.approx(job["scores"]["auroc"], 1e-3)


def test_narrow_window_labels_and_keyboard(browser, request, server):
    watched = open_page(browser, request, width=390, height=800)
    p = watched.page
    p.goto(server.url + "/")
    p.wait_for_selector("#method option", state="attached")
    overflow = p.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    unlabelled = p.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
                 && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unlabelled == []
    p.focus("button[data-sample='coffee']")
    p.keyboard.press("Enter")
    assert p.inner_text("#input-chosen") == "Sample: coffee"
    assert p.get_attribute("button[data-sample='coffee']", "aria-pressed") == "true"


def test_distributed_mode_with_an_api_key(browser, request, tmp_path):
    with distributed_stack(tmp_path, api_keys="web-key") as api:
        watched = open_page(browser, request)
        for path in ("/methods", "/models", "/quality-metrics", "/scores", "/samples"):
            watched.allow(401, path)  # before the key is given
        p = watched.page
        p.goto(api.url + "/")
        p.wait_for_selector("#key-dialog[open]")
        p.fill("#key-input", "web-key")
        p.click("#key-form button")
        p.wait_for_selector("#method option", state="attached")
        p.select_option("#method", "gradcam")
        p.click("button[type=submit]")
        job_id = job_id_of(p)
        assert wait_status(p, TERMINAL) == "succeeded"
        assert images_loaded(p, "figure.overlay img")
        job = api.client.get(f"/jobs/{job_id}", headers={"X-API-Key": "web-key"}).json()
        assert job["prediction"]["label"] in p.inner_text("#prediction")
        assert p.evaluate("() => sessionStorage.getItem('explainer.apiKey')") == "web-key"
        assert p.evaluate("() => localStorage.length") == 0  # the key stays in the session
        p.wait_for_selector("#server-state:not(:empty)")
        assert p.inner_text("#server-state").startswith("distributed · ")
        # History lists the key's jobs from the server, without the session's own list
        p.evaluate("() => sessionStorage.removeItem('explainer.jobs')")
        p.click("nav >> text=History")
        server_jobs = p.locator("table.jobs", has_text="Recent jobs of this API key")
        server_jobs.locator(f"a[href='#/jobs/{job_id}']").click()
        assert wait_status(p, TERMINAL, 10) == "succeeded"
        # its pictures load before the stack stops (else the browser reports refused requests)
        assert len(images_loaded(p, "figure img")) >= 3  # input, heat map, overlay


def no_overflow(page: Page, view: str) -> None:
    """The document is no wider than the window (nothing scrolls the page sideways)."""
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"{view}: the page is {widths[0]} px wide in {widths[1]} px"


def test_every_view_fits_a_phone_and_the_job_page_explains_its_colours(browser, request, server):
    """At 390 px no view scrolls sideways: the explain form of each input kind, the job page of a
    gradient, a CAM, a mask method and a series job, History, Compare, Study. The job pages show the
    input's name, steps, the time taken, a colour bar of the heat map's colour map (diverging for
    a signed map, sequential for CAMs and masks), the loss chart's axes, each score beside its
    random baseline, "run again" and "download all (zip)"."""
    bodies = {
        "gradient": {"sample": "coffee", "method": "saliency", "metrics": ["pixel_perturbation"],
                     "options": {"heatmap_reduction": "signed_sum"}},
        "cam": {"sample": "chelsea", "method": "gradcam"},
        "mask": {"sample": "chelsea", "method": "pixelmask",
                 "options": {"iterations": 6, "noise_samples": 2}},
        "series": {"sample": "state:3", "model": "state_gru", "method": "extremal_mask",
                   "options": {"iterations": 10}},
    }  # fmt: skip
    ids = {kind: server.client.post("/explain", json=body).json()["id"]
           for kind, body in bodies.items()}  # fmt: skip
    jobs = {kind: server.wait_done(job_id) for kind, job_id in ids.items()}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    watched = open_page(browser, request, width=390, height=800)
    p = watched.page
    p.goto(server.url + "/")
    p.wait_for_selector("#method option", state="attached")
    for method in ("shearletx", "integrated_gradients"):  # a long form; nested options
        p.select_option("#method", method)
        no_overflow(p, f"explain form ({method})")
    p.select_option("#model", "state_gru")
    p.wait_for_selector("button[data-sample='state:3']")
    assert not p.is_visible("#resize")  # a series is never resized: no such field
    p.click("details.more > summary")
    assert p.is_visible("#seed") and not p.is_visible("#resize")
    no_overflow(p, "explain form (series)")

    scores = server.client.get("/scores").json()
    for kind, job in jobs.items():
        p.goto(f"{server.url}/#/jobs/{job['id']}")
        assert wait_status(p, TERMINAL, 30) == "succeeded"
        images_loaded(p, "figure img")
        p.wait_for_selector("#run-again")
        no_overflow(p, f"job page ({kind})")
        assert p.inner_text("#input-name") == f"Input: {bodies[kind]['sample']}"
        assert re.fullmatch(r"took \d+( min \d+)? s", p.inner_text(".eta")), kind
        assert p.inner_text(".steps").startswith("step "), kind
        assert p.locator("nav [aria-current]").count() == 0  # no tab is this page
        bundle = p.locator("#bundle")
        assert bundle.get_attribute("href") == f"/jobs/{job['id']}/bundle.zip"
        if kind == "series":
            assert p.locator(".colour-bar").count() == 0  # the plot shades its own map
            continue
        p.wait_for_selector(".colour-bar")
        summary = server.client.get(job["artifacts"]["summary.json"]).json()
        key = summary["heatmap_colours"]
        expected = "coolwarm" if kind == "gradient" else "inferno"
        assert key["colormap"] == expected and key["signed"] == (kind == "gradient"), kind
        assert p.get_attribute(".colour-bar", "data-colormap") == expected
        ticks = p.locator(".colour-key .ticks span").all_inner_texts()
        assert ticks[-1] == p.evaluate("v => Number(v.toPrecision(4)).toString()", key["high"])
    # the mask job's loss chart has its axes
    p.goto(f"{server.url}/#/jobs/{jobs['mask']['id']}")
    p.wait_for_selector("svg.chart text.tick-loss")
    assert p.locator("svg.chart .axis-loss").count() == 1
    assert "iteration" in p.locator("svg.chart text.axis-label").all_text_contents()
    assert p.locator("svg.chart text.tick").count() >= 5
    # each score beside its random baseline, flagged when worse (the job's baselines)
    gradient = jobs["gradient"]
    p.goto(f"{server.url}/#/jobs/{gradient['id']}")
    p.wait_for_selector("table.scores")
    for key, entry in gradient.get("baselines", {}).items():
        row = p.locator("table.scores tr", has=p.locator("th", has_text=re.compile(f"^{key}$")))
        cell = row.locator("td.num")
        assert cell.locator(".baseline").count() == 1
        assert (cell.locator(".warning").count() == 1) == bool(entry.get("worse")), key
        assert scores[key]["better"] in ("higher", "lower")
    # the bundle downloads, when the server has that endpoint
    if server.client.get(f"/jobs/{gradient['id']}/bundle.zip").status_code == 200:
        with p.expect_download() as download:
            p.click("#bundle")
        assert download.value.suggested_filename == f"{gradient['id']}.zip"
    # run again: the form filled from the job
    p.click("#run-again")
    p.wait_for_function("() => document.querySelector('form.explain')?.dataset.again")
    assert p.input_value("#method") == "saliency"
    assert p.input_value("#opt-heatmap_reduction") == "signed_sum"
    assert p.get_attribute("button[data-sample='coffee']", "aria-pressed") == "true"
    assert p.locator("nav [aria-current]").inner_text() == "Explain"
    no_overflow(p, "run again")

    p.goto(f"{server.url}/#/history")
    p.wait_for_selector(".server-jobs table.jobs")
    no_overflow(p, "history")
    p.goto(f"{server.url}/#/compare")
    p.wait_for_selector("#compare-gradcam")
    no_overflow(p, "compare form")
    p.goto(f"{server.url}/#/compare/{ids['cam']},{ids['gradient']},{ids['mask']}")
    wait_cells_succeeded(p, 3)
    images_loaded(p, ".cell figure img")
    no_overflow(p, "compare grid")
    p.goto(f"{server.url}/#/studies")  # a study's own page: test_study_from_the_form_...
    p.wait_for_selector("fieldset.variant select.variant-method option", state="attached")
    no_overflow(p, "study form")


def test_api_docs_are_served_offline(browser, request, server):
    """/docs is Swagger UI from the package's own files: with every request to another host
    refused it renders the API's operations, and the page's "API" link opens it."""
    watched = open_page(browser, request)
    p = watched.page
    elsewhere: list[str] = []

    def refuse(route):
        elsewhere.append(route.request.url)
        route.abort()

    p.context.route(lambda url: url.startswith(("http:", "https:")) and not url.startswith(
        server.url), refuse)  # fmt: skip
    p.goto(server.url + "/")
    p.wait_for_selector("#method option", state="attached")
    watched.leave()
    p.click("nav >> text=API")
    p.wait_for_url(f"{server.url}/docs")
    p.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert p.inner_text(".swagger-ui .info .title").startswith("Explainer")
    operations = server.client.get("/openapi.json").json()["paths"]
    assert p.locator(".opblock").count() >= len(operations)
    assert p.locator(".opblock-summary-path", has_text=re.compile(r"^/explain")).count() >= 1
    assert elsewhere == []  # nothing was even asked of another host
    assert p.evaluate("() => typeof SwaggerUIBundle") == "function"


def wait_study_status(page: Page, timeout_s: float = 180) -> str:
    """The study page's status once it is terminal."""
    return wait_status(page, TERMINAL, timeout_s)


def study_table(page: Page) -> dict[str, list[str]]:
    """The ranked table as shown: {variant: [cell text per score column]}, header under ""."""
    page.wait_for_selector("#study-table tbody tr")
    header = page.locator("#study-table thead th").all_inner_texts()
    rows = {"": header}
    for tr in page.locator("#study-table tbody tr").all():
        rows[tr.get_attribute("data-variant")] = tr.locator("td").all_inner_texts()
    return rows


def test_study_from_the_form_to_its_table_figure_download_and_url(page, server, browser,
                                                                   request, tmp_path):  # fmt: skip
    """2 bundled photographs × 2 variants (saliency, Grad-CAM relabelled) × pixel_perturbation:
    the progress reaches 4 of 4, the table lists both variants with their means (checked against
    scores.csv by hand) and marks the lower mean of pixel_perturbation, the figure loads,
    study.zip downloads with the same scores.csv, and #/studies/<id> shows the same table in a
    fresh page and at 390 px without sideways scrolling."""
    p = page.page
    p.click("nav >> text=Study")
    p.wait_for_selector("fieldset.variant select.variant-method option", state="attached")
    assert p.locator("nav [aria-current]").inner_text() == "Study"
    p.click("#study-none")
    for name in ("chelsea", "coffee"):
        p.click(f"#view button[data-sample='{name}']")
    assert p.inner_text("#study-inputs-chosen") == "2 samples: chelsea, coffee"
    variants = p.locator("fieldset.variant")
    assert variants.count() == 2  # two to begin with, each removable
    p.click("#add-variant")
    assert variants.count() == 3
    variants.nth(2).locator("button.remove").click()
    assert variants.count() == 2
    variants.nth(0).locator("select.variant-method").select_option("saliency")
    variants.nth(1).locator("select.variant-method").select_option("gradcam")
    variants.nth(1).locator("input.variant-label").fill("Grad-CAM")
    # a metric that needs an optimisation history applies to no variant here
    assert p.is_disabled("#metric-iterations_to_target")
    p.check("#metric-pixel_perturbation")
    p.click("button[type=submit]")
    p.wait_for_url(re.compile(r".*#/studies/[0-9a-f]+$"))
    study_id = p.url.rsplit("/", 1)[1]
    assert next(r for r in page.posts if r.url.endswith("/studies")).post_data_json == {
        "model": "efficientnet_lite0", "inputs": {"samples": ["chelsea", "coffee"]},
        "variants": [{"method": "saliency", "options": {}},
                     {"method": "gradcam", "options": {}, "label": "Grad-CAM"}],
        "metrics": ["pixel_perturbation"], "targets": "predicted", "seed": 0,
        "resize": "center_crop",
    }  # fmt: skip
    # while it runs: done of total, and a partial table of the variants whose batch is done
    seen: list[tuple[str, tuple[str, ...]]] = []  # (progress, the table's variants)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status, text, rows = p.evaluate("""() => [document.querySelector('.status')?.dataset.status,
            document.querySelector('#study-progress')?.textContent,
            [...document.querySelectorAll('#study-table tbody tr')].map(r => r.dataset.variant)]""")
        if status in TERMINAL:
            break
        if text and (not seen or seen[-1] != (text, tuple(rows))):
            seen.append((text, tuple(rows)))
        time.sleep(0.05)
    assert wait_study_status(p, 5) == "succeeded"
    assert p.inner_text("#study-progress") == "4 of 4 results"
    assert p.evaluate("() => [document.querySelector('progress').value, "
                      "document.querySelector('progress').max]") == [4, 4]  # fmt: skip
    done = [int(re.fullmatch(r"(\d) of 4 results", text)[1]) for text, _ in seen]
    assert done == sorted(done), seen
    # the partial table: the variants with a finished batch, none before the first
    for count, (_, rows) in zip(done, seen, strict=True):
        assert set(rows) <= {"saliency", "Grad-CAM"} and bool(rows) == (count > 0), seen
    study = server.client.get(f"/studies/{study_id}").json()
    assert study["status"] == "succeeded"
    assert study["progress"] == {"done": 4, "failed": 0, "cancelled": 0, "total": 4}

    # the table against scores.csv, averaged here
    csv_text = server.client.get(study["artifacts"]["scores.csv"]).text
    values: dict[tuple[str, str], list[float]] = {}
    for row in csv.DictReader(io.StringIO(csv_text)):
        if row["value"] != "":
            values.setdefault((row["variant"], row["score"]), []).append(float(row["value"]))
    means = {key: sum(v) / len(v) for key, v in values.items()}
    assert len(values[("Grad-CAM", "pixel_perturbation")]) == 2
    table = study_table(p)
    assert list(table)[1:] == ["saliency", "Grad-CAM"]
    column = next(i for i, text in enumerate(table[""]) if text.startswith("pixel_perturbation\n"))
    assert "↓ lower" in table[""][column]  # the better direction, from GET /scores
    assert server.client.get("/scores").json()["pixel_perturbation"]["better"] == "lower"
    for variant in ("saliency", "Grad-CAM"):
        shown = table[variant][column - 1]
        assert float(shown.split()[0]) == pytest.approx(means[(variant, "pixel_perturbation")],
                                                        rel=1e-3)  # fmt: skip
        assert "n = 2" in shown and re.search(r"\[[-\d.e]+, [-\d.e]+\]", shown), shown
    best = min(("saliency", "Grad-CAM"), key=lambda v: means[(v, "pixel_perturbation")])
    marked = p.locator(f"#study-table td:nth-child({column + 1}).best")
    assert marked.count() == 1
    assert marked.locator("xpath=..").get_attribute("data-variant") == best

    # a figure per metric, and study.zip with the same scores.csv
    assert images_loaded(p, "img[data-artifact='pixel_perturbation.png']")
    with p.expect_download() as download:
        p.click("a[data-artifact='study.zip']")
    saved = tmp_path / "study.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert archive.read("scores.csv").decode() == csv_text

    # reopened by its URL in a fresh page: the same table; listed under the form
    fresh = open_page(browser, request).page
    fresh.goto(f"{server.url}/#/studies/{study_id}")
    assert wait_study_status(fresh, 30) == "succeeded"
    assert study_table(fresh) == table
    fresh.goto(f"{server.url}/#/studies")
    fresh.wait_for_selector(f".study-list a[href='#/studies/{study_id}']")

    # a phone: neither the form nor the study scrolls sideways
    phone = open_page(browser, request, width=390, height=800).page
    phone.goto(f"{server.url}/#/studies")
    phone.wait_for_selector(".study-list table")
    no_overflow(phone, "study form")
    unlabelled = phone.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
                 && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unlabelled == []
    phone.goto(f"{server.url}/#/studies/{study_id}")
    assert wait_study_status(phone, 30) == "succeeded"
    images_loaded(phone, "img[data-artifact='pixel_perturbation.png']")
    no_overflow(phone, "study page")


def test_study_form_refusals(page, server, tmp_path):
    """No input chosen: refused on the page, nothing sent; a target the model does not know:
    the API's own message beside the target field, as for a job; two variants of one label: the
    API's message under the variants; a .zip without an image: sent as multipart (request and
    inputs), the API's message under Inputs."""
    p = page.page
    page.allow(422, "/studies")
    p.click("nav >> text=Study")
    p.wait_for_selector("fieldset.variant select.variant-method option", state="attached")
    p.click("#study-none")
    p.click("button[type=submit]")
    assert p.inner_text("#study-inputs-error") == "Choose at least one sample, or a .zip of inputs."
    assert not [r for r in page.posts if r.url.endswith("/studies")]
    p.click("#view button[data-sample='rocket']")
    p.fill("#target", "no such class")
    p.click("button[type=submit]")
    p.wait_for_selector("#target-error:not(:empty)")
    direct = server.client.post("/studies", json={
        "inputs": {"samples": ["rocket"]}, "variants": [{"method": "saliency"}],
        "targets": "no such class"})  # fmt: skip
    assert direct.status_code == 422
    assert p.inner_text("#target-error") == direct.json()["error"]["message"]
    p.fill("#target", "")
    # two variants with the same (default) label: the API's message under the variants
    p.locator("fieldset.variant select.variant-method").nth(1).select_option("saliency")
    p.click("button[type=submit]")
    p.wait_for_selector("#variants-error:not(:empty)")
    direct = server.client.post("/studies", json={
        "inputs": {"samples": ["rocket"]}, "variants": [{"method": "saliency"}] * 2})  # fmt: skip
    assert p.inner_text("#variants-error") == direct.json()["error"]["message"]
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("notes.txt", "no picture here\n")
    p.set_input_files("#study-zip", str(archive))
    assert p.inner_text("#study-inputs-chosen").startswith("File: notes.zip")
    p.click("button[type=submit]")
    p.wait_for_selector("#study-inputs-error:not(:empty)")
    upload = [r for r in page.posts if r.url.endswith("/studies")][-1]
    assert upload.headers["content-type"].startswith("multipart/form-data")
    request_field = json.dumps({"variants": [{"method": "saliency"}]})
    direct = server.client.post("/studies", data={"request": request_field},
                                files={"inputs": ("notes.zip", archive.read_bytes())})  # fmt: skip
    assert direct.status_code == 422
    assert p.inner_text("#study-inputs-error") == direct.json()["error"]["message"]
    assert "#/studies/" not in p.url
    # a study that does not exist: the API's message, nothing loading, nothing to cancel
    page.allow(404, "/studies/")
    p.goto(f"{server.url}/#/studies/{'0' * 32}")
    p.wait_for_selector(".study-page [role=alert]:not(:empty)")
    assert "no study" in p.inner_text(".study-page [role=alert]")
    assert not p.is_visible("#cancel") and not p.is_visible(".status")


def test_cancel_a_running_study(browser, request, server):
    """The study page's Cancel stops a running study: the page and the API say cancelled."""
    created = server.client.post("/studies", json={
        "inputs": {"samples": ["chelsea", "coffee"]},
        "variants": [{"method": "pixelmask", "options": {"iterations": 300}},
                     {"method": "saliency"}]})  # fmt: skip
    assert created.status_code == 202, created.text
    study_id = created.json()["id"]
    p = open_page(browser, request).page
    p.goto(f"{server.url}/#/studies/{study_id}")
    p.wait_for_function("() => document.querySelector('.status')?.dataset.status === 'running'",
                        timeout=60_000)  # fmt: skip
    p.click("#cancel")
    assert wait_study_status(p, 60) == "cancelled"
    assert not p.is_visible("#cancel")
    assert server.client.get(f"/studies/{study_id}").json()["status"] == "cancelled"
