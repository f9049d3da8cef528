"""The wire contract between hub and agents: MQTT topics and message schemas, written once.

Both sides import this module. Every payload is a versioned pydantic document (JSON), except model
chunks, which are binary: a small JSON header and the bytes. Topic root is configurable
(default `ep`); a device only ever touches `{root}/dev/{its id}/#`.

    {root}/dev/{id}/status     agent → hub, retained; last will says offline
    {root}/dev/{id}/desired    hub → agent, retained: the deployment the device should run
    {root}/dev/{id}/fetch      agent → hub: "send me bytes [offset, offset+length) of model X"
    {root}/dev/{id}/chunk      hub → agent: binary chunks answering fetches
    {root}/dev/{id}/report     agent → hub: deployment progress (downloading ... rolled_back)
    {root}/dev/{id}/variants   agent → hub: the candidate artifacts measured for `--artifact auto`
    {root}/dev/{id}/logs       agent → hub: inference logs from the outbox, with sequence numbers
    {root}/dev/{id}/telemetry  agent → hub: telemetry samples from the outbox, same sequence
    {root}/dev/{id}/ack        hub → agent: highest contiguous sequence stored at the hub
    {root}/dev/{id}/infer      any client → agent: an inference request (InferRequest)
    {root}/dev/{id}/result     agent → requester: its answer (InferResult), same request_id

Logs and telemetry are numbered by the agent's outbox: one sequence for both, inside the outbox's
*epoch* (a random id made with the outbox file; a wiped or re-flashed device has a new one and
starts again at 1). The hub stores them unique on (device, epoch, seq), and acknowledges, per
epoch, the highest sequence below which it holds everything (or was told by the batch's `floor`
that the agent no longer holds it). An agent ignores an ack for another epoch or above what it
issued. A batch reaches at most `SEQ_WINDOW` past the last ack the agent accepted (its floor and
its records); every hub accepts that much (see cloud_hub.fleet.ingest for the hub's rules).
Documents from releases before epochs have none: `epoch` "" is that legacy epoch.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

WIRE_VERSION: Literal[1] = 1
DEFAULT_ROOT = "ep"
CHUNK_MAGIC = b"EPC1"
DEFAULT_CHUNK_SIZE = 256 * 1024

log = logging.getLogger(__name__)

TopicKind = Literal[
    "status",
    "desired",
    "fetch",
    "chunk",
    "report",
    "variants",
    "logs",
    "telemetry",
    "ack",
    "infer",
    "result",
]
TOPIC_KINDS: tuple[TopicKind, ...] = get_args(TopicKind)
DeploymentState = Literal["pending", "transferring", "verified", "active", "failed", "rolled_back"]


class WireError(ValueError):
    """A message that does not follow the contract."""


@dataclass(frozen=True)
class Topics:
    root: str = DEFAULT_ROOT

    def device(self, device_id: str, kind: TopicKind) -> str:
        return f"{self.root}/dev/{device_id}/{kind}"

    def all_devices(self, kind: TopicKind) -> str:
        """Subscription filter for one kind from every device (the hub's side)."""
        return f"{self.root}/dev/+/{kind}"

    def parse(self, topic: str) -> tuple[str, TopicKind]:
        """(device id, kind) of a device topic; WireError for anything else."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.root or parts[1] != "dev" or not parts[2]:
            raise WireError(f"not a device topic: {topic!r}")
        for kind in TOPIC_KINDS:
            if parts[3] == kind:
                return parts[2], kind
        raise WireError(f"unknown topic kind {parts[3]!r} in {topic!r}")

    # The hub's own topics, outside `dev/`: nothing a device may publish or read.
    def job(self, job_id: str) -> str:
        """An async or batch job's completion (hub → subscribers; `+` for every job)."""
        return f"{self.root}/jobs/{job_id}"

    def alerts(self) -> str:
        """Each alert opened or resolved (hub → subscribers)."""
        return f"{self.root}/alerts"


def now() -> float:
    return time.time()


class Message(BaseModel):
    v: Literal[1] = WIRE_VERSION

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def loads(cls, payload: bytes) -> Any:
        try:
            return cls.model_validate_json(payload)
        except ValueError as exc:
            raise WireError(f"invalid {cls.__name__}: {exc}") from None


class DeviceStatus(Message):
    device_id: str
    state: Literal["online", "offline"]
    agent_version: str = ""
    runtimes: list[str] = Field(default_factory=list)
    hardware: str = ""
    active_version: int | None = None
    ts: float = Field(default_factory=now)


class ModelRef(Message):
    """One artifact of a version, as the device will install it."""

    version_id: int
    ref: str = Field(description="PROJECT/MODEL:N, for people")
    format: Literal["onnx", "tflite"]
    precision: Literal["fp32", "int8"]
    sha256: str
    size: int = Field(ge=1)
    signature: str = Field(description="base64 ed25519 signature of signing_message()")
    preprocessing: dict[str, Any] | None = None
    labels: list[str] = Field(default_factory=list)
    head: dict[str, Any] | None = Field(
        default=None,
        description="the version's task head (edge_agent.core.heads.HeadSpec as JSON); None: the "
        "default for its signature (classification of a lone score output, else raw)",
    )


def signing_message(version_id: int, sha256: str, size: int, fmt: str) -> bytes:
    """What the hub signs and the agent verifies for a model: binds bytes to the version."""
    return f"edgepilot-model:v1:{version_id}:{sha256}:{size}:{fmt}".encode()


class ProbationPolicy(BaseModel):
    """When a freshly activated model is rolled back automatically."""

    window_s: float = Field(default=60.0, ge=0)
    min_requests: int = Field(default=20, ge=1)
    max_error_rate: float = Field(default=0.2, ge=0, le=1)
    max_latency_ms: float | None = Field(default=None, gt=0)


class ServingParams(BaseModel):
    """Serving parameters of a deployment, applied on the device without a model transfer.

    - `min_score`: a prediction whose top score is below it is not answered with the model's
      class but with `default_label` (`class` null, `thresholded` true); None = no threshold.
    - `default_label`: the answer below the threshold, and while the kill switch is on.
    - `disabled`: the kill switch. The model is not run: each sample is answered with
      `default_label` (`disabled` true) or, without one, refused (HTTP 503).
    - `shadow_sample`: the share of requests also run on the deployment's shadow (1: all);
      a busy device bounds what the shadow costs it.

    Unknown keys are refused where parameters are set (a misspelt kill switch must not be
    ignored silently); in a DesiredState, from a hub of another release, they are left out.
    """

    model_config = ConfigDict(extra="forbid")

    # strict: a number, never a bool or a numeric string (`"shadow_sample": false` is a mistake)
    min_score: float | None = Field(default=None, ge=0, le=1, strict=True)
    default_label: str | None = Field(default=None, min_length=1, max_length=200)
    disabled: bool = False
    shadow_sample: float = Field(default=1.0, ge=0, le=1, strict=True)


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
MAX_CANDIDATES = 8
MAX_THREAD_CHOICES = 4


class AutoChoice(BaseModel):
    """`--artifact auto`: the device measures each candidate (every artifact of the version it
    can run whose accuracy is within the deployment's budget) at each thread count, on its own
    hardware, and runs the fastest (lowest p50; ties go to the earlier candidate, then fewer
    threads). `DesiredState.model` is the hub's default pick, one of the candidates: what runs
    while measuring, and if no candidate can be measured."""

    candidates: list[ModelRef] = Field(min_length=1, max_length=MAX_CANDIDATES)
    accuracy: list[float | None] = Field(
        default_factory=list,
        description="each candidate's accuracy in the version's conversion report (for the "
        "table); None where it has none",
    )
    threads: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1, 2, 4],
        min_length=1,
        max_length=MAX_THREAD_CHOICES,
        description="intra-op thread counts to try; the device leaves out those above its cores "
        "(1 is always tried)",
    )
    warmup_runs: int = Field(default=5, ge=0, le=100)
    timed_runs: int = Field(default=30, ge=5, le=1000)

    @model_validator(mode="after")
    def _one_version_distinct_bytes(self) -> AutoChoice:
        shas = [c.sha256.lower() for c in self.candidates]
        if len(set(shas)) != len(shas):
            raise ValueError("auto: candidates must be distinct artifacts (sha256)")
        if len({c.version_id for c in self.candidates}) != 1:
            raise ValueError("auto: candidates must be artifacts of one version")
        if self.accuracy and len(self.accuracy) != len(self.candidates):
            raise ValueError("auto: one accuracy per candidate, or none")
        return self


