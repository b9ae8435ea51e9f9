"""Submit an explanation, follow its job, cancel it, download its artifacts. Every job belongs to
the tenant (API key) that made it: another tenant gets 404 for it, as for a missing job."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path, PurePath

from fastapi import APIRouter, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.concurrency import run_in_threadpool

from engine.metrics.glossary import finite_scores, score_baselines
from engine.models import MODELS
from jobs.artifact_store import MEDIA_TYPES, ArtifactStore
from jobs.pass_times import job_times
from jobs.records import TERMINAL, JobRecord, new_job_id
from jobs.settings import Settings
from jobs.store import JobStore
from service.deps import (
    ArtifactsDep,
    DispatcherDep,
    ModelsDep,
    PassTimesDep,
    SettingsDep,
    StoreDep,
    Tenant,
    get_dispatcher,
    get_pass_times,
)
from service.dispatch import Dispatcher
from service.errors import ERRORS, ApiError, short
from service.schemas import EXPLAIN_REQUEST_BODY, ErrorResponse, JobCreated, JobView
from service.submission import (
    check_input,
    check_trained_set,
    metric_records,
    parse_request,
    plan_job,
    read_submission,
)

log = logging.getLogger(__name__)
router = APIRouter()
NOT_READ: dict = {}  # job_view's progress not read with the record (identity, not value)
RELOOK_S = 1.0  # a long poll looks again this often even without news (a missed notification)
# copied from the record
VIEW_FIELDS = set(JobView.model_fields) - {"progress", "artifacts", "undefined_scores", "baselines",
                                           "input_name", "estimate_s", "eta_s"}  # fmt: skip


def find(store: JobStore, job_id: str, tenant: str | None) -> JobRecord:
    """The tenant's job, or 404: another tenant's job is as unknown as a missing one."""
    return owned(store.get(job_id), job_id, tenant)


def owned(record: JobRecord | None, job_id: str, tenant: str | None) -> JobRecord:
    """``record`` if it is the tenant's job, else 404 (:func:`find`)."""
    if record is None or record.owner != tenant:
        raise ApiError(404, "not_found", f"no job {short(job_id, 64)}")
    return record


def public_url(request: Request, route: str, **params: str) -> str:
    """A route's URL for clients: under the configured public URL (``EXPLAINER_PUBLIC_URL``),
    else the path alone, relative to this server. Never built from the Host header, which
    the client writes."""
    path = request.scope.get("root_path", "") + request.app.url_path_for(route, **params)
    base = request.app.state.settings.public_url
    return base.rstrip("/") + path if base else path


def job_view(
    store: JobStore, record: JobRecord, request: Request, progress: dict | None = NOT_READ
) -> JobView:
    """The job as the API shows it; ``progress`` as read with the record, else read now."""
    links = {name: public_url(request, "get_artifact", job_id=record.id, name=name)
             for name in record.artifacts}  # fmt: skip
    if progress is NOT_READ:
        progress = store.progress(record.id)
    scores, undefined = finite_scores(record.scores or {})  # why each null score has no value
    estimate = eta = None
    if record.status not in TERMINAL:  # its time from the workers' measured time per pass
        estimate, eta = job_times(get_pass_times(request), record, progress,
                                  get_dispatcher(request).devices())  # fmt: skip
    return JobView(**record.model_dump(include=VIEW_FIELDS), progress=progress, artifacts=links,
                   undefined_scores=undefined, baselines=score_baselines(scores),
                   input_name=record.input.get("name"), estimate_s=estimate,
                   eta_s=eta)  # fmt: skip


def job_url(request: Request, job_id: str) -> str:
    return public_url(request, "get_job", job_id=job_id)


def enqueue(store: JobStore, dispatcher: Dispatcher, job_id: str) -> None:
    """Send a recorded job to the queue. If the queue cannot take it, the record fails at once
    (so neither a retry nor the content key finds a job that would never run) and the error
    becomes the caller's 503; if this process dies first, the record stays marked undispatched
    and a worker's reaper sends it (:meth:`JobStore.undispatched`)."""
    try:
        dispatcher.submit(job_id)
    except Exception:
        try:
            store.finish(job_id, "failed", error="the job queue was unavailable, so this job "
                         "was never queued; submit it again")  # fmt: skip
            store.dispatched(job_id)
        except Exception as error:  # the store is away too: the reaper sends it later
            log.warning("job %s: not queued and not marked failed: %s", job_id, error)
        raise
    store.dispatched(job_id)


