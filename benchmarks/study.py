"""A study against the same work as separate jobs, through one embedded server over HTTP.

    python -m benchmarks.study [--images 32] [--device cpu|cuda]

The inputs: the bundled photographs and their mirror images (32 by default), uploaded as one
zip for the study and one by one (multipart) for the separate jobs; 3 gradient variants. The
study runs each variant's inputs as engine batches (EXPLAINER_STUDY_BATCH_SIZE, 8); the separate
jobs run one input each, all submitted at once. Reported: wall time from the first request to
the last result (the study's report included), the ratio, and the API's overhead per input:
(wall time − the engine's own time, Σ of the jobs' total_s) / (inputs × variants).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

from engine.data import SAMPLES, load_sample
from testkit.stack import Api, service_env, wait_for

VARIANTS = [
    {"method": "saliency"},
    {"method": "gradient_x_input"},
    {"method": "integrated_gradients", "options": {"steps": 8}},
]
TERMINAL = ("succeeded", "failed", "cancelled")


def photographs(count: int) -> list[tuple[str, bytes]]:
    """``count`` PNGs: the bundled photographs, then their mirror images, then again."""
    pictures = []
    for round_ in range(count // len(SAMPLES) + 1):
        for name in SAMPLES:
            image = Image.fromarray(load_sample(name))
            if round_ % 2:
                image = ImageOps.mirror(image)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pictures.append((f"{name}-{round_}.png", buffer.getvalue()))
    return pictures[:count]


def run_study(api: Api, pictures: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(wall s, Σ engine s over its batch jobs) of one study of the pictures."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for name, data in pictures:
            bundle.writestr(name, data)
    request = json.dumps({"variants": VARIANTS})
    start = time.perf_counter()
    created = api.client.post("/studies", data={"request": request},
                              files={"inputs": ("inputs.zip", archive.getvalue())})  # fmt: skip
    assert created.status_code == 202, created.text

    def finished():
        view = api.client.get(f"/studies/{created.json()['id']}").json()
        return view if view["status"] in TERMINAL else None

    view = wait_for(finished, 7200, "the study", interval=0.05)
    wall = time.perf_counter() - start
    assert view["status"] == "succeeded", view
    engine = sum(api.client.get(f"/jobs/{b['id']}").json()["timings"]["total_s"]
                 for b in view["batches"])  # fmt: skip
    return wall, engine


def run_jobs(api: Api, pictures: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(wall s, Σ engine s) of the same work as one POST /explain job per input and variant."""
    start = time.perf_counter()
    ids = []
    for variant in VARIANTS:
        for name, data in pictures:
            request = json.dumps(variant | {"reuse": False})
            response = api.client.post("/explain", data={"request": request},
                                       files={"image": (name, data)})  # fmt: skip
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    views = [api.wait_done(job_id, timeout=7200) for job_id in ids]
    wall = time.perf_counter() - start
    assert all(v["status"] == "succeeded" for v in views)
    return wall, sum(v["timings"]["total_s"] for v in views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    pictures = photographs(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        env = service_env(None, Path(tmp) / "artifacts", device=args.device)
        api = Api(env, Path(tmp))
        try:
            warm = api.client.post("/explain", json={"sample": "chelsea", "method": "saliency"})
            api.wait_done(warm.json()["id"], timeout=600)
            study = run_study(api, pictures)
            jobs = run_jobs(api, pictures)
        finally:
            api.stop()
    results = len(pictures) * len(VARIANTS)
    print(f"# {len(pictures)} images × {len(VARIANTS)} variants "
          f"({', '.join(v['method'] for v in VARIANTS)}; IG 8 steps), efficientnet_lite0, "
          f"{args.device}, one embedded server over HTTP (1 job thread)")  # fmt: skip
    print(f"{'run':<24}{'wall s':>9}{'engine s':>10}{'ms/result':>11}{'API ms/result':>15}")
    for name, (wall, engine) in [("study (batches of 8)", study), ("separate jobs", jobs)]:
        print(f"{name:<24}{wall:>9.1f}{engine:>10.1f}{1000 * wall / results:>11.0f}"
              f"{1000 * (wall - engine) / results:>15.0f}")  # fmt: skip
    print(f"study faster by {jobs[0] / study[0]:.2f}× (wall time; target ≥ 1.5× on CPU)")


if __name__ == "__main__":
    main()