class DesiredState(Message):
    device_id: str
    deployment_id: int | None = None
    model: ModelRef | None = None
    shadow: ModelRef | None = Field(
        default=None,
        description="a candidate run beside `model` on the same inputs; its answers are logged "
        "(role 'shadow'), never returned",
    )
    threads: int = Field(default=1, ge=1)
    auto: AutoChoice | None = Field(
        default=None,
        description="measure these candidates and run the fastest (`--artifact auto`); the "
        "device reports the measurements on `variants`",
    )
    probation: ProbationPolicy = Field(default_factory=ProbationPolicy)
    params: ServingParams = Field(default_factory=ServingParams)
    issued_at: float = Field(default_factory=now)

    @field_validator("params", mode="before")
    @classmethod
    def _known_params(cls, value: Any) -> Any:
        """Keys this side does not know are left out (logged), the known ones validated.

        A hub validates parameters when they are set (unknown keys refused there, naming the
        field); here, refusing the whole desired state for one would not switch anything off
        either, it would only stop the model from being deployed: hubs before typed parameters
        sent free-form ones, and a newer hub may send keys an older agent does not know."""
        if not isinstance(value, dict):
            return value
        known = ServingParams.model_fields
        unknown = sorted(str(k) for k in value if k not in known)
        if not unknown:
            return value
        log.warning("ignoring serving parameters this agent does not know: %s", unknown)
        return {k: v for k, v in value.items() if k in known}

    @model_validator(mode="after")
    def _shadow_differs(self) -> DesiredState:
        if self.shadow is not None and self.model is None:
            raise ValueError("shadow needs a model to run beside")
        if (
            self.shadow is not None
            and self.model is not None
            and self.shadow.version_id == self.model.version_id
        ):
            raise ValueError("shadow must be another version than the model")
        if self.auto is not None:
            if self.model is None:
                raise ValueError("auto needs a model (the default pick)")
            if self.model.sha256.lower() not in {c.sha256.lower() for c in self.auto.candidates}:
                raise ValueError("auto: the model must be one of the candidates")
            if self.auto.candidates[0].version_id != self.model.version_id:
                raise ValueError("auto: candidates must be artifacts of the model's version")
        return self


