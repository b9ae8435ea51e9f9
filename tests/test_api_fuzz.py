"""Schemathesis fuzzes the API from its own OpenAPI document, in process (ASGI) on the embedded
server with a real model: every operation, with schema-valid and invalid data, under all of
Schemathesis's checks (no 5xx, responses as documented, 405s with ``Allow``, auth enforced).

One check is replaced: a schema cannot state every rule of a valid request (exactly one input,
a bundled sample's name, a class of the chosen model, an add-on's base_options fitting its base
method, the job's cost budget), so a schema-valid request may get a 413/422, but only for one of
those stated reasons, never as a schema error. The examples are derandomized: the same ones on
every run.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobs.settings import Settings
from service.app import create_app

CACHE_BEFORE = os.environ.get("EXPLAINER_CACHE_DIR")  # create_app points it at FOLDER/cache
KEY = "fuzz-key"
# Refusals of schema-valid requests for a rule the document cannot state (service.submission).
SEMANTIC_REFUSALS = {
    "invalid_input", "unknown_sample", "invalid_image", "wrong_input_kind", "unknown_model",
    "invalid_series", "series_too_large", "invalid_target", "invalid_metric", "invalid_option",
    "method_not_applicable", "limit_exceeded", "payload_too_large", "invalid_truth",
    "needs_training", "invalid_images", "too_many_images", "model_refused",
}  # fmt: skip
ADMIN = "fuzz-admin"
FOLDER = tempfile.mkdtemp(prefix="explainer-fuzz-")
# A small job budget keeps what the fuzzer gets accepted cheap to run.
APP = create_app(Settings(artifact_dir=FOLDER, api_keys=(KEY,), admin_keys=(ADMIN,),
                          preload_models=(), max_training_images=4,
                          max_model_passes=64, max_upload_bytes=200_000))  # fmt: skip


async def served_once(scope, receive, send):
    """APP with its start-up and shut-down left to the fixture (the ASGI client would run them
    around every single call)."""
    if scope["type"] != "lifespan":
        return await APP(scope, receive, send)
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


schema = schemathesis.openapi.from_asgi("/openapi.json", served_once)


@pytest.fixture(scope="module", autouse=True)
def _served():
    APP.state.dispatcher.start()
    yield
    store = APP.state.store
    for job_id in store.running():
        store.cancel(job_id)
    APP.state.dispatcher.close()
    shutil.rmtree(FOLDER, ignore_errors=True)
    if CACHE_BEFORE is None:
        os.environ.pop("EXPLAINER_CACHE_DIR", None)
    else:
        os.environ["EXPLAINER_CACHE_DIR"] = CACHE_BEFORE


@schemathesis.check
def valid_data_accepted_or_refused_for_a_stated_rule(ctx, response, case) -> None:
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code < 400 or response.status_code in (401, 404, 409):
        return  # 409: a model name that is taken
    code = response.json()["error"]["code"]
    assert response.status_code in (413, 422) and code in SEMANTIC_REFUSALS, (
        f"schema-valid request refused with {response.status_code} {code}: {response.text[:300]}"
    )


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(
        headers={"X-API-Key": KEY, "X-Admin-Key": ADMIN},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_accepted_or_refused_for_a_stated_rule],
    )
