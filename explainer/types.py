"""Small typed views of the API's JSON (the schemas of ``openapi/openapi.json``): a job, its
prediction, a model, a method, the meaning of a score. Each keeps the JSON it came from in
``raw``, so fields the server adds later are not lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Prediction:
    """The model's prediction for the input, and the class that was explained."""

    class_index: int
    label: str | None
    probability: float
    target: int | None
    target_label: str | None
    target_probability: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prediction:
        """From a job's ``prediction`` object."""
        return cls(
            class_index=data["class_index"],
            label=data.get("label"),
            probability=data["probability"],
            target=data.get("target"),
            target_label=data.get("target_label"),
            target_probability=data.get("target_probability"),
        )


@dataclass(frozen=True)
class Job:
    """A job as ``GET /jobs/{id}`` shows it (``POST /explain`` fills only id and status)."""

    id: str
    status: str
    model: str | None = None
    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    target: int | str | None = None
    seed: int | None = None
    progress: dict[str, Any] | None = None
    prediction: Prediction | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    undefined_scores: dict[str, str] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reused: bool = False
    estimate_s: float | None = None  # seconds it takes, from the workers' measured pass times
    eta_s: float | None = None  # seconds a running job has left
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL

    @property
    def state(self) -> str:
        """``status:step``, what the long poll's ``since`` compares with."""
        step = (self.progress or {}).get("step", "")
        return f"{self.status}:{step}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """From a job view (``GET /jobs/{id}``) or a submit answer (``POST /explain``)."""
        prediction = data.get("prediction")
        return cls(
            id=data["id"],
            status=data["status"],
            model=data.get("model"),
            method=data.get("method"),
            options=data.get("options") or {},
            target=data.get("target"),
            seed=data.get("seed"),
            progress=data.get("progress"),
            prediction=Prediction.from_json(prediction) if prediction else None,
            scores=data.get("scores") or {},
            undefined_scores=data.get("undefined_scores") or {},
            artifacts=sorted(data.get("artifacts") or {}),
            timings=data.get("timings") or {},
            error=data.get("error"),
            attempts=data.get("attempts", 0),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            reused=data.get("reused", False),
            estimate_s=data.get("estimate_s"),
            eta_s=data.get("eta_s"),
            raw=data,
        )


@dataclass(frozen=True)
class ModelInfo:
    """A model of ``GET /models``: its input kind and size, classes, and the methods that run
    on it on this server for this API key."""

    name: str
    description: str
    input_kind: str
    input_size: list[int]
    num_classes: int | None
    methods: list[str]
    capabilities: list[str]
    stored: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        """From one entry of ``GET /models``."""
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            input_kind=data["input_kind"],
            input_size=list(data.get("input_size") or []),
            num_classes=data.get("num_classes"),
            methods=list(data.get("methods") or []),
            capabilities=list(data.get("capabilities") or []),
            stored=bool(data.get("stored", False)),
            raw=data,
        )


@dataclass(frozen=True)
class MethodInfo:
    """A method of ``GET /methods``: family, input kinds and its options' JSON schema."""

    name: str
    family: str
    summary: str
    citation: str | None
    input_kinds: list[str]
    stochastic: bool
    options_schema: dict[str, Any] = field(repr=False)
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MethodInfo:
        """From one entry of ``GET /methods``."""
        return cls(
            name=data["name"],
            family=data.get("family", ""),
            summary=data.get("summary", ""),
            citation=data.get("citation"),
            input_kinds=list(data.get("input_kinds") or []),
            stochastic=bool(data.get("stochastic", False)),
            options_schema=data.get("options_schema") or {},
            raw=data,
        )

    def defaults(self) -> dict[str, Any]:
        """The options' top-level defaults, as the schema states them."""
        properties = self.options_schema.get("properties", {})
        return {name: p["default"] for name, p in properties.items() if "default" in p}


@dataclass(frozen=True)
class ScoreMeaning:
    """What a score key means and which direction is better (``None``: not a grade)."""

    meaning: str
    better: str | None