@router.post(
    "/explain",
    status_code=202,
    response_model=JobCreated,
    responses={200: {"model": JobCreated, "description": "An identical job exists"}, **ERRORS},
    openapi_extra={"requestBody": EXPLAIN_REQUEST_BODY},
)
async def submit(
    request: Request,
    tenant: Tenant,
    settings: SettingsDep,
    store: StoreDep,
    artifacts: ArtifactsDep,
    dispatcher: DispatcherDep,
    pass_times: PassTimesDep,
    _: ModelsDep,  # the stored models, read again if they changed
):
    """Queue an explanation. JSON body, or multipart with a file field ``image`` and a JSON
    field ``request``. Answers 202 with the job id (200 when an identical job is returned)."""
    payload, upload = await read_submission(request, settings)

    def accept():
        """Validate the read submission, then return an identical job or queue a new one."""
        parsed = parse_request(payload)
        input_info, data = check_input(parsed, upload, settings)
        job = plan_job(parsed, input_info, settings)
        sets = check_trained_set(parsed, tenant)  # last: it loads the model to find its sets
        options, records = parsed.options.model_dump(mode="json"), metric_records(job.metrics)
        content_hash = hashlib.sha256(
            json.dumps(
                {"model": parsed.model, "revision": MODELS[parsed.model].revision,
                 "method": parsed.method, "options": options,
                 "target": parsed.target, "seed": parsed.seed, "resize": parsed.resize,
                 "input": input_info["sha256"], "metrics": records, "sets": sets},
                sort_keys=True,
            ).encode()
        ).hexdigest()  # fmt: skip

        def existing(job_id: str | None) -> JSONResponse | None:
            record = store.get(job_id) if job_id else None
            if record is None or record.status in ("failed", "cancelled"):
                return None
            estimate, reason = None, "the job has finished"
            if record.status in ("queued", "running"):
                estimate, _ = job_times(pass_times, record, None, dispatcher.devices())
                reason = None if estimate is not None else "no pass time measured for it yet"
            body = JobCreated(id=record.id, url=job_url(request, record.id), status=record.status,
                              reused=True, estimate_s=estimate, estimate_reason=reason)  # fmt: skip
            return JSONResponse(body.model_dump(), status_code=200)

        # Idempotency keys and identical content are looked up within the tenant only.
        idempotency = parsed.idempotency_key and f"{tenant}:{parsed.idempotency_key}"
        content = f"{tenant}:{content_hash}"
        if idempotency and (found := existing(store.lookup_key("idempotency", idempotency))):
            return found
        if parsed.reuse and (found := existing(store.lookup_key("content", content))):
            return found
        job_id = new_job_id()
        record = JobRecord(
            id=job_id,
            created_at=time.time(),
            model=parsed.model,
            method=parsed.method,
            options=options,
            target=parsed.target,
            seed=parsed.seed,
            metrics=records,
            input=input_info | {"resize": parsed.resize},
            content_hash=content_hash,
            idempotency_key=parsed.idempotency_key,
            owner=tenant,
        )
        if data is not None:
            artifacts.save_input(job_id, data)
        store.create(record)
        if idempotency:
            holder = store.claim_key("idempotency", idempotency, job_id)
            if holder != job_id and (found := existing(holder)):
                store.finish(job_id, "cancelled", error="duplicate of " + holder)
                return found
            store.rebind_key("idempotency", idempotency, job_id)
        store.rebind_key("content", content, job_id)
        enqueue(store, dispatcher, job_id)
        estimate, reason = pass_times.estimate(job, dispatcher.devices(), input_info)
        return JobCreated(id=job_id, url=job_url(request, job_id), status="queued",
                          estimate_s=estimate, estimate_reason=reason)  # fmt: skip

    # Decoding the image and the store's Redis calls block: run them off the event loop, so
    # that a slow upload or a stalled Redis never holds up other requests.
    return await run_in_threadpool(accept)


@router.get("/jobs", response_model=list[JobView], responses=ERRORS)
def list_jobs(
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    limit: int = Query(20, ge=1, le=100, description="How many of the newest jobs."),
):
    """The caller's newest jobs (those of its API key; every job when the server has no
    keys), newest first, until they expire."""
    return [job_view(store, record, request) for record in store.recent(tenant, limit)]


