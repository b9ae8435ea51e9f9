"""Studies over the API: submit one (``POST /studies``), follow it (``GET /studies/{id}``: status,
progress, the partial summary, timings, errors, the report's links), list the caller's, cancel
what has not finished, download the report. A study belongs to the tenant (API key) that made
it: another tenant gets 404 for it, as for a missing one. The work is done by batch jobs
(jobs.studies), queued as every job is."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from jobs.records import TERMINAL, JobRecord
from jobs.store import JobStore
from jobs.studies import (
    StudyBatch,
    StudyRecord,
    batch_record,
    cancel_study,
    chunks,
    errors_of,
    finish_if_done,
    inputs_archive,
    load_study,
    new_study_id,
    owner_list,
    read_batches,
    recent_studies,
    save_study,
    status_of,
    study_summary,
)
from service.deps import ArtifactsDep, DispatcherDep, ModelsDep, SettingsDep, StoreDep, Tenant
from service.errors import ERRORS, ApiError, short
from service.routes.jobs import ARTIFACT_RESPONSES, artifact_response, enqueue, public_url
from service.schemas import StudyCreated, StudyView
from service.study_submission import (
    gather_inputs,
    parse_study,
    plan_study,
    read_study_submission,
    variant_labels,
)

log = logging.getLogger(__name__)
router = APIRouter()
STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/StudyRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["request", "inputs"],
                    "properties": {
                        "request": {
                            "$ref": "#/components/schemas/StudyRequest",
                            "description": "The study without 'inputs'",
                        },
                        "inputs": {
                            "type": "string",
                            "format": "binary",
                            "description": "A zip of images (PNG/JPEG/WebP) or series (.npy/.csv)",
                        },
                    },
                },
                "encoding": {"request": {"contentType": "application/json"}},
            },
        },
    }
}


def find_study(store: JobStore, study_id: str, tenant: str | None) -> StudyRecord:
    """The tenant's study, or 404: another tenant's study is as unknown as a missing one."""
    study = load_study(store, study_id)
    if study is None or study.owner != tenant:
        raise ApiError(404, "not_found", f"no study {short(study_id, 64)}")
    return study


def study_view(
    store: JobStore, artifacts, study: StudyRecord, request: Request, summary: bool = True
) -> StudyView:
    """The study as the API shows it; a study whose batches have all finished but whose report
    is missing (its last finisher died) gets its report first."""
    batches = read_batches(store, study)
    if study.finished_at is None and all(b is None or b.status in TERMINAL for b in batches):
        finish_if_done(store, artifacts, study.id)
        study = load_study(store, study.id) or study
    status = status_of(store, study, batches)
    total = sum(len(b.inputs) for b in study.batches)
    ended = {"succeeded": 0, "failed": 0, "cancelled": 0}  # results by their batch's end
    for batch, record in zip(study.batches, batches, strict=True):
        state = "failed" if record is None else record.status  # a record lost to expiry: failed
        if state in ended:
            ended[state] += len(batch.inputs)
    started = [r.started_at for r in batches if r is not None and r.started_at is not None]
    started_at = min(started) if started else None
    end = study.finished_at or (time.time() if started_at is not None else None)
    links = {name: public_url(request, "get_study_artifact", study_id=study.id, name=name)
             for name in study.report}  # fmt: skip
    return StudyView(
        id=study.id, status=status, model=study.model, variants=study.variants,
        metrics=study.metrics, inputs=[{"index": i.index, "name": i.name} for i in study.inputs],
        targets=study.targets, seed=study.seed, resize=study.resize, passes=study.passes,
        progress={"done": ended["succeeded"], "failed": ended["failed"],
                  "cancelled": ended["cancelled"], "total": total},
        summary=study_summary(study, batches, artifacts) if summary else None,
        timings={"created_at": study.created_at, "started_at": started_at,
                 "finished_at": study.finished_at,
                 "elapsed_s": end - started_at if started_at is not None else None},
        batches=[batch_view(b, r) for b, r in zip(study.batches, batches, strict=True)],
        errors=errors_of(study, batches), artifacts=links,
        url=public_url(request, "get_study", study_id=study.id),
    )  # fmt: skip


def batch_view(batch: StudyBatch, record: JobRecord | None) -> dict:
    return {"id": batch.id, "variant": batch.variant, "inputs": batch.inputs,
            "status": record.status if record is not None else "failed",
            "attempts": record.attempts if record is not None else 0}  # fmt: skip


@router.post(
    "/studies", status_code=202, response_model=StudyCreated, openapi_extra=STUDY_BODY,
    responses={200: {"model": StudyCreated, "description": "The study of this idempotency key"},
               **ERRORS},
)  # fmt: skip
async def submit_study(
    request: Request, tenant: Tenant, settings: SettingsDep, store: StoreDep,
    artifacts: ArtifactsDep, dispatcher: DispatcherDep, _: ModelsDep,
):  # fmt: skip
    """Queue a study: one model, inputs (bundled samples, an image folder this server offers,
    the caller's jobs, or a zip: multipart 'request' + 'inputs'), 1–12 method variants,
    metrics and targets. Every (variant, input) job is checked as POST /explain checks one and
    the whole study's cost (model passes) against the server's per-study budget, before
    anything is stored; 202 with the study's id, then follow it at GET /studies/{id}."""
    payload, uploaded = await read_study_submission(request, settings)

    def reused(study_id: str | None) -> JSONResponse | None:
        study = load_study(store, study_id) if study_id else None
        if study is None or study.owner != tenant:
            return None
        view = study_view(store, artifacts, study, request, summary=False)
        body = StudyCreated(id=study.id, url=view.url, status=view.status, reused=True)
        return JSONResponse(body.model_dump(), status_code=200)

    def accept() -> StudyCreated | JSONResponse:
        parsed = parse_study(payload, uploaded is not None)
        key = parsed.idempotency_key and f"{tenant}:{parsed.idempotency_key}"
        if key and (found := reused(store.lookup_key("study-idempotency", key))):
            return found
        inputs = gather_inputs(parsed, uploaded, settings, store, artifacts, tenant)
        plan = plan_study(parsed, variant_labels(payload), inputs, settings, tenant)
        study = StudyRecord(
            id=new_study_id(), owner=tenant, created_at=time.time(), model=parsed.model,
            variants=plan.variants, metrics=plan.metrics, source=inputs.source,
            inputs=inputs.items, targets=plan.targets, seed=parsed.seed, resize=parsed.resize,
            passes=plan.passes, batches=[],
        )  # fmt: skip
        if key:  # a request with the same key that got here first wins
            holder = store.claim_key("study-idempotency", key, study.id)
            if holder != study.id and (found := reused(holder)):
                return found
            store.rebind_key("study-idempotency", key, study.id)
        indices = [item.index for item in inputs.items]
        for variant in plan.variants:
            for part in chunks(indices, plan.batch_sizes[variant["label"]]):
                study.batches.append(StudyBatch(id=new_study_id(), variant=variant["label"],
                                                inputs=part))  # fmt: skip
        # Stored inputs, then the batch records (each marked undispatched until its message is
        # sent: a reaper sends it if this process dies first), then the study, then the queue.
        if inputs.stored:
            artifacts.save_input(study.id, inputs_archive(inputs.stored))
        for batch in study.batches:
            store.create(batch_record(study, batch))
        save_study(store, study)
        store.list_add(owner_list(tenant), study.id, study.created_at)
        try:
            for batch in study.batches:
                enqueue(store, dispatcher, batch.id)
        except Exception:  # the queue is away: the study is not half-run, it is cancelled
            cancel_study(store, study)
            store.list_remove(owner_list(tenant), [study.id])
            raise
        return StudyCreated(id=study.id, url=public_url(request, "get_study", study_id=study.id),
                            status="queued")  # fmt: skip

    return await run_in_threadpool(accept)


@router.get("/studies", response_model=list[StudyView], responses=ERRORS)
def list_studies(
    request: Request, tenant: Tenant, store: StoreDep, artifacts: ArtifactsDep,
    limit: int = Query(20, ge=1, le=100, description="How many of the newest studies."),
):  # fmt: skip
    """The caller's newest studies, newest first (without their summaries)."""
    return [study_view(store, artifacts, study, request, summary=False)
            for study in recent_studies(store, tenant, limit)]  # fmt: skip


@router.get("/studies/{study_id}", response_model=StudyView, responses=ERRORS)
def get_study(
    study_id: str, request: Request, tenant: Tenant, store: StoreDep, artifacts: ArtifactsDep
):
    """Status, progress (input × variant results done), the summary of the rows so far (per
    variant × score: mean, median, std, 95 % CI, rank), timings, errors and the report's
    links once it is written."""
    return study_view(store, artifacts, find_study(store, study_id, tenant), request)


@router.delete("/studies/{study_id}", response_model=StudyView, responses=ERRORS)
def cancel_unfinished(
    study_id: str, request: Request, tenant: Tenant, store: StoreDep, artifacts: ArtifactsDep,
    dispatcher: DispatcherDep,
):  # fmt: skip
    """Cancel what has not finished: queued batches never run, running ones stop at their next
    step; the report then holds the rows of the batches that finished."""
    study = find_study(store, study_id, tenant)
    if study.finished_at is None:
        for batch_id in cancel_study(store, study):
            dispatcher.revoke(batch_id)
    return study_view(store, artifacts, find_study(store, study_id, tenant), request)


@router.get("/studies/{study_id}/artifacts/{name}", responses={**ERRORS, **ARTIFACT_RESPONSES})
def get_study_artifact(
    study_id: str, name: str, tenant: Tenant, store: StoreDep, artifacts: ArtifactsDep,
    settings: SettingsDep,
):  # fmt: skip
    """Download a report file: scores.csv, summary.json, table.md, <metric>.png, study.zip."""
    study = find_study(store, study_id, tenant)
    missing = ApiError(404, "not_found", f"study {study_id} has no artifact {short(name)!r}")
    if name not in study.report:
        raise missing
    return artifact_response(artifacts, settings, study_id, name, missing)