class FetchRequest(Message):
    deployment_id: int
    sha256: str
    offset: int = Field(ge=0)
    length: int = Field(ge=1)


class Report(Message):
    device_id: str
    deployment_id: int | None
    version_id: int | None
    state: DeploymentState
    role: Literal["model", "shadow"] = Field(
        default="model", description="'shadow': progress of the deployment's shadow candidate"
    )
    reason: str | None = None
    received_bytes: int | None = None
    ts: float = Field(default_factory=now)


class VariantTiming(BaseModel):
    """One candidate artifact at one thread count, measured on the device: load time, then
    `timed_runs` single-row inferences after warm-up (p50, p99), and what loading it added to
    the process's resident memory."""

    sha256: Sha256
    format: Literal["onnx", "tflite"]
    precision: Literal["fp32", "int8"]
    threads: int = Field(ge=1, le=64)
    load_ms: float | None = Field(default=None, ge=0, le=3_600_000, allow_inf_nan=False)
    p50_ms: float | None = Field(default=None, ge=0, le=3_600_000, allow_inf_nan=False)
    p99_ms: float | None = Field(default=None, ge=0, le=3_600_000, allow_inf_nan=False)
    rss_mb: float | None = Field(default=None, ge=0, le=1_048_576, allow_inf_nan=False)
    runs: int = Field(default=0, ge=0, le=100_000)
    error: str | None = Field(
        default=None, max_length=500, description="why it could not be measured"
    )

    @model_validator(mode="after")
    def _timed_or_failed(self) -> VariantTiming:
        if self.error is None and (self.p50_ms is None or self.p99_ms is None):
            raise ValueError("a timing without an error needs p50_ms and p99_ms")
        return self


class VariantReport(Message):
    """What a device measured for an `auto` deployment, and what it chose to run."""

    device_id: str
    deployment_id: int
    version_id: int
    hardware: str = Field(default="", max_length=256)
    cpu_count: int = Field(default=1, ge=1, le=4096)
    timings: list[VariantTiming] = Field(
        # each candidate at each wanted thread count, and at 1 (always tried)
        min_length=1,
        max_length=MAX_CANDIDATES * (MAX_THREAD_CHOICES + 1),
    )
    chosen_sha256: Sha256 | None = Field(
        default=None, description="None: no candidate could be measured"
    )
    chosen_threads: int | None = Field(default=None, ge=1, le=64)
    ts: float = Field(default_factory=now)

    @model_validator(mode="after")
    def _chosen_was_measured(self) -> VariantReport:
        if (self.chosen_sha256 is None) != (self.chosen_threads is None):
            raise ValueError("chosen_sha256 and chosen_threads go together")
        if self.chosen_sha256 is not None and not any(
            t.sha256 == self.chosen_sha256 and t.threads == self.chosen_threads and t.error is None
            for t in self.timings
        ):
            raise ValueError("the chosen variant is not among the measured timings")
        return self


