"""Fleet documents returned by the REST API and the CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.registry.schemas import NAME_PATTERN
from edge_agent.core.wire import ServingParams

Strategy = Literal["all_at_once", "canary"]
TargetKind = Literal["device", "tag", "group"]
DeviceState = Literal[
    "waiting",
    "pending",
    "transferring",
    "verified",
    "active",
    "failed",
    "rolled_back",
    "superseded",
]
Runtime = Literal["onnxruntime", "litert"]
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "litert")


class Device(BaseModel):
    id: str
    name: str
    hardware: str
    runtimes: list[str]
    tags: list[str]
    group: str | None
    status: Literal["unknown", "online", "offline"]
    agent_version: str | None
    reported_runtimes: list[str] = Field(
        default_factory=list, description="runtimes the agent says it has"
    )
    last_seen: str | None
    active_version_id: int | None
    desired_version_id: int | None
    desired_deployment_id: int | None = None
    acked_upto: int = Field(
        default=0, description="every log/telemetry seq ≤ this is stored, in epoch `epoch`"
    )
    epoch: str | None = Field(
        default=None,
        description="the outbox epoch of the device's latest batch ('' an agent before epochs)",
    )
    logs_stored: int = 0
    telemetry_stored: int = 0
    fleet: str | None = Field(default=None, description="the fleet it enrolled in")
    hardware_id: str | None = Field(
        default=None, description="what it enrolled with (the same after a re-flash)"
    )
    revoked_at: str | None = Field(
        default=None, description="when it was revoked: the broker refuses it since"
    )
    rejected: int = Field(default=0, description="messages from the device the hub refused")
    last_reason: str | None = Field(default=None, description="why the last one was refused")
    created_at: str


class DeviceCreate(BaseModel):
    id: str = Field(pattern=NAME_PATTERN)
    name: str | None = None
    hardware: str = ""
    runtimes: list[Runtime] = Field(
        default_factory=lambda: list[Runtime](["onnxruntime"]),
        description="what the device can run, in order of preference",
    )
    tags: list[str] = Field(default_factory=list)
    group: str | None = None


class BrokerInfo(BaseModel):
    host: str
    port: int
    topic_root: str
    tls: bool = Field(default=False, description="the device connects with TLS")
    ca_pem: str | None = Field(
        default=None, description="with tls: the CA the device checks the broker against (PEM)"
    )


class DeviceRegistration(BaseModel):
    """What a new device needs: its broker credentials and the hub's public signing key."""

    device: Device
    username: str
    password: str
    broker: BrokerInfo
    hub_public_key: str


class ShadowCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="PROJECT/MODEL[:N] or a version id")
    artifact: str = Field(default="best", description="'best' or FORMAT/PRECISION")


class DeploymentCreate(BaseModel):
    version: str = Field(description="PROJECT/MODEL[:N] or a version id")
    artifact: str = Field(
        default="best",
        description="'best', FORMAT/PRECISION (e.g. onnx/int8), or 'auto': each device measures "
        "the artifacts it can run within `accuracy_budget` and runs the fastest",
    )
    accuracy_budget: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="'auto' only: accuracy points below the best artifact's that a candidate "
        "may lose (default 1)",
    )
    device: str | None = None
    devices: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="several devices by id (the target is then these devices, as one rollout)",
    )
    tag: str | None = None
    group: str | None = None
    strategy: Strategy = "all_at_once"
    canary_count: int | None = Field(default=None, ge=1)
    canary_percent: float | None = Field(default=None, gt=0, le=100)
    failure_threshold: float = Field(
        default=0.5, ge=0, le=1, description="halt when this fraction of devices failed"
    )
    promote_after_s: float | None = Field(
        default=None,
        ge=0,
        description="seconds the canaries stay active before the rest follow; default for a "
        "canary: the probation window (a canary is promoted once it has passed probation)",
    )
    threads: int = Field(default=1, ge=1, le=64)
    probation: dict[str, Any] = Field(
        default_factory=dict, description="edge_agent.core.wire.ProbationPolicy fields"
    )
    params: ServingParams = Field(
        default_factory=ServingParams,
        description="serving parameters (min_score, default_label, disabled, shadow_sample), "
        "applied on the device without a model transfer; change them later with PUT .../params",
    )
    shadow: ShadowCreate | None = Field(
        default=None,
        description="a candidate version run beside this one on the same live inputs; its "
        "answers are logged and compared, never returned; POST .../promote makes it active",
    )


