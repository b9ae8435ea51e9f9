"""Request and response schemas. The explain request is a union over the method registry: one
variant per method, discriminated by ``method``, each carrying that method's options model."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from engine.catalogue import all_methods
from jobs.records import JobStatus


class ExplainRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("efficientnet_lite0", description="A model name from GET /models.")
    target: int | Annotated[str, Field(max_length=200)] | None = Field(
        None, description="Class index, class label, or null/'predicted' for the predicted class."
    )
    metrics: list[str | dict[str, Any]] = Field(
        [], description="Quality metrics to score the explanation with: names, or objects "
        '{"name": ..., parameter: value} (see GET /quality-metrics).',
    )  # fmt: skip
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random draw.")
    resize: Literal["center_crop", "resize", "none"] = "center_crop"
    idempotency_key: str | None = Field(
        None, max_length=200, description="The same key returns the same job."
    )
    reuse: bool = Field(
        True, description="Return an identical earlier job (same model, input, method, options "
        "and seed) instead of computing again.",
    )  # fmt: skip
    image: str | None = Field(None, description="Base64 PNG/JPEG/WebP (JSON body only).")
    sample: str | None = Field(
        None, description="A bundled photograph, e.g. 'chelsea', or a bundled time series with "
        "its ground truth, 'state:0' … 'state:9' (for the model state_gru).",
    )  # fmt: skip
    series: list[list[float]] | None = Field(
        None, description="A time series as time × features (time-series models only)."
    )
    truth: list[list[Annotated[int, Field(ge=0, le=1)]]] | None = Field(
        None, description="Ground truth of a series, time × features, 1 where a feature is "
        "salient: the result then also gets the white-box scores (AUP, AUR, information, "
        "entropy, AUROC, AUPRC).",
    )  # fmt: skip


def _class_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_")) + "Request"


@functools.cache
def explain_request_adapter() -> TypeAdapter:
    variants = [
        create_model(
            _class_name(spec.name),
            __base__=ExplainRequestBase,
            __doc__=spec.summary,
            method=(Literal[spec.name], ...),
            options=(spec.options, Field(default_factory=spec.options)),
        )
        for spec in all_methods()
    ]
    union = Annotated[Union[tuple(variants)], Field(discriminator="method")]  # noqa: UP007
    return TypeAdapter(union)


class JobCreated(BaseModel):
    id: str
    url: str = Field(description="The job's URL: under the server's public URL when it has one "
                     "configured, else a path on this server")  # fmt: skip
    status: JobStatus
    reused: bool = Field(False, description="True when an existing job was returned.")
    estimate_s: float | None = Field(
        None, description="Seconds the explanation will take once a worker runs it: its cost "
        "in model passes × the seconds per pass measured on the workers' device for this model "
        "and size; null with estimate_reason when none was measured yet",
    )  # fmt: skip
    estimate_reason: str | None = Field(None, description="Why estimate_s is null")


class JobProgress(BaseModel):
    step: int
    total: int
    model_config = ConfigDict(extra="allow")  # method-specific values: loss, score, ...


class JobView(BaseModel):
    id: str
    status: JobStatus
    model: str
    method: str
    options: dict[str, Any]
    target: int | str | None
    seed: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    progress: JobProgress | None
    prediction: dict[str, Any] | None
    scores: dict[str, Any] | None = Field(
        description="Score name → value; null where the score is undefined for this input."
    )
    undefined_scores: dict[str, str] = Field(
        default_factory=dict, description="Why each null score has no value (e.g. the CP "
        "scores of an all-black image are 0/0).",
    )  # fmt: skip
    baselines: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Each score with a random-baseline counterpart → "
        '{"baseline": the counterpart\'s key, "value": its value, "worse": true when the score '
        "is worse than chance (absent when either is null)} (see GET /scores).",
    )  # fmt: skip
    artifacts: dict[str, str] = Field(description="Artifact name → download URL.")
    timings: dict[str, float]
    error: str | None
    estimate_s: float | None = Field(
        None, description="While queued or running: the seconds the explanation takes in all "
        "(as in the 202 answer; null where not measured yet)",
    )  # fmt: skip
    eta_s: float | None = Field(
        None, description="While running: the seconds it has left, from its progress (the share "
        "of its passes left × estimate_s, else elapsed × steps left / steps done); null otherwise",
    )  # fmt: skip
    input_name: str | None = Field(
        None, description="The bundled sample's name or the uploaded file's name (none for an "
        "image or series sent inside the JSON body).",
    )  # fmt: skip


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    details: list[Any] | None = None


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    mode: Literal["embedded", "distributed"]
    redis: bool | None
    store: bool  # the artifact and model store answers (a bucket, or the local folder)
    workers: int
    device: str
    warm_models: list[str] = Field(
        [], description="Models loaded and run once (a forward and a backward pass) by the "
        "workers before they took jobs: their first job pays no cold start",
    )  # fmt: skip
    warm_by_device: dict[str, list[str]] = Field(
        {}, description="Device → the models warm on it (distributed: every worker's device)"
    )


# POST /explain reads its body itself (JSON or multipart); this documents both forms.
EXPLAIN_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ExplainRequest"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["request"],
                # the request and exactly one file: image or series
                "oneOf": [{"required": ["image"]}, {"required": ["series"]}],
                "minProperties": 2,
                "maxProperties": 2,
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "series": {
                        "type": "string",
                        "format": "binary",
                        "description": "A time series, time × features: .npy, or a "
                        "comma-separated .csv without a header",
                    },
                    "request": {
                        "$ref": "#/components/schemas/ExplainRequest",
                        "description": "The request without image/sample/series",
                    },
                },
            },
            "encoding": {"request": {"contentType": "application/json"}},
        },
    },
}


# --- studies (service/routes/studies.py) -------------------------------------------------------


class StudyVariantBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(
        None, min_length=1, max_length=100, description="Its name in the tables; default: the "
        "method, or method[key=value,...] with the options given",
    )  # fmt: skip


@functools.cache
def study_variant_type() -> Any:
    """A study's variant: a method with its options (the method's options model, as in POST
    /explain) and an optional label; a union discriminated by ``method``."""
    variants = [
        create_model(
            "".join(part.capitalize() for part in spec.name.split("_")) + "Variant",
            __base__=StudyVariantBase,
            __doc__=spec.summary,
            method=(Literal[spec.name], ...),
            options=(spec.options, Field(default_factory=spec.options)),
        )
        for spec in all_methods()
    ]
    return Annotated[Union[tuple(variants)], Field(discriminator="method")]  # noqa: UP007


class StudyInputsRequest(BaseModel):
    """Exactly one of: bundled samples by name, an image folder this server offers by name (as
    for training jobs), or existing jobs of the caller (their inputs)."""

    model_config = ConfigDict(extra="forbid")

    samples: list[Annotated[str, Field(max_length=100)]] | None = Field(
        None, min_length=1, description="Bundled samples (GET /samples), e.g. 'chelsea'."
    )
    folder: str | None = Field(None, max_length=200, description="An image folder this server "
                               "offers (EXPLAINER_TRAINING_SETS)")  # fmt: skip
    jobs: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, min_length=1, description="Ids of the caller's jobs whose inputs the study takes"
    )


StudyTarget = int | Annotated[str, Field(max_length=200)] | None


class StudyRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("efficientnet_lite0", description="A model name from GET /models.")
    inputs: StudyInputsRequest | None = Field(
        None, description="JSON body: where the inputs come from. Multipart: leave it out and "
        "send the zip file field 'inputs'.",
    )  # fmt: skip
    metrics: list[str | dict[str, Any]] = Field(
        [], description="Quality metrics scored for every input and variant (GET /quality-metrics)"
    )
    targets: StudyTarget | list[StudyTarget] = Field(
        "predicted", description="'predicted' (or null): each input's predicted class; a class "
        "index or label for every input; or a list with one per input, in the inputs' order.",
    )  # fmt: skip
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random draw.")
    resize: Literal["center_crop", "resize"] = Field(
        "center_crop", description="How each image reaches the size it is explained at."
    )
    idempotency_key: str | None = Field(
        None, max_length=200, description="The same key (of the same API key) returns the same "
        "study, with 200 and reused: true.",
    )  # fmt: skip


@functools.cache
def study_request_model() -> type[BaseModel]:
    """POST /studies: the inputs, 1–12 variants (method + options), metrics, targets, seed."""
    return create_model(
        "StudyRequest",
        __base__=StudyRequestBase,
        variants=(
            list[study_variant_type()],
            Field(min_length=1, max_length=12, description="The methods compared, each with its "
                  "options (a method's options model, as in POST /explain)"),
        ),
    )  # fmt: skip


class StudyCreated(BaseModel):
    id: str
    url: str = Field(description="The study's URL (under the server's public URL if it has one)")
    status: JobStatus
    reused: bool = Field(False, description="True when the study of the same idempotency key "
                         "was returned.")  # fmt: skip


class StudyVariantView(BaseModel):
    label: str
    method: str
    options: dict[str, Any]


class StudyInputView(BaseModel):
    index: int
    name: str


class StudyProgress(BaseModel):
    done: int = Field(description="Input × variant results computed (their batch succeeded)")
    failed: int = Field(0, description="Results whose batch failed")
    cancelled: int = Field(0, description="Results whose batch was cancelled before it ran")
    total: int = Field(description="Input × variant results of the study")


class StudyTimings(BaseModel):
    created_at: float
    started_at: float | None
    finished_at: float | None
    elapsed_s: float | None = Field(description="From the first batch's start to the report "
                                    "(or to now while running)")  # fmt: skip


class StudyBatchView(BaseModel):
    id: str = Field(description="The batch's job (GET /jobs/{id})")
    variant: str
    inputs: list[int]
    status: JobStatus
    attempts: int


class StudyErrorView(BaseModel):
    variant: str
    inputs: list[str]
    message: str


class StudyView(BaseModel):
    id: str
    status: JobStatus
    model: str
    variants: list[StudyVariantView]
    metrics: list[str | dict[str, Any]]
    inputs: list[StudyInputView]
    targets: list[int | str | None]
    seed: int
    resize: str
    passes: int = Field(description="The study's cost in model passes, as checked at submit")
    progress: StudyProgress
    summary: dict[str, Any] | None = Field(
        None, description="Per variant × score: n, mean, median, std, 95 % bootstrap CI, IQM, "
        "rank; of the finished batches' rows while running (left out of GET /studies)",
    )  # fmt: skip
    timings: StudyTimings
    batches: list[StudyBatchView]
    errors: list[StudyErrorView]
    artifacts: dict[str, str] = Field(description="Report artifact name → download URL: "
                                      "scores.csv, summary.json, table.md, <metric>.png, "
                                      "study.zip (once finished)")  # fmt: skip
    url: str