#: Variants within this share of the best p50 count as equally fast (timing noise on a busy
#: device): among them the hub's preference order decides, then fewer threads.
VARIANT_TIE = 0.05


def fastest_variant(
    timings: list[VariantTiming], order: list[str] | None = None
) -> VariantTiming | None:
    """The variant to run: the lowest p50 of those measured without error. Variants within
    `VARIANT_TIE` of it are a tie, settled by `order` (sha256s, the hub's preference: the
    deployment's default pick first), then by fewer threads, so devices of one kind choose
    alike and a re-measurement does not flip between two equals. Both sides decide with this
    function: the agent to activate, the hub to check a report and to reuse it."""
    rank = {sha: i for i, sha in enumerate(order or [])}
    measured = [t for t in timings if t.error is None and t.p50_ms is not None]
    if not measured:
        return None
    best = min(t.p50_ms for t in measured if t.p50_ms is not None)
    near = [t for t in measured if t.p50_ms is not None and t.p50_ms <= best * (1 + VARIANT_TIE)]
    return min(near, key=lambda t: (rank.get(t.sha256, len(rank)), t.threads, t.p50_ms))


class LogRecord(BaseModel):
    seq: int = Field(ge=1)
    request_id: str
    model_version: int | None
    input_digest: str
    output: list[float] | dict[str, Any] = Field(
        description="the head's answer (a dict with 'task'); class scores from older agents"
    )
    outputs_digest: str | None = Field(
        default=None, max_length=64, description="sha256 of the raw output tensors of this row"
    )
    # finite: the hub stores them NOT NULL (SQLite keeps NaN as NULL), and a batch it cannot
    # store would be resent forever
    latency_ms: float = Field(allow_inf_nan=False)
    ts: float = Field(allow_inf_nan=False)
    source: str = "api"
    role: Literal["active", "shadow"] = Field(
        default="active", description="'shadow': the shadow's output for the same request_id"
    )
    thresholded: bool = Field(
        default=False, description="below min_score: answered with the default label"
    )
    features: list[float] | None = Field(
        default=None,
        max_length=64,
        description="edge_agent.core.features.summarize of the input: for drift monitoring",
    )


class ShadowStats(BaseModel):
    """The shadow beside the active model over one telemetry interval."""

    active_version: int
    shadow_version: int
    compared: int = Field(default=0, description="samples both models answered")
    agreed: int = Field(
        default=0, description="... that agree (edge_agent.core.heads.compare.agrees: per task)"
    )
    task: str | None = Field(default=None, description="the shadow's head task")
    similarity: float | None = Field(
        default=None, description="mean agreement score (heads.compare.agreement) over compared"
    )
    dropped: int = Field(default=0, description="samples not run on the shadow (queue full)")
    errors: int = 0
    active_latency_ms: dict[str, float] = Field(default_factory=dict, description="p50, p95, p99")
    shadow_latency_ms: dict[str, float] = Field(default_factory=dict, description="p50, p95, p99")


class TelemetryRecord(BaseModel):
    seq: int = Field(ge=1)
    ts: float
    cpu_percent: float | None = None
    memory_rss_mb: float | None = None
    memory_percent: float | None = None
    temperature_c: float | None = None
    inferences: dict[str, int] = Field(default_factory=dict, description="per model version")
    latency_ms: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per model version: p50, p95, p99"
    )
    outbox_pending: int | None = None
    outbox_dropped: int | None = None
    shadow: ShadowStats | None = None


# How far past the last ack it accepted an agent lets a batch reach (floor and records); a hub
# accepts at least this much (HubSettings.fleet_seq_window). An agent whose outbox dropped more
# than this under overflow, unseen by the hub, steps its floor in record-less batches.
SEQ_WINDOW = 100_000
# The most records an agent puts in one batch (ForwarderSettings.batch_size is at most this).
MAX_BATCH_RECORDS = 10_000
# An outbox epoch: secrets.token_hex(8) from an agent, "" (legacy) from releases before epochs.
Epoch = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")]
_BATCH_EPOCH = "the outbox epoch the sequence numbers belong to; '' from agents before epochs"


