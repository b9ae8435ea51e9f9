"""Take the README's screenshots of the web page from a real run: an embedded server with the
bundled model, Debian's Chromium driven by Playwright (as in tests/test_web_ui.py).

    .venv/bin/python scripts/screenshot_web_ui.py            # writes docs/web_ui*.png

1. ``docs/web_ui.png``: the job page of a WaveletX explanation of the photograph ``chelsea``
   (loss curve, input, mask, explanation, overlay, scores with their meaning).
2. ``docs/web_ui_compare.png``: the compare grid of Grad-CAM, Integrated Gradients and WaveletX.
"""

from __future__ import annotations

import argparse
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


def submit_with_metrics(page: Page, jobs: int) -> None:
    """Tick the quality metrics, submit, and wait for ``jobs`` finished jobs and their pictures."""
    for metric in METRICS:
        page.check(f"#metric-{metric}")
    page.click("button[type=submit]")
    page.wait_for_function(SUCCEEDED, arg=jobs, timeout=600_000)
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--iterations", type=int, default=100, help="WaveletX iterations")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        api = Api(service_env(None, Path(folder) / "artifacts"), Path(folder))
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            started = time.perf_counter()
            explain_waveletx(page, api.url, args.iterations)
            page.screenshot(path=str(args.out / "web_ui.png"), full_page=True)
            compare(page, api.url, args.iterations)
            page.screenshot(path=str(args.out / "web_ui_compare.png"), full_page=True)
            print(f"wrote {args.out}/web_ui.png and web_ui_compare.png in "
                  f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        finally:
            browser.close()
            api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
