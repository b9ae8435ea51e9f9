"""The Python client of the explanation service's REST API.

    from explainer.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        result = client.explain("chelsea", "integrated_gradients", {"steps": 32})
        result.attribution  # numpy (3, 224, 224); result.overlay is a PIL image
        result.save("out/ig")

It speaks HTTP only (httpx) and imports nothing of the server. Requests that are safe to repeat
are retried: a 503 (job store or queue away) after its ``Retry-After``, a connection that could
not be made or broke, for GET and DELETE always and for ``POST /explain`` because every submit
carries an idempotency key (the server returns the same job for the same key). Waiting for a job
is a long poll (``GET /jobs/{id}?wait=S``), not a busy loop."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx
import numpy as np

from explainer.errors import ApiError, ConnectionFailed, JobCancelled, JobFailed, WaitTimeout
from explainer.errors import api_error as _api_error
from explainer.inputs import InputKind, encode_input
from explainer.result import Result
from explainer.types import Job, MethodInfo, ModelInfo, ScoreMeaning

__all__ = ["Client"]

log = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:8000"
LONG_POLL_S = 30.0  # one GET /jobs/{id}?wait=… (the server allows up to 60)
USER_AGENT = "explainer-client/0.1"
MAX_REDIRECTS = 5


class Client:
    """A connection to one server.

    ``url``: the server's address; ``api_key``: sent as ``X-API-Key`` (servers with
    ``EXPLAINER_API_KEYS``); ``timeout``: seconds per request (a long poll adds its wait);
    ``retries``: how many times a request is repeated after a 503 or a connection failure;
    ``max_retry_wait``: the longest pause before one retry, whatever ``Retry-After`` asks;
    ``backoff``: the first pause after a connection failure (doubled each time)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        max_retry_wait: float = 30.0,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
    ) -> None:
        if retries < 0 or timeout <= 0 or max_retry_wait < 0 or backoff < 0:
            raise ValueError("retries, max_retry_wait and backoff must be ≥ 0, timeout > 0")
        check_url(url)
        self.url = url.rstrip("/")
        self.timeout, self.retries = timeout, retries
        self.max_retry_wait, self.backoff = max_retry_wait, backoff
        sent = {"User-Agent": USER_AGENT, **(headers or {})}
        if api_key is not None:
            sent["X-API-Key"] = api_key
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=sent)
        """The underlying httpx client (its ``event_hooks`` may log or count requests)."""
        self._bare = httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT})
        self._model_kinds: dict[str, InputKind] = {}
        self._score_meanings: dict[str, ScoreMeaning] | None = None

    # --- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections."""
        self.http.close()
        self._bare.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- HTTP with retries --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        repeatable: bool | None = None,
        timeout: float | None = None,
        bare: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call with the client's retries; an error response raises its typed
        :class:`~explainer.errors.ApiError`. ``repeatable``: whether the request may be sent
        again after a connection broke mid-way (default: GET, HEAD and DELETE); a connection
        that was never made is retried for every request, and a 503 too (the server accepted
        nothing). ``bare``: send ``path`` (an absolute URL) without the client's headers."""
        repeatable = (
            method.upper() in ("GET", "HEAD", "DELETE") if repeatable is None else repeatable
        )
        attempt = 0
        while True:
            try:
                response = (self._bare if bare else self.http).request(
                    method, path, timeout=timeout or self.timeout, **kwargs
                )
            except httpx.TransportError as error:
                never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt >= self.retries or not (repeatable or never_sent):
                    raise ConnectionFailed(f"{method} {self.url}{path}: {error!r}") from error
                delay = min(self.backoff * 2**attempt, self.max_retry_wait)
                reason = type(error).__name__
            else:
                if response.status_code < 400:
                    return response
                failure = _api_error(response)
                if response.status_code != 503 or attempt >= self.retries:
                    raise failure
                asked = failure.retry_after
                delay = min(self.backoff * 2**attempt if asked is None else asked,
                            self.max_retry_wait)  # fmt: skip
                reason = f"503 {failure.code}"
            attempt += 1
            log.warning("%s %s: %s; retry %d of %d in %.1f s", method, path, reason, attempt,
                        self.retries, delay)  # fmt: skip
            time.sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # --- catalogue ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: status, mode, Redis, workers, device (no API key needed)."""
        return self._json("GET", "/health")

    def models(self) -> list[ModelInfo]:
        """``GET /models``: every model, with the methods that run on it for this API key."""
        models = [ModelInfo.from_json(m) for m in self._json("GET", "/models")]
        for model in models:
            self._model_kinds[model.name] = (
                "series" if model.input_kind == "timeseries" else "image"
            )
        return models

    def methods(self) -> list[MethodInfo]:
        """``GET /methods``: every method, its family, input kinds and options schema."""
        return [MethodInfo.from_json(m) for m in self._json("GET", "/methods")]

    def quality_metrics(self) -> list[dict[str, Any]]:
        """``GET /quality-metrics``: every metric with its score keys and parameters."""
        return self._json("GET", "/quality-metrics")

    def samples(self) -> list[dict[str, Any]]:
        """``GET /samples``: the bundled photographs and series (usable as the input's name)."""
        return self._json("GET", "/samples")

    def labels(self, model: str) -> list[str]:
        """``GET /models/{name}/labels``: the model's class labels by index."""
        return self._json("GET", f"/models/{quote(model, safe='')}/labels")

    def score_meanings(self) -> dict[str, ScoreMeaning]:
        """``GET /scores`` (read once per client): each score key's meaning and which direction
        is better."""
        if self._score_meanings is None:
            glossary = self._json("GET", "/scores")
            self._score_meanings = {
                key: ScoreMeaning(value["meaning"], value.get("better"))
                for key, value in glossary.items()
            }
        return self._score_meanings

    def _model_kind(self, model: str | None) -> InputKind:
        """Whether ``model`` takes images or series (the server's default model takes images)."""
        if model is None:
            return "image"
        if model not in self._model_kinds:
            self.models()
        if model not in self._model_kinds:
            raise ValueError(f"the server has no model {model!r}")
        return self._model_kinds[model]

    # --- jobs ---------------------------------------------------------------------------

    def submit(
        self,
        input: Any,
        method: str,
        options: dict[str, Any] | None = None,
        *,
        metrics: Sequence[str | dict[str, Any]] | None = None,
        target: int | str | None = None,
        model: str | None = None,
        seed: int | None = None,
        resize: Literal["center_crop", "resize", "none"] | None = None,
        truth: Any = None,
        reuse: bool | None = None,
        kind: InputKind | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue an explanation and return its job (``status`` queued, or any status with
        ``reused`` when the server returned an identical earlier job) without waiting.

        ``input``: a bundled sample's name ('chelsea', 'state:3'); a path to an image (PNG,
        JPEG, WebP) or a series (``.npy``, ``.csv``); bytes of either; a PIL image; a numpy
        array, list, tensor or data frame: H×W×C (or C×H×W) is an image (floats in [0, 1],
        integers 0–255), a 2-D array a series time × features when ``model`` takes series and
        a greyscale image otherwise (``kind`` says it outright). ``truth``: a series' ground
        truth (0/1, its shape), for the white-box scores. The request carries an idempotency
        key (``idempotency_key``, or a new random one), so a retried submit never makes two
        jobs."""
        encoded = encode_input(input, kind, lambda: self._model_kind(model))
        body: dict[str, Any] = {"method": method, "options": dict(options or {})}
        optional = {"model": model, "target": target, "seed": seed, "resize": resize,
                    "reuse": reuse}  # fmt: skip
        body.update({key: value for key, value in optional.items() if value is not None})
        if metrics is not None:
            body["metrics"] = list(metrics)
        if truth is not None:
            body["truth"] = np.asarray(truth).astype(int).tolist()
        body["idempotency_key"] = idempotency_key or uuid.uuid4().hex
        body.update(encoded.fields)
        if encoded.file is None:
            response = self.request("POST", "/explain", json=body, repeatable=True)
        else:
            field, name, data, content_type = encoded.file
            response = self.request(
                "POST", "/explain", data={"request": json.dumps(body)},
                files={field: (name, data, content_type)}, repeatable=True,
            )  # fmt: skip
        return Job.from_json(response.json())

    def get(self, job: Job | str) -> Job:
        """``GET /jobs/{id}``: the job's status, progress, prediction, scores, artifacts."""
        return Job.from_json(self._json("GET", f"/jobs/{job_id(job)}"))

    def wait(
        self,
        job: Job | str,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Wait until the job has ended (succeeded, failed or cancelled) and return its view; a
        job that is still running after ``timeout`` seconds raises
        :class:`~explainer.errors.WaitTimeout` (the job goes on). ``on_progress`` is called with
        each new view whose status or step changed (long polls with ``since``)."""
        identifier = job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Job | None = None
        while True:
            remaining = LONG_POLL_S if deadline is None else deadline - time.monotonic()
            if last is not None and remaining <= 0:
                raise WaitTimeout(last, timeout or 0)
            poll = max(0.0, min(LONG_POLL_S, remaining))
            if on_progress is not None:  # the first answer at once, then each change
                poll = poll if last is not None else 0.0
            params: dict[str, Any] = {"wait": round(poll, 3)}
            if on_progress is not None and last is not None:
                params["since"] = last.state
            view = Job.from_json(self._json("GET", f"/jobs/{identifier}", params=params,
                                            timeout=self.timeout + poll))  # fmt: skip
            if on_progress is not None and (last is None or view.state != last.state):
                on_progress(view)
            if view.done:
                return view
            last = view

    def cancel(self, job: Job | str) -> Job:
        """``DELETE /jobs/{id}``: a queued job never runs, a running one stops at its next
        model pass. Returns the job's view (cancelling an ended job changes nothing)."""
        return Job.from_json(self._json("DELETE", f"/jobs/{job_id(job)}"))

    def jobs(self, limit: int = 20) -> list[Job]:
        """``GET /jobs``: this API key's newest jobs, newest first."""
        return [Job.from_json(j) for j in self._json("GET", "/jobs", params={"limit": limit})]

    def download(self, job: Job | str, name: str) -> bytes:
        """One artifact's bytes (``attribution.npy``, ``overlay.png``, ``summary.json``, ...).
        A redirect (a server with ``EXPLAINER_S3_PRESIGN`` answers with a presigned URL of its
        bucket) is followed without the API key, which is for the API's host only."""
        response = self.request("GET", f"/jobs/{job_id(job)}/artifacts/{quote(name, safe='')}")
        for _ in range(MAX_REDIRECTS):
            if not response.is_redirect:
                return response.content
            target = response.url.join(response.headers["location"])
            same_host = (target.scheme, target.host, target.port) == (
                self.http.base_url.scheme, self.http.base_url.host, self.http.base_url.port
            )  # fmt: skip
            response = self.request("GET", str(target), bare=not same_host)
        raise ConnectionFailed(f"artifact {name} of job {job_id(job)}: too many redirects")

    def result(self, job: Job | str) -> Result:
        """The result of an ended job, with every artifact downloaded; a failed or cancelled
        job raises :class:`~explainer.errors.JobFailed` or
        :class:`~explainer.errors.JobCancelled`, one still running waits first."""
        view = job if isinstance(job, Job) and job.done and job.raw.get("artifacts") is not None \
            else self.get(job)  # fmt: skip
        if not view.done:
            view = self.wait(view)
        if view.status == "failed":
            raise JobFailed(view, f"job {view.id} failed: {view.error}")
        if view.status == "cancelled":
            raise JobCancelled(view, f"job {view.id} was cancelled")
        files = {name: self.download(view, name) for name in view.artifacts}
        try:
            meanings = self.score_meanings()
        except ApiError:  # the glossary is a nicety: a result without it is still a result
            meanings = {}
        return Result(view, files, meanings)

    @overload
    def explain(self, input: Any, method: str, options: dict[str, Any] | None = ..., *,
                wait: Literal[True] = ..., **kwargs: Any) -> Result: ...  # fmt: skip

    @overload
    def explain(self, input: Any, method: str, options: dict[str, Any] | None = ..., *,
                wait: Literal[False], **kwargs: Any) -> Job: ...  # fmt: skip

    def explain(
        self,
        input: Any,
        method: str,
        options: dict[str, Any] | None = None,
        *,
        metrics: Sequence[str | dict[str, Any]] | None = None,
        target: int | str | None = None,
        model: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
        **kwargs: Any,
    ) -> Result | Job:
        """Explain ``input`` with ``method`` and wait for the result (arrays, pictures,
        prediction, scores); ``wait=False`` returns the queued :class:`Job` instead. A failed
        job raises :class:`~explainer.errors.JobFailed`; ``timeout`` bounds the wait
        (:class:`~explainer.errors.WaitTimeout`). Other keywords (``seed``, ``resize``,
        ``truth``, ``reuse``, ``kind``, ``idempotency_key``) are :meth:`submit`'s."""
        job = self.submit(input, method, options, metrics=metrics, target=target, model=model,
                          **kwargs)  # fmt: skip
        if not wait:
            return job
        return self.result(self.wait(job, timeout=timeout, on_progress=on_progress))


def check_url(url: str) -> None:
    """The server's address is an http(s) URL with a host; a bare '127.0.0.1:8765' (which httpx
    would read as a path, every request failing to connect after all the retries) is refused
    at once, naming the address to give instead."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise ValueError(f"server url {url!r} is not a URL: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        hint = f"; did you mean 'http://{url}'?" if url and "://" not in url else ""
        raise ValueError(f"server url {url!r} must be an http:// or https:// address with a "
                         f"host, like {DEFAULT_URL!r}{hint}")  # fmt: skip


def job_id(job: Job | str) -> str:
    """The id of a job view or an id, quoted for a URL path."""
    return quote(job.id if isinstance(job, Job) else job, safe="")