class LogBatch(Message):
    device_id: str
    epoch: Epoch = Field(default="", description=_BATCH_EPOCH)
    floor: int = Field(
        ge=1, description="lowest sequence the agent still holds: all below is acked or dropped"
    )
    records: list[LogRecord] = Field(description="may be empty: a batch that only moves the floor")


class TelemetryBatch(Message):
    device_id: str
    epoch: Epoch = Field(default="", description=_BATCH_EPOCH)
    floor: int = Field(
        ge=1, description="lowest sequence the agent still holds: all below is acked or dropped"
    )
    records: list[TelemetryRecord]


class Ack(Message):
    upto: int = Field(ge=0, description="every sequence ≤ upto of the epoch is stored at the hub")
    epoch: Epoch = Field(
        default="", description="the epoch of the batch acknowledged; '' from hubs before epochs"
    )


class InferRequest(Message):
    """An inference asked over MQTT: model-ready tensors (a batch), answered on `result`."""

    request_id: str = Field(min_length=1, max_length=128)
    inputs: list[Any] | dict[str, list[Any]] = Field(
        description="a batch of samples (nested lists of numbers), or one batch per input name "
        "for a model with several inputs"
    )
    outputs: bool = Field(
        default=False, description="also answer every raw output tensor by name, with its shape"
    )


class InferResult(Message):
    request_id: str
    ok: bool
    model_version: int | None = None
    predictions: list[dict[str, Any]] = Field(default_factory=list)
    outputs: dict[str, dict[str, Any]] | None = Field(
        default=None, description="when asked: each output tensor {shape, dtype, data}"
    )
    latency_ms: float | None = None
    error: str | None = None


