"""Service configuration from environment variables (prefix ``EXPLAINER_``).

With no broker URL the service runs in *embedded* mode: jobs run on an in-process worker and job
records live in memory. With ``EXPLAINER_BROKER_URL=redis://...`` it runs in *distributed* mode:
Celery workers take jobs from Redis and job records live in Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, model_validator


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"EXPLAINER_{name}")
    return value if value not in (None, "") else default


class Settings(BaseModel):
    broker_url: str | None = Field(None, description="Celery broker (redis://); None: embedded")
    redis_url: str | None = Field(None, description="Job records; defaults to the broker URL")
    artifact_dir: Path = Path("artifacts")
    api_keys: tuple[str, ...] = ()
    job_ttl_s: int = 7 * 24 * 3600
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_series_length: int = 10_000
    max_series_features: int = 1_000
    max_iterations: int = 2_000  # bound on steps/samples/iterations options
    max_job_memory_mb: int = 8_192  # what one mask-method job may need per step (estimated)
    soft_time_limit_s: int = 600
    hard_time_limit_s: int = 660
    visibility_timeout_s: int = 720  # > hard limit: a running job is never handed out twice
    device: str | None = None  # None: cuda if available, else cpu (decided in the worker)
    allowed_methods: dict[str, tuple[str, ...]] = {}  # model -> methods; empty: all methods
    preload_models: tuple[str, ...] = ("efficientnet_lite0",)
    embedded_workers: int = 1
    process_ready_timeout_s: int = 120  # a Celery pool process may take this long to load models

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        if not self.soft_time_limit_s < self.hard_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need soft time limit < hard time limit < visibility timeout, got "
                f"{self.soft_time_limit_s}, {self.hard_time_limit_s}, {self.visibility_timeout_s}"
            )
        return self

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def store_url(self) -> str | None:
        return self.redis_url or self.broker_url

    @classmethod
    def from_env(cls) -> Settings:
        def number(name: str, default: int) -> int:
            return int(_env(name, str(default)))

        allowed: dict[str, tuple[str, ...]] = {}
        for item in filter(None, (_env("ALLOWED_METHODS", "") or "").split(";")):
            model, _, methods = item.partition("=")
            allowed[model.strip()] = tuple(m.strip() for m in methods.split(",") if m.strip())
        keys = tuple(k.strip() for k in (_env("API_KEYS", "") or "").split(",") if k.strip())
        preload = tuple(
            m.strip() for m in (_env("PRELOAD_MODELS", "efficientnet_lite0") or "").split(",")
        )
        return cls(
            broker_url=_env("BROKER_URL"),
            redis_url=_env("REDIS_URL"),
            artifact_dir=Path(_env("ARTIFACT_DIR", "artifacts")),
            api_keys=keys,
            job_ttl_s=number("JOB_TTL_S", 7 * 24 * 3600),
            max_upload_bytes=number("MAX_UPLOAD_BYTES", 10 * 1024 * 1024),
            max_pixels=number("MAX_PIXELS", 25_000_000),
            max_series_length=number("MAX_SERIES_LENGTH", 10_000),
            max_series_features=number("MAX_SERIES_FEATURES", 1_000),
            max_iterations=number("MAX_ITERATIONS", 2_000),
            max_job_memory_mb=number("MAX_JOB_MEMORY_MB", 8_192),
            soft_time_limit_s=number("SOFT_TIME_LIMIT_S", 600),
            hard_time_limit_s=number("HARD_TIME_LIMIT_S", 660),
            visibility_timeout_s=number(
                "VISIBILITY_TIMEOUT_S", number("HARD_TIME_LIMIT_S", 660) + 60
            ),
            device=_env("DEVICE"),
            allowed_methods=allowed,
            preload_models=tuple(p for p in preload if p),
            embedded_workers=number("EMBEDDED_WORKERS", 1),
            process_ready_timeout_s=number("PROCESS_READY_TIMEOUT_S", 120),
        )
