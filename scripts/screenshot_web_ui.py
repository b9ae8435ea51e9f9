"""Take the README's screenshots of the web page from a real run: an embedded server with the
bundled model, Debian's Chromium driven by Playwright (as in tests/test_web_ui.py).

    .venv/bin/python scripts/screenshot_web_ui.py            # writes docs/web_ui*.png

1. ``docs/web_ui.png``: the job page of a WaveletX explanation of the photograph ``chelsea``
   (loss curve, input, mask, explanation, overlay, scores with their meaning).
   ``docs/web_ui_phone.png``: the same job page in a 390 px wide window (a phone).
2. ``docs/web_ui_compare.png``: the compare grid of Grad-CAM, Integrated Gradients and WaveletX.
3. ``docs/web_ui_vit.png``: Grad-CAM on a timm ViT-Tiny uploaded to the model store as a state
   dict (random weights: no ViT weights ship offline), at its default layer ``blocks.11.norm1``.
4. ``docs/web_ui_study.png``: a study made on the Study form: four photographs × Grad-CAM,
   Saliency and Integrated Gradients (16 steps) × faithfulness and pixel perturbation (the
   ranked table, the figures, the downloads).

``--only vit`` takes one of them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.browser import launch_chromium  # noqa: E402
from testkit.stack import Api, service_env  # noqa: E402

SUCCEEDED = "n => document.querySelectorAll('.status[data-status=succeeded]').length >= n"
IMAGES_LOADED = "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
METRICS = ("cp_shearletx", "faithfulness")
STUDY_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")
STUDY_METRICS = ("faithfulness", "pixel_perturbation")


def submit_with_metrics(page: Page, jobs: int) -> None:
    """Tick the quality metrics, submit, and wait for ``jobs`` finished jobs and their pictures."""
    for metric in METRICS:
        page.check(f"#metric-{metric}")
    page.click("button[type=submit]")
    page.wait_for_function(SUCCEEDED, arg=jobs, timeout=600_000)
    if jobs == 1:  # a job page: its result, colour bar and scores are drawn after the status
        page.wait_for_selector(".colour-key")
    else:
        page.wait_for_function("n => document.querySelectorAll('.cell img').length >= n", arg=jobs)
    page.wait_for_function(IMAGES_LOADED)


def explain_waveletx(page: Page, url: str, iterations: int) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#method option", state="attached")
    page.select_option("#method", "waveletx")
    page.fill("#opt-iterations", str(iterations))
    submit_with_metrics(page, 1)


def compare(page: Page, url: str, iterations: int) -> None:
    page.goto(url + "/#/compare")
    page.wait_for_selector("#compare-gradcam")
    for method in ("gradcam", "integrated_gradients", "waveletx"):
        page.check(f"#compare-{method}")
    page.fill("#mask-iterations", str(iterations))
    submit_with_metrics(page, 3)


def study(page: Page, url: str) -> None:
    """A study from the Study form, followed to its table and figures."""
    page.goto(url + "/#/studies")
    page.wait_for_selector("fieldset.variant select.variant-method option", state="attached")
    page.click("#study-none")
    for name in STUDY_SAMPLES:
        page.click(f"#view button[data-sample='{name}']")
    page.click("#add-variant")
    variants = page.locator("fieldset.variant")
    for index, method in enumerate(("gradcam", "saliency", "integrated_gradients")):
        variants.nth(index).locator("select.variant-method").select_option(method)
    variants.nth(2).locator("details.variant-options > summary").click()
    variants.nth(2).locator("input[id$='-opt-steps']").fill("16")
    for metric in STUDY_METRICS:
        page.check(f"#metric-{metric}")
    page.click("button[type=submit]")
    page.wait_for_function(SUCCEEDED, arg=1, timeout=600_000)
    page.wait_for_selector("img[data-artifact]")
    page.wait_for_function(IMAGES_LOADED)


ADMIN_KEY = "screenshot-admin"


def upload_vit(api: Api) -> None:
    import timm
    import torch

    torch.manual_seed(1)  # seed 0's map is negative everywhere: all zero after Grad-CAM's ReLU
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    labels = api.client.get("/models/efficientnet_lite0/labels").json()
    config = {"name": "vit_tiny", "source": "timm", "architecture": "vit_tiny_patch16_224",
              "factory_kwargs": {"num_classes": 1000}, "labels": labels,
              "description": "timm ViT-Tiny (random weights)"}  # fmt: skip
    response = api.client.post("/models", headers={"X-Admin-Key": ADMIN_KEY}, timeout=300,
                               data={"config": json.dumps(config)},
                               files={"weights": ("vit.pt", weights.getvalue())})  # fmt: skip
    response.raise_for_status()


def explain_vit(page: Page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#model option[value=vit_tiny]", state="attached")
    page.select_option("#model", "vit_tiny")
    page.select_option("#method", "gradcam")
    submit_with_metrics(page, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--iterations", type=int, default=100, help="WaveletX iterations")
    parser.add_argument("--only", choices=["waveletx", "compare", "vit", "study"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        env = service_env(None, Path(folder) / "artifacts", admin_keys=ADMIN_KEY)
        api = Api(env, Path(folder))
        shots = {
            "waveletx": lambda page: explain_waveletx(page, api.url, args.iterations),
            "compare": lambda page: compare(page, api.url, args.iterations),
            "vit": lambda page: (upload_vit(api), explain_vit(page, api.url)),
            "study": lambda page: study(page, api.url),
        }
        files = {"waveletx": "web_ui.png", "compare": "web_ui_compare.png", "vit": "web_ui_vit.png",
                 "study": "web_ui_study.png"}  # fmt: skip
        browser = None
        try:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            started = time.perf_counter()
            for name, take in shots.items():
                if args.only in (None, name):
                    take(page)
                    page.screenshot(path=str(args.out / files[name]), full_page=True)
                    print(f"wrote {args.out / files[name]}")
                    if name == "waveletx":  # the same page on a phone
                        page.set_viewport_size({"width": 390, "height": 844})
                        page.wait_for_function(IMAGES_LOADED)
                        page.screenshot(path=str(args.out / "web_ui_phone.png"), full_page=True)
                        print(f"wrote {args.out / 'web_ui_phone.png'}")
                        page.set_viewport_size({"width": 1280, "height": 800})
            print(f"in {time.perf_counter() - started:.0f} s")
        finally:
            if browser is not None:
                browser.close()
            api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
