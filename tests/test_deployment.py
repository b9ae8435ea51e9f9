"""Deployment files: the compose file follows the Compose Specification, the Dockerfile installs
the way the README does, the environment names exist, and the OpenAPI document is current."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml
from pydantic import AliasChoices

from jobs.settings import Settings
from service.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads((ROOT / "tests/data/compose_spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    services = compose["services"]
    assert {"redis", "api", "worker", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["api"]["volumes"] == services["worker"]["volumes"]  # shared artifacts


def test_compose_environment_names_are_settings():
    text = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"^\s+(EXPLAINER_[A-Z_]+):", text, flags=re.M))
    engine_names = {"MAX_ROWS_PER_PASS", "KEEP_FREED_MEMORY"}  # read by engine.runtime
    aliases = {
        choice
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, AliasChoices)
        for choice in field.validation_alias.choices
    }  # e.g. EXPLAINER_STORE_URL
    for name in names:
        field = name.removeprefix("EXPLAINER_")
        assert field.lower() in Settings.model_fields or field in engine_names or name in aliases, (
            name
        )


def test_dockerfile_installs_as_the_readme_does():
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    readme = (ROOT / "README.md").read_text()
    run_script = (ROOT / "run.sh").read_text()
    assert "RUN ./scripts/bootstrap.sh" in dockerfile
    assert "scripts/bootstrap.sh" in run_script and "./run.sh" in readme
    assert "load_model('efficientnet_lite0')" in dockerfile  # weights present at build time


def test_openapi_document_is_current(tmp_path):
    settings = Settings(artifact_dir=tmp_path)
    current = create_app(settings).openapi()
    stored = json.loads((ROOT / "openapi/openapi.json").read_text())
    assert stored == json.loads(json.dumps(current)), (
        "openapi/openapi.json is stale: run `python -m service openapi > openapi/openapi.json`"
    )
    assert "ExplainRequest" in current["components"]["schemas"]
    assert "IntegratedGradientsRequest" in current["components"]["schemas"]