ShadowState = Literal["transferring", "verified", "active", "failed", "rolled_back"]


class VariantRow(BaseModel):
    """One candidate artifact at one thread count, as a device measured it (`--artifact auto`)."""

    artifact: str = Field(description="FORMAT/PRECISION")
    artifact_id: int
    threads: int
    load_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    rss_mb: float | None = Field(description="what loading and running it added to the RSS")
    runs: int
    error: str | None
    hardware: str = Field(description="the hardware type it was measured on")
    source: Literal["measured", "reused"] = Field(
        description="measured on this device, or on another of its hardware type"
    )
    chosen: bool


class DeploymentDevice(BaseModel):
    device_id: str
    phase: Literal["canary", "rest"]
    state: DeviceState
    artifact: str | None
    reason: str | None
    received_bytes: int
    updated_at: str
    shadow_artifact: str | None = None
    shadow_state: ShadowState | None = Field(
        default=None, description="the shadow's progress on the device (None: not yet reported)"
    )
    shadow_reason: str | None = None
    threads: int | None = Field(
        default=None, description="the device's threads when `auto` chose them"
    )
    choice: Literal["measured", "reused", "default"] | None = Field(
        default=None,
        description="`auto`: how the artifact was settled (None: not yet, or not auto)",
    )
    candidates: list[str] = Field(
        default_factory=list, description="`auto`: the artifacts the device measures"
    )
    variants: list[VariantRow] = Field(
        default_factory=list, description="`auto`: what was measured, fastest first"
    )


class Deployment(BaseModel):
    id: int
    version_id: int
    version: str
    artifact: str
    target_kind: TargetKind
    target: str = Field(
        description="the device id (ids, comma-separated, for several), tag or group"
    )
    strategy: Strategy
    canary_count: int | None
    canary_percent: float | None
    failure_threshold: float
    promote_after_s: float
    threads: int = 1
    accuracy_budget: float | None = None
    probation: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    shadow_version_id: int | None = None
    shadow_version: str | None = Field(default=None, description="PROJECT/MODEL:N of the shadow")
    shadow_artifact: str | None = None
    promoted_to: int | None = Field(
        default=None, description="the deployment that made this one's shadow active"
    )
    promoted_from: int | None = Field(
        default=None, description="the deployment whose shadow this one promoted"
    )
    status: Literal["canary", "rolling_out", "completed", "halted", "superseded"]
    reason: str | None
    devices: list[DeploymentDevice]
    created_at: str
    updated_at: str

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "halted", "superseded")


class InferenceLog(BaseModel):
    """One inference log record as the hub stored it."""

    device_id: str
    epoch: str = Field(default="", description="the outbox epoch `seq` belongs to")
    seq: int
    request_id: str
    model_version: int | None
    input_digest: str
    output: Any
    latency_ms: float
    ts: float
    source: str
    role: Literal["active", "shadow"] = "active"
    thresholded: bool = False


class ShadowDeviceReport(BaseModel):
    """One device's shadow comparison: every request both models answered."""

    device_id: str
    shadow_state: ShadowState | None
    shadow_reason: str | None = None
    compared: int = Field(description="samples answered by both (joined on request id)")
    agreed: int = Field(description="... with the same top class")
    agreement: float | None = Field(description="agreed / compared")
    active_latency_ms: dict[str, float] = Field(description="p50, p99 of the active model")
    shadow_latency_ms: dict[str, float] = Field(description="p50, p99 of the shadow")


class ShadowReport(BaseModel):
    deployment_id: int
    version: str
    shadow_version: str
    compared: int
    agreed: int
    agreement: float | None
    active_latency_ms: dict[str, float]
    shadow_latency_ms: dict[str, float]
    devices: list[ShadowDeviceReport]