@router.get("/jobs/{job_id}", response_model=JobView, responses=ERRORS)
async def get_job(
    job_id: str,
    request: Request,
    tenant: Tenant,
    store: StoreDep,
    wait: float = Query(0, ge=0, le=60, description="Wait up to this many seconds for the "
                        "job to finish before answering (long poll)."),
    since: str | None = Query(None, max_length=64, description="With wait: answer as soon as "
                              "the job's state differs from this one, given as 'status:step' of "
                              "an earlier answer (long poll of progress)."),
):  # fmt: skip
    """Status, progress, prediction, scores, artifact links and error of a job. A long poll
    (``wait``) answers when the store reports a change of the job that ends the wait (a
    notification: Redis pub/sub, or in embedded mode the store itself), or at ``wait``."""

    def look() -> tuple[JobRecord, dict | None, bool]:
        """The record, its progress, and whether they answer the long poll now."""
        found, progress = store.snapshot(job_id)
        record = owned(found, job_id, tenant)
        if record.status in TERMINAL or since is None:
            return record, progress, record.status in TERMINAL
        return record, progress, f"{record.status}:{(progress or {}).get('step', '')}" != since

    if wait == 0:
        record, progress, _ = await run_in_threadpool(look)
        return await run_in_threadpool(job_view, store, record, request, progress)
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:  # called by the store's writer or relay thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(changed.set)

    deadline = loop.time() + wait
    watching = store.watch(job_id, wake)
    await run_in_threadpool(watching.__enter__)  # watch first: no change falls in between
    try:
        record, progress, ready = await run_in_threadpool(look)
        while not ready and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, RELOOK_S))
            changed.clear()
            record, progress, ready = await run_in_threadpool(look)
    finally:
        watching.__exit__(None, None, None)
    return await run_in_threadpool(job_view, store, record, request, progress)


@router.delete("/jobs/{job_id}", response_model=JobView, responses=ERRORS)
def cancel_job(
    job_id: str, request: Request, tenant: Tenant, store: StoreDep, dispatcher: DispatcherDep
):
    """Cancel: a queued job never runs; a running one stops at its next step."""
    record = find(store, job_id, tenant)
    if record.status not in TERMINAL:
        store.cancel(job_id)
        dispatcher.revoke(job_id)
    return job_view(store, find(store, job_id, tenant), request)


ARTIFACT_RESPONSES = {
    200: {"content": {t: {} for t in set(MEDIA_TYPES.values())}},
    307: {"description": "EXPLAINER_S3_PRESIGN: a presigned URL of the bucket"},
}


@router.get(
    "/jobs/{job_id}/artifacts/{name}",
    responses={**ERRORS, **ARTIFACT_RESPONSES},
)
def get_artifact(
    job_id: str, name: str, tenant: Tenant, store: StoreDep, artifacts: ArtifactsDep,
    settings: SettingsDep,
):  # fmt: skip
    """Download an artifact: attribution.npy, heatmap.npy, overlay.png, heatmap.png,
    summary.json (mask methods add mask.npz, explanation.png, history.json). Streamed from the
    object store, or a redirect to a presigned URL of the bucket (``EXPLAINER_S3_PRESIGN``)."""
    record = find(store, job_id, tenant)
    missing = ApiError(404, "not_found", f"job {job_id} has no artifact {short(name)!r}")
    if name not in record.artifacts:
        raise missing
    artifacts.draw_pictures(job_id, name)  # a picture is drawn when first asked for
    return artifact_response(artifacts, settings, job_id, name, missing)


def artifact_response(
    artifacts: ArtifactStore, settings: Settings, owner_id: str, name: str, missing: ApiError
) -> Response:
    """The object ``owner_id/name`` (a job's or a study's file): a redirect to a presigned URL
    of the bucket (``EXPLAINER_S3_PRESIGN``), a local file (ranges, ETag) or a stream with its
    length; ``missing`` where the store does not hold it."""
    media_type = MEDIA_TYPES.get(PurePath(name).suffix, "application/octet-stream")
    if settings.s3_presign and artifacts.exists(owner_id, name):
        url = artifacts.presigned_url(owner_id, name, settings.s3_presign_expires_s)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    found = artifacts.download(owner_id, name)
    if found is None:
        raise missing
    if isinstance(found, Path):
        return FileResponse(found, media_type=media_type)
    chunks, size = found
    return StreamingResponse(chunks, media_type=media_type, headers={"Content-Length": str(size)})


@router.get(
    "/jobs/{job_id}/bundle.zip",
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "The job has not finished"},
               200: {"content": {"application/zip": {}}}},
)  # fmt: skip
def get_bundle(
    job_id: str, request: Request, tenant: Tenant, store: StoreDep, artifacts: ArtifactsDep
):
    """All of a finished job's artifacts in one zip, with ``job.json`` (the job's view as ``GET
    /jobs/{id}`` gives it: status, prediction, scores, error), streamed from the object store;
    a failed or cancelled job's zip holds ``job.json`` alone. 409 while the job is queued or
    running. The store is asked for every artifact before the zip starts, so a store that does
    not answer is a 503, not a 200 with a broken zip."""
    record = find(store, job_id, tenant)
    if record.status not in TERMINAL:
        raise ApiError(409, "not_finished", f"job {job_id} is {record.status}; its bundle is "
                       "ready once it has finished")  # fmt: skip
    artifacts.draw_pictures(job_id)
    names = [name for name in record.artifacts if artifacts.exists(job_id, name)]
    view = job_view(store, record, request).model_dump_json(indent=2).encode()
    return StreamingResponse(
        artifacts.bundle(job_id, names, {"job.json": view}),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
    )
