"""The README's quick start: `./run.sh` serves, and its curl examples (an image, a time series,
an uploaded timm ViT and an exported program) return finished jobs. They are read from the
README itself, so the two cannot drift apart."""

from __future__ import annotations

import json
import os
import re
import subprocess

import httpx

from testkit.stack import ROOT, Process, free_port, wait_for

ADMIN_KEY = "readme-admin"


def readme_examples() -> list[str]:
    """The README's bash blocks that submit a job with curl: the image and the series example."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return [block for block in blocks if "curl" in block and "/explain" in block]


def run_example(script: str, port: int, folder) -> dict:
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace(".venv/bin/python", str(ROOT / ".venv/bin/python"))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=folder, capture_output=True, text=True,
        timeout=180, env={**os.environ, "ADMIN_KEY": ADMIN_KEY},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_run_command_serves_and_the_curl_example_works(tmp_path):
    port = free_port()
    server = Process(
        ["./run.sh", "--port", str(port)], tmp_path / "run.log",
        {"EXPLAINER_ARTIFACT_DIR": str(tmp_path / "artifacts"), "EXPLAINER_ADMIN_KEYS": ADMIN_KEY},
    )  # fmt: skip
    try:

        def up():
            assert server.alive(), server.output()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 300, "./run.sh to serve")
        image, series, vit, exported = readme_examples()
        view = run_example(image, port, tmp_path)
        assert view["status"] == "succeeded", view
        assert view["prediction"]["label"] == "Egyptian cat"
        assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        view = run_example(series, port, tmp_path)
        assert view["status"] == "succeeded", view
        assert {"comprehensiveness", "aup", "auroc"} <= set(view["scores"])
        assert (tmp_path / "series.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for example, model, method in ((vit, "myvit", "gradcam"),
                                       (exported, "myresnet", "guided_backprop")):  # fmt: skip
            view = run_example(example, port, tmp_path)
            assert view["status"] == "succeeded", view
            assert (view["model"], view["method"]) == (model, method)
            assert view["prediction"]["label"] in ("cat", "dog")
    finally:
        server.stop()
