"""Service and worker configuration from environment variables (prefix ``EXPLAINER_``).

With no broker URL the service runs in *embedded* mode: jobs run on an in-process worker and job
records live in SQLite beside the artifacts (a restart keeps them). With
``EXPLAINER_BROKER_URL=redis://...`` it runs in *distributed* mode: Celery workers take jobs from
Redis and job records live in Redis.

Lists are comma-separated (``EXPLAINER_API_KEYS=k1,k2``); ``EXPLAINER_ALLOWED_METHODS`` is
``model=method,method;model=method``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Names = Annotated[tuple[str, ...], NoDecode]


def _names(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPLAINER_", env_ignore_empty=True)

    broker_url: str | None = Field(None, description="Celery broker (redis://); None: embedded")
    redis_url: str | None = Field(None, description="Job records; defaults to the broker URL")
    artifact_dir: Path = Path("artifacts")
    public_url: str | None = Field(
        None, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$", description="The service's address as "
        "clients reach it (https://host[:port][/prefix]): job and artifact URLs start with it; "
        "unset: they are paths on this server (never taken from the request's Host header)",
    )  # fmt: skip
    api_keys: Names = ()
    admin_keys: Names = Field((), description="Keys that may add and delete models (X-Admin-Key)")
    allowed_factories: Names = Field(
        ("torchvision",), description="Functions an uploaded state dict may name as its factory "
        "('module:function'); 'torchvision' stands for every torchvision model builder. Nothing "
        "else an upload names is imported or called.",
    )  # fmt: skip
    cache_dir: Path | None = Field(
        None, description="Pattern sets, GAD support sets and shearlet systems, shared by the "
        "API and every worker; default: <artifact_dir>/cache (the engine reads it as "
        "EXPLAINER_CACHE_DIR)",
    )  # fmt: skip
    max_training_images: int = Field(256, ge=2, description="Images of one training job")
    max_training_upload_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="One zip of images for a training job"
    )
    training_sets: Annotated[dict[str, Path], NoDecode] = Field(
        {}, description="Image folders on the API host that training jobs may name: "
        "name=/path;name=/path",
    )  # fmt: skip
    max_training_epochs: int = Field(20, ge=1, description="Epochs of a support-set job")
    model_dir: Path | None = Field(
        None, description="Models added over the API, shared by the API and every worker; "
        "default: <artifact_dir>/models (the shared volume in distributed mode)",
    )  # fmt: skip
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    object_store_url: str | None = Field(
        None, validation_alias=AliasChoices("EXPLAINER_STORE_URL", "object_store_url"),
        pattern=r"^s3://[^/\s]+(/\S*)?$", description="EXPLAINER_STORE_URL=s3://bucket/prefix: "
        "artifacts, uploaded models and trained sets in an S3-compatible bucket (jobs.objects); "
        "unset: the local artifact directory",
    )  # fmt: skip
    s3_endpoint: str | None = Field(
        None, description="The S3 endpoint URL (SeaweedFS, MinIO...); unset: boto3's own "
        "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS. Credentials: the AWS_* variables",
    )  # fmt: skip
    s3_presign: bool = Field(
        False, description="Artifact downloads redirect (307) to presigned URLs of the bucket "
        "instead of streaming through the API",
    )  # fmt: skip
    s3_presign_expires_s: int = Field(300, ge=1, le=7 * 24 * 3600)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_model_bytes: int = Field(
        1024**3, ge=1024, description="A model's weight file (1 GiB: ViT-B/16, ConvNeXt-Base fit)"
    )
    max_pixels: int = Field(25_000_000, ge=1024)
    max_series_length: int = Field(10_000, ge=1)
    max_series_features: int = Field(1_000, ge=1)
    max_model_passes: int = Field(
        20_000, ge=1, description="Budget of one job: forward+backward passes of one input row "
        "at the model's input size, summed over the method, its nested options and its metrics",
    )  # fmt: skip
    max_job_memory_mb: int = Field(8_192, ge=64, description="What one mask-method step may need")
    max_study_passes: int = Field(
        1_000_000, ge=1, description="Budget of one study: the sum of its jobs' model passes "
        "(each counted as max_model_passes counts one job's), over every input × variant",
    )  # fmt: skip
    max_study_inputs: int = Field(256, ge=1, description="Inputs of one study")
    study_batch_size: int = Field(
        8, ge=1, le=256, description="Inputs a worker explains together in one batch job of a "
        "study (fewer where a batch would not fit max_job_memory_mb)",
    )  # fmt: skip
    soft_time_limit_s: int = Field(600, ge=1)
    hard_time_limit_s: int = Field(660, ge=2)
    visibility_timeout_s: int | None = Field(
        None, description="A job unacknowledged this long is redelivered; default hard limit + 60"
    )
    heartbeat_interval_s: float = Field(2.0, gt=0, description="A running job's heartbeat period")
    heartbeat_timeout_s: float = Field(
        15.0, gt=0, description="A running job with no heartbeat this long has lost its worker "
        "and is run again by a live one",
    )  # fmt: skip
    sweep_interval_s: float = Field(
        300.0, gt=0, description="How often expired records and artifacts are deleted"
    )
    device: str | None = None  # None: cuda if available, else cpu (decided in the worker)
    allowed_methods: Annotated[dict[str, tuple[str, ...]], NoDecode] = {}  # model -> methods
    preload_models: Names = ("efficientnet_lite0",)
    embedded_workers: int = Field(
        1, ge=1, le=64, description="Jobs an embedded server runs at once"
    )
    threads_per_job: int | None = Field(
        None, ge=1, le=1024, description="torch's intra-op threads per job; default: the "
        "CPUs // the jobs that run at once (embedded_workers, or the Celery pool's "
        "concurrency), unless OMP_NUM_THREADS is set",
    )  # fmt: skip
    process_ready_timeout_s: int = Field(
        120, ge=1, description="A Celery pool process may take this long to load its models"
    )
    worker_max_memory_kb: int = Field(
        8_000_000, ge=100_000, description="A Celery pool process above this is replaced"
    )

    @field_validator("api_keys", "admin_keys", "preload_models", "allowed_factories", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        return _names(value)

    @field_validator("allowed_methods", "training_sets", mode="before")
    @classmethod
    def _parse_mapping(cls, value: object, info: ValidationInfo) -> object:
        """``key=value;key=value`` (allowed methods: value ``m1,m2``)."""
        if not isinstance(value, str):
            return value
        mapping = {}
        for item in filter(None, value.split(";")):
            key, _, entry = item.partition("=")
            listed = info.field_name == "allowed_methods"
            mapping[key.strip()] = _names(entry) if listed else entry.strip()
        return mapping

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        if self.visibility_timeout_s is None:
            self.visibility_timeout_s = self.hard_time_limit_s + 60
        if not self.soft_time_limit_s < self.hard_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need soft time limit < hard time limit < visibility timeout, got "
                f"{self.soft_time_limit_s}, {self.hard_time_limit_s}, {self.visibility_timeout_s}"
            )
        if self.heartbeat_interval_s * 3 > self.heartbeat_timeout_s:
            raise ValueError("the heartbeat timeout must be at least 3 heartbeat intervals")
        return self

    @property
    def cache_path(self) -> Path:
        return self.cache_dir or self.artifact_dir / "cache"

    def share_cache(self) -> None:
        """Point this process's engine cache at the shared one (patterns, support sets)."""
        os.environ["EXPLAINER_CACHE_DIR"] = str(self.cache_path.resolve())

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.artifact_dir / "models"

    @property
    def job_db_path(self) -> Path:
        """The embedded mode's job records (SQLite), beside the artifacts."""
        return self.artifact_dir / "jobs.sqlite3"

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def store_url(self) -> str | None:
        return self.redis_url or self.broker_url
