"""The hub's settings: one typed object per process, built explicitly by the entry point."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, Field

from edge_agent.core.wire import DEFAULT_CHUNK_SIZE, MAX_BATCH_RECORDS, SEQ_WINDOW

DATA_DIR_ENV = "EDGEPILOT_DATA_DIR"


def default_data_dir() -> Path:
    """Where the hub keeps its database and artifacts when nothing else is said."""
    return Path(platformdirs.user_data_dir("edgepilot", appauthor=False))


def resolve_data_dir(explicit: Path | None, env: Mapping[str, str]) -> Path:
    """`--data-dir` wins, then `EDGEPILOT_DATA_DIR`, then the user's data directory."""
    if explicit is not None:
        return explicit.expanduser().resolve()
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser().resolve()
    return default_data_dir()


def _default_data_roots(data: dict[str, Any]) -> list[Path]:
    return [Path(data["data_dir"]) / "datasets"]


class HubSettings(BaseModel):
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # -- authentication ------------------------------------------------------------------------
    metrics_public: bool = Field(
        default=False, description="serve GET /metrics without a token (a scraper on a LAN)"
    )
    token_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a verified token is trusted before the database is asked again "
        "(a token revoked by another process stops working within this time)",
    )
    scheduler_poll_s: float = Field(default=1.0, gt=0)
    run_scheduler: bool = True
    # -- input hygiene (REST) ------------------------------------------------------------------
    data_roots: list[Path] = Field(
        default_factory=_default_data_roots,
        description="the folders a REST caller may name files in (datasets, batch sources, "
        "data caches); a relative path starts at the first [default: {data_dir}/datasets]",
    )
    max_json_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="JSON request body limit (413 above)"
    )
    # -- serving endpoints ---------------------------------------------------------------------
    serving_max_body_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="predict request body limit (413 above)"
    )
    # backpressure: a full endpoint answers 503 + Retry-After instead of growing. 32 MiB is two
    # of the largest bodies the default body limit lets in, or ~24 MobileNetV2 inputs as 1.3 MB
    # of JSON floats (about a second of work at this machine's 20-30 req/s on them): parsed,
    # they cost about 5x their size. bench/peers.py at c=64 on them: +450-700 MB of RSS
    # unbounded, +252-338 MB with 64 MiB here, under 200 MB with 32 (bench/RESULTS.md).
    # 4096 rows is 64 full batches of the default max_batch_size (64): about 3 s of the digits
    # CNN at its ~1,200 rows/s; a row queued behind more waits longer than a client's retry.
    serving_max_in_flight_bytes: int = Field(
        default=32 * 1024 * 1024,
        gt=0,
        description="request body bytes an endpoint holds at once (503 + Retry-After above)",
    )
    serving_max_queued_rows: int = Field(
        default=4096,
        gt=0,
        description="rows an endpoint has admitted and not yet answered (503 + Retry-After above)",
    )
    serving_retry_after_s: int = Field(
        default=1, ge=1, le=3600, description="the Retry-After of a 503 from a full endpoint"
    )
    serving_threads: int = Field(
        default=64, ge=1, le=1024, description="threads running endpoint requests"
    )
    serving_poll_s: float = Field(
        default=1.0, gt=0, description="how often the hub picks up endpoints changed by the CLI"
    )
    serving_workers: int = Field(
        default=2,
        ge=0,
        le=256,
        description="job worker threads in the hub (0: none; see `edgepilot hub worker`)",
    )
    serving_job_attempts: int = Field(default=3, ge=1, description="tries per job")
    serving_job_backoff_s: float = Field(
        default=0.5, ge=0, description="wait before a retry, doubled each time"
    )
    serving_job_lease_s: float = Field(
        default=30.0, gt=0, description="a job whose worker is silent this long is taken again"
    )
    serving_job_poll_s: float = Field(default=0.2, gt=0, description="idle workers' poll")
    prediction_log: bool = Field(
        default=True, description="log every prediction of every endpoint (GET /api/v1/logs)"
    )
    # -- monitoring ----------------------------------------------------------------------------
    monitor: bool = Field(
        default=True, description="evaluate the alert rules in the hub process (GET /alerts)"
    )
    monitor_interval_s: float = Field(
        default=15.0, gt=0, description="how often the hub evaluates the alert rules"
    )
    monitor_max_records: int = Field(
        default=5000, ge=10, description="records a monitoring window holds at most (latest)"
    )
    # -- fleet (MQTT) --------------------------------------------------------------------------
    mqtt_host: str | None = Field(
        default=None, description="broker the hub connects to; None: no fleet service"
    )
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1",
        description="3.1.1 works with every broker (the demo's embedded one included); 5 adds "
        "a session expiry",
    )
    mqtt_username: str | None = Field(
        default=None, description="default: the hub user of `edgepilot hub broker-config`"
    )
    mqtt_password: str | None = None
    mqtt_client_id: str = Field(
        default="edgepilot-hub",
        description="asked for; a broker from `edgepilot hub broker-config` uses the username",
    )
    mqtt_tls: bool = Field(
        default=False, description="TLS to the broker (1.2+), its certificate and name checked"
    )
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA the broker's certificate is checked against [default: the fleet CA "
        "`{data_dir}/mosquitto/ca.crt` when there is one, else the system's CAs]",
    )
    mqtt_keepalive_s: int = Field(default=30, ge=5)
    mqtt_session_expiry_s: int = Field(
        default=24 * 3600, ge=0, description="MQTT 5: the broker keeps the hub's queue this long"
    )
    device_broker_host: str | None = Field(
        default=None, description="broker address given to devices [default: mqtt_host]"
    )
    device_broker_port: int | None = Field(default=None, ge=1, le=65535)
    device_broker_tls: bool | None = Field(
        default=None,
        description="devices use TLS (their agent.toml gets the fleet CA) [default: mqtt_tls]",
    )
    topic_root: str = Field(default="ep", pattern=r"^[A-Za-z0-9._-]+$")
    broker_pid_file: Path | None = Field(
        default=None,
        description="Mosquitto's pid file (it writes one with `pid_file` when started with -d): "
        "after every change of the fleet's accounts (a registration, an enrollment, a "
        "revocation) the hub sends it SIGHUP, so a new device connects at once and a revoked "
        "one is disconnected",
    )
    broker_reload_command: str | None = Field(
        default=None,
        description="instead of a pid file: the command that makes the broker re-read its "
        "password and ACL files, e.g. `systemctl reload mosquitto` (split as a shell would, run "
        "without one)",
    )
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=64 * 1024 * 1024)
    fleet_poll_s: float = Field(default=0.5, gt=0)
    fleet_max_batch_records: int = Field(
        default=MAX_BATCH_RECORDS,
        ge=1,
        le=SEQ_WINDOW,
        description="records one log or telemetry batch may carry; more is refused (an agent "
        f"sends at most its forwarder.batch_size, itself at most {MAX_BATCH_RECORDS})",
    )
    fleet_seq_window: int = Field(
        default=1_000_000,
        ge=SEQ_WINDOW,
        description="how far past an outbox epoch's contiguous mark a batch's floor and records "
        f"may reach; farther is refused. Agents reach at most {SEQ_WINDOW} (they step their "
        "floor after a longer overflow); one from before epochs jumps its floor over all its "
        "overflow dropped and is refused beyond this until upgraded (see cloud_hub.fleet.ingest)",
    )
    fleet_commit_max_messages: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="the most log/telemetry messages stored in one SQLite transaction (group "
        "commit, off the MQTT network thread; see cloud_hub.fleet.ingest_worker)",
    )
    fleet_commit_max_delay_ms: float = Field(
        default=20.0,
        ge=0,
        le=10_000,
        description="how long the ingest worker waits after a message for more to commit with "
        "it; every ack waits at most this (plus the commit) for its batch's transaction",
    )
    fleet_ingest_queue: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="log/telemetry messages parsed and waiting for the ingest worker; when full "
        "the MQTT network thread waits (back-pressure to the broker: nothing is dropped)",
    )

    metrics_raw_retention_s: float = Field(
        default=3600, gt=0, description="how long telemetry metrics are kept as raw points"
    )
    metrics_minute_retention_s: float = Field(
        default=7 * 86400, gt=0, description="how long 1-minute metric rollups are kept"
    )
    metrics_hour_retention_s: float = Field(
        default=90 * 86400, gt=0, description="how long 1-hour metric rollups are kept"
    )
    metrics_prune_interval_s: float = Field(
        default=60, gt=0, description="how often the fleet service deletes expired metrics"
    )
    fleet_shared_logs: bool = Field(
        default=False,
        description="take devices' logs on an MQTT shared subscription, in turns with the "
        "`edgepilot hub ingest` processes (exactly once still: rows are unique on (device, "
        "epoch, seq) and each epoch's mark is advanced in the storing transaction)",
    )
    fleet_share_group: str = Field(
        default="edgepilot-ingest",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the shared subscription's group name",
    )
    thread_switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="how long one Python thread may hold the interpreter before another runs "
        "(sys.setswitchinterval; Python's default is 5 ms). The MQTT and ingest threads give it "
        "up on every socket read and SQLite call and then wait up to this long behind a busy "
        "thread (the monitor, a request): short keeps ingest moving",
    )
    gc_freeze_after_start: bool = Field(
        default=True,
        description="once the app has started (endpoints built, models loaded), move every "
        "object alive into the garbage collector's permanent generation (gc.freeze), so full "
        "collections under load scan only what requests allocate: they were the hub's p99 "
        "stalls (issue 14)",
    )
    # -- the live stream (GET /api/v1/stream) ----------------------------------------------
    stream_ring_events: int = Field(
        default=20_000,
        ge=100,
        le=1_000_000,
        description="events the stream keeps for clients to read and resume from: a client "
        "that falls further behind is told it missed events",
    )
    stream_coalesce_s: float = Field(
        default=1.0, ge=0, le=60, description="at most one telemetry event per device per this"
    )
    stream_sample_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often the stream looks for changed deployments, alerts and endpoints",
    )
    stream_max_clients: int = Field(
        default=100, ge=1, le=10_000, description="stream connections served at once"
    )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def cache_dir(self) -> Path:
        """Cached pipeline step outputs (content-addressed, like artifacts)."""
        return self.data_dir / "step-cache"

    @property
    def admin_token_path(self) -> Path:
        """The hub machine's admin token (0600), made on first start, read by the CLI."""
        return self.data_dir / "admin-token"

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "signing-key.pem"
