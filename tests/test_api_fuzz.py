"""Schemathesis fuzzes the API from its own OpenAPI document, in process (ASGI) on the embedded
server with a real model: every operation, with schema-valid and invalid data, under all of
Schemathesis's checks (no 5xx, responses as documented, 405s with ``Allow``, auth enforced).
POST /models and DELETE /models/{name} get a run of their own, with only the admin key, most uploads
carrying a real model file (so models are probed, stored and deleted, and the probe's hostile
TorchScript archive meets the operator check).

One check is replaced: a schema cannot state every rule of a valid request (exactly one input,
a bundled sample's name, a class of the chosen model, an add-on's base_options fitting its base
method, the job's cost budget), so a schema-valid request may get a 413/422, but only for one of
those stated reasons, never as a schema error. The examples are derandomized: the same ones on
every run.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import tempfile
import warnings

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from engine.models.series import BUNDLED
from jobs.model_store import NAME_PATTERN
from jobs.settings import Settings
from service.app import create_app
from tests.tiny_models import ReadsAFile, tiny_cnn

CACHE_BEFORE = os.environ.get("EXPLAINER_CACHE_DIR")  # create_app points it at FOLDER/cache
KEY = "fuzz-key"
# Refusals of schema-valid requests for a rule the document cannot state (service.submission).
SEMANTIC_REFUSALS = {
    "invalid_input", "unknown_sample", "invalid_image", "wrong_input_kind", "unknown_model",
    "model_unavailable", "invalid_series", "series_too_large", "invalid_target", "invalid_metric",
    "invalid_option", "method_not_applicable", "limit_exceeded", "payload_too_large",
    "invalid_truth", "needs_training", "invalid_images", "too_many_images", "model_refused",
    "duplicate_label",
}  # fmt: skip
ADMIN = "fuzz-admin"
FOLDER = tempfile.mkdtemp(prefix="explainer-fuzz-")
# A small job budget keeps what the fuzzer gets accepted cheap to run.
APP = create_app(Settings(artifact_dir=FOLDER, api_keys=(KEY,), admin_keys=(ADMIN,),
                          preload_models=(), max_training_images=4,
                          max_model_passes=64, max_study_passes=64, max_study_inputs=2,
                          max_upload_bytes=200_000))  # fmt: skip


async def served_once(scope, receive, send):
    """APP with its start-up and shut-down left to the fixture (the ASGI client would run them
    around every single call)."""
    if scope["type"] != "lifespan":
        return await APP(scope, receive, send)
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


# POST /studies takes its variants as the same union of every method's options that POST /explain
# takes; the coverage phase (boundary and type cases of every property, thousands of calls for
# that union) runs on POST /explain, and POST /studies gets the examples and fuzzing phases.
COVERAGE_ELSEWHERE = [{"include-name": "POST /studies", "phases": {"coverage": {"enabled": False}}}]
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", served_once,
    config=SchemathesisConfig.from_dict({"operations": COVERAGE_ELSEWHERE}),
)  # fmt: skip


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


# POST and DELETE /models are fuzzed below, with the admin key and real model files. (Filters
# here exclude: an include would be OR-ed with the config's operation filter and keep them all.)
MODEL_UPLOADS = r"(POST /models|DELETE /models/\{name\})"


@schema.exclude(name_regex=f"^{MODEL_UPLOADS}$").parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(
        headers={"X-API-Key": KEY, "X-Admin-Key": ADMIN},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_accepted_or_refused_for_a_stated_rule],
    )


# --- POST and DELETE /models with an admin key, with real model files ----------------------------

MARKER = f"{FOLDER}/read-by-a-model"  # a file that the hostile archive below maps (and creates)


def model_files() -> dict[str, list[bytes]]:
    """Weight files by upload source: TorchScript (a model, and the probe's hostile archive that
    maps MARKER with torch.from_file), an exported program, a state dict, a series model."""
    torch.manual_seed(0)
    scripted, hostile, program, state = (io.BytesIO() for _ in range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(tiny_cnn().eval()), scripted)
        torch.jit.save(torch.jit.script(ReadsAFile(MARKER).eval()), hostile)
    example, dims = (torch.rand(2, 3, 32, 32),), ({0: torch.export.Dim.AUTO},)
    torch.export.save(torch.export.export(tiny_cnn().eval(), example, dynamic_shapes=dims), program)
    torch.save(tiny_cnn().state_dict(), state)
    return {"torchscript": [scripted.getvalue(), hostile.getvalue()],
            "export": [program.getvalue()], "state_dict": [state.getvalue()],
            "timm": [state.getvalue()], "series": [BUNDLED.read_bytes()]}  # fmt: skip


MODEL_FILES = model_files()
UPLOADS = itertools.count()
models_schema = schema.exclude(name_regex=f"^(?!{MODEL_UPLOADS}$)")


@models_schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_admins_uploading_and_deleting_models_get_no_5xx(case):
    """Schemathesis on POST /models and DELETE /models/{name} with the admin key. Most generated
    uploads carry a real file of their config's source, picked by the config (so the probe and
    the operator check run on real models and on the hostile archive); one in four keeps the
    fuzzer's bytes. The hostile archive never runs."""
    body = case.body if isinstance(case.body, dict) else {}
    config = body.get("config") if isinstance(body.get("config"), dict) else {}
    files = MODEL_FILES.get(str(config.get("source")), [])
    variant = len(json.dumps(config, default=str, sort_keys=True))
    if "weights" in body and files and variant % 4:
        body["weights"] = files[variant % len(files)]
        # Past the rules the schema cannot state, to the probe: a free name (most are "0"), and
        # a normalisation for TorchScript and exported programs.
        name = str(config.get("name"))
        if re.fullmatch(NAME_PATTERN, name) and (APP.state.settings.models_path / name).exists():
            config["name"] = f"upload{next(UPLOADS)}"
        if config.get("mean") is None and config.get("source") in ("torchscript", "export"):
            config["normalize"] = False
    case.call_and_validate(
        headers={"X-Admin-Key": ADMIN},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_accepted_or_refused_for_a_stated_rule],
    )
    assert not os.path.exists(MARKER)