# -- binary model chunks ----------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    deployment_id: int
    sha256: str
    offset: int
    total: int
    data: bytes

    def encode(self) -> bytes:
        header = json.dumps(
            {
                "v": WIRE_VERSION,
                "deployment_id": self.deployment_id,
                "sha256": self.sha256,
                "offset": self.offset,
                "total": self.total,
                "crc32": zlib.crc32(self.data),
            },
            separators=(",", ":"),
        ).encode()
        return CHUNK_MAGIC + struct.pack(">I", len(header)) + header + self.data

    @classmethod
    def decode(cls, payload: bytes) -> Chunk:
        """Parse and check a chunk; a damaged one raises WireError (its CRC does not match)."""
        if len(payload) < 8 or payload[:4] != CHUNK_MAGIC:
            raise WireError("not a model chunk (bad magic)")
        (size,) = struct.unpack(">I", payload[4:8])
        try:
            header = json.loads(payload[8 : 8 + size])
            data = payload[8 + size :]
            chunk = cls(
                deployment_id=int(header["deployment_id"]),
                sha256=str(header["sha256"]),
                offset=int(header["offset"]),
                total=int(header["total"]),
                data=data,
            )
            crc = int(header["crc32"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WireError(f"bad chunk header: {exc}") from None
        if zlib.crc32(data) != crc:
            raise WireError(f"corrupted chunk at offset {chunk.offset}: CRC mismatch")
        return chunk


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise WireError(f"not base64: {exc}") from None


# -- enrollment (REST, agent → hub: POST /api/v1/enroll) -------------------------------------
# A device with a fleet enrollment token and no identity asks the hub for one. The request is
# signed with the key pair the device made for itself (ed25519, raw public key in base64 as the
# hub's own key is written): the hub keeps the public key, and a replayed or altered request
# does not verify. The answer carries the device's broker credentials: it is shown once.
ENROLL_PATH = "/api/v1/enroll"
ENROLL_MAX_SKEW_S = 600.0  # how far the request's `ts` may be from the hub's clock

HardwareId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
]


class EnrollRequest(Message):
    token: str = Field(min_length=8, max_length=256, description="the fleet enrollment token")
    hardware_id: HardwareId = Field(
        description="what stays the same when the card is re-flashed: the Pi's serial, the "
        "Jetson module's serial number, the machine id, or one configured"
    )
    hardware: str = Field(
        default="",
        max_length=256,
        pattern=r"^[\x20-\x7e]*$",
        description="e.g. 'Raspberry Pi 5 Model B Rev 1.0' (printable ASCII)",
    )
    hostname: str = Field(
        default="", max_length=253, pattern=r"^[A-Za-z0-9.-]*$", description="the device's name"
    )
    agent_version: str = Field(default="", max_length=64)
    runtimes: list[Literal["onnxruntime", "litert"]] = Field(
        min_length=1, max_length=2, description="what the agent can run, in order of preference"
    )
    public_key: str = Field(
        min_length=40, max_length=64, description="the device's ed25519 public key (raw, base64)"
    )
    ts: float = Field(description="when the request was made (seconds since the epoch)")
    signature: str = Field(
        default="", max_length=128, description="ed25519 over `enroll_signing_message`, base64"
    )


def enroll_signing_message(req: EnrollRequest) -> bytes:
    """What the device signs: every field but the signature, as canonical JSON."""
    fields = req.model_dump(exclude={"signature"})
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class EnrollBroker(BaseModel):
    host: str
    port: int
    topic_root: str
    tls: bool = False
    ca_pem: str | None = None


class EnrollResponse(Message):
    device_id: str
    fleet: str
    username: str
    password: str
    broker: EnrollBroker
    hub_public_key: str
    reenrolled: bool = Field(
        default=False, description="the device was known (same hardware id): same id, new password"
    )


# -- every topic kind, once: who sends it, what it carries, which modules publish and handle it --
@dataclass(frozen=True)
class TopicSpec:
    kind: TopicKind
    sender: Literal["agent", "hub", "client"]
    receiver: Literal["agent", "hub", "client"]
    retained: bool
    message: type[Message] | None  # None: binary (Chunk)
    summary: str
    published_by: str = ""  # the module that publishes it ("" : any MQTT client)
    handled_by: str = ""  # the module that handles what arrives ("" : the client that asked)


_HUB = "cloud_hub.fleet.mqtt_service"
TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("status", "agent", "hub", True, DeviceStatus, "online/offline (the last will says "
              "offline), agent version, runtimes, hardware, active model version",
              "edge_agent.mqtt_link", _HUB),
    TopicSpec("desired", "hub", "agent", True, DesiredState, "what the device should run: the "
              "deployment, its signed model, shadow, parameters",
              _HUB, "edge_agent.deployer"),
    TopicSpec("fetch", "agent", "hub", False, FetchRequest, "bytes [offset, offset+length) of a "
              "model, asked for in windows",
              "edge_agent.agent", _HUB),
    TopicSpec("chunk", "hub", "agent", False, None, "binary: `EPC1`, a 4-byte header length, a "
              "JSON header (deployment_id, sha256, offset, total, crc32), the bytes",
              _HUB, "edge_agent.deployer"),
    TopicSpec("report", "agent", "hub", False, Report, "deployment progress: downloading ... "
              "active, failed, rolled_back, with the reason",
              "edge_agent.agent", _HUB),
    TopicSpec("variants", "agent", "hub", False, VariantReport, "the candidate artifacts of an "
              "`auto` deployment measured on the device (load, p50, p99, RSS) and its choice",
              "edge_agent.agent", _HUB),
    TopicSpec("logs", "agent", "hub", False, LogBatch, "inference logs from the outbox, "
              "numbered in its epoch",
              "edge_agent.forwarder", _HUB),
    TopicSpec("telemetry", "agent", "hub", False, TelemetryBatch, "telemetry samples from the "
              "outbox, same numbering",
              "edge_agent.forwarder", _HUB),
    TopicSpec("ack", "hub", "agent", False, Ack, "the highest contiguous sequence stored at the "
              "hub, per epoch",
              _HUB, "edge_agent.forwarder"),
    TopicSpec("infer", "client", "agent", False, InferRequest, "an inference request",
              "", "edge_agent.agent"),
    TopicSpec("result", "agent", "client", False, InferResult, "its answer, same request_id",
              "edge_agent.agent", ""),
)  # fmt: skip


@dataclass(frozen=True)
class HubTopic:
    """A topic of the hub's own, outside `dev/` (see `Topics.job`, `Topics.alerts`)."""

    pattern: str  # under the root
    summary: str
    published_by: str


HUB_TOPICS: tuple[HubTopic, ...] = (
    HubTopic("jobs/{id}", "an async or batch job's completion", "cloud_hub.serving.jobs.notify"),
    HubTopic("alerts", "each alert opened or resolved", "cloud_hub.monitoring.alerts"),
)
