"""What the registry returns: the same models serve the REST API, the CLI's --json and tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cloud_hub.core.names import NAME_PATTERN

ArtifactFormat = Literal["onnx", "tflite"]
Precision = Literal["fp32", "int8"]
Status = Literal["ready", "failed"]


class Project(BaseModel):
    id: int
    name: str
    description: str
    created_at: str


class Model(BaseModel):
    id: int
    project: str
    name: str
    task: str
    description: str
    created_at: str
    version_count: int
    latest_version: int | None


class Artifact(BaseModel):
    id: int
    format: ArtifactFormat
    precision: Precision
    sha256: str
    size: int
    status: Status
    method: str | None = Field(description="how it was made: converter or quantization method")
    signature: dict[str, Any]
    metrics: dict[str, Any] = Field(description="accuracy, agreement, latency from the report")
    download_url: str


class Version(BaseModel):
    id: int
    project: str
    model: str
    number: int
    status: Status
    status_reason: str | None
    source: Literal["trained", "uploaded", "converted"]
    parent_id: int | None
    run_id: int | None
    kind: str | None
    metrics: dict[str, Any]
    report: dict[str, Any] | None
    preprocessing: dict[str, Any] | None = Field(
        description="how raw input becomes the model's tensor (edge_agent.core.preprocess."
        "PreprocessingSpec as JSON); None: tensors only"
    )
    labels: list[str]
    task: str = Field(
        description="classification, detection, keypoints, segmentation, embedding, "
        "regression or raw"
    )
    head: dict[str, Any] | None = Field(
        description="the task head with its defaults filled "
        "(edge_agent.core.heads.HeadSpec as JSON: its schema is the body of "
        "PATCH /versions/{version_id})"
    )
    artifacts: list[Artifact]
    created_at: str

    @property
    def ref(self) -> str:
        return f"{self.project}/{self.model}:{self.number}"


class RunStep(BaseModel):
    step: str
    position: int
    status: Literal["pending", "running", "succeeded", "failed", "cached"]
    outputs: dict[str, Any]
    error: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None


class Run(BaseModel):
    id: int
    name: str
    project: str
    experiment: str
    status: Literal["queued", "running", "succeeded", "failed"]
    failed_step: str | None
    error: str | None
    request: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    version_id: int | None
    parent_run_id: int | None
    schedule_id: int | None
    attempt: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    steps: list[RunStep]


class Schedule(BaseModel):
    id: int
    name: str
    cron: str
    request: dict[str, Any]
    enabled: bool
    max_retries: int
    backoff_s: float
    next_run_at: str
    running: bool
    last_run_id: int | None
    last_status: str | None
    created_at: str


class ProjectCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""


class ModelCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    task: str = "classification"
    description: str = ""
