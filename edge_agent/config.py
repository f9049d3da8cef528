"""The agent's settings: a TOML file (the hub writes it for a registered device), env overrides.

Every key may be overridden by an environment variable: `EDGEPILOT_AGENT_<SECTION>_<KEY>` for a
key in a section (`EDGEPILOT_AGENT_MQTT_PORT=1884`), `EDGEPILOT_AGENT_<KEY>` for a top-level key
(`EDGEPILOT_AGENT_DEVICE_ID=pi-02`). A relative `data_dir` is taken relative to the config file.
`load_settings` raises ConfigError with one line per problem, each naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.signing import InvalidPublicKey, check_public_key

__all__ = ["AgentSettings", "ConfigError", "load_settings", "ENV_PREFIX"]

ENV_PREFIX = "EDGEPILOT_AGENT_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message lists every problem, one per line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    """The broker connection. With `tls = true` the agent speaks TLS (1.2 or newer) and checks
    the broker's certificate and host name against `ca_file` (a PEM file; relative to the config
    file) or `ca_pem` (the PEM text itself, as the hub writes it into agent.toml), else against
    the system's trusted CAs. A CA without `tls = true` is refused: it would silently not be used.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    topic_root: str = Field(default="ep", min_length=1, pattern=r"^[^/#+]+$")
    keepalive: int = Field(default=30, ge=5)
    max_inflight: int = Field(default=64, ge=1)
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=10, ge=1)
    tls: bool = False
    ca_file: Path | None = None
    ca_pem: str | None = None

    @field_validator("ca_pem")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None and "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("not a PEM certificate (no BEGIN CERTIFICATE line)")
        return value

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> MqttSettings:
        if (self.ca_file is not None or self.ca_pem is not None) and not self.tls:
            raise ValueError("a CA (ca_file or ca_pem) is given but tls is false")
        if self.ca_file is not None and self.ca_pem is not None:
            raise ValueError("give ca_file or ca_pem, not both")
        return self


class HttpSettings(_Section):
    enabled: bool = True
    host: str = Field(
        default="127.0.0.1",
        description="loopback by default: only this device's programs; a LAN address (or "
        "0.0.0.0) opens it to the network, give a token then",
    )
    port: int = Field(default=8081, ge=0, le=65535, description="0 = pick a free port")
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)
    token: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="callers must send `Authorization: Bearer <token>` (all routes but "
        "/v1/health); none: anyone who reaches the address may call",
    )


class RuntimeSettings(_Section):
    threads: int = Field(default=1, ge=1, le=64)
    onnx_memory_arena: bool = Field(
        default=False,
        description="onnxruntime's CPU memory arena. Off by default: measured on a 4 MB conv "
        "model, 300 requests of 1 and 8 rows left RSS 33 MB above the loaded figure with it and "
        "13 MB below without, at no loss of speed (6-7 ms a request either way)",
    )
    malloc_arenas: int = Field(
        default=2,
        ge=0,
        le=64,
        description="at most this many glibc malloc heaps (M_ARENA_MAX): memory one request "
        "thread freed is reused by the next; 0 = glibc's default (8 per core)",
    )


class OutboxSettings(_Section):
    max_records: int = Field(default=100_000, ge=1)
    max_bytes: int = Field(default=64 * 2**20, ge=1024)


class TelemetrySettings(_Section):
    interval_s: float = Field(default=30.0, gt=0)
    hardware: str = ""


class SourceSettings(_Section):
    uri: str | None = Field(
        default=None, description="camera index, video file, RTSP URL or a folder of images"
    )
    fps: float = Field(default=1.0, gt=0, le=120)
    name: str | None = None


class ModelsSettings(_Section):
    keep: int = Field(default=3, ge=1)


class ForwarderSettings(_Section):
    batch_size: int = Field(default=250, ge=1, le=10_000)
    max_batch_bytes: int = Field(
        default=4 * 2**20,
        ge=1024,
        description="a batch's records hold at most this many payload bytes (at least one "
        "record): well under the broker's packet limit (`broker-config --max-packet-size`, "
        "8 MiB by default), which disconnects a client that sends more",
    )
    max_in_flight: int = Field(default=8, ge=1)
    resend_after_s: float = Field(default=10.0, gt=0)


class TransferSettings(_Section):
    chunk_size: int = Field(default=64 * 1024, ge=16, le=16 * 2**20)
    window: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=3, ge=0)


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    data_dir: Path
    hub_public_key: str
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    forwarder: ForwarderSettings = Field(default_factory=ForwarderSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)

    @field_validator("hub_public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        try:
            check_public_key(value)
        except InvalidPublicKey as exc:
            raise ValueError(str(exc)) from None
        return value.strip()


_SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in AgentSettings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
}
_TOP_LEVEL = [name for name in AgentSettings.model_fields if name not in _SECTIONS]
_SECRET_LOCS = ("mqtt", "mqtt.password")


def _env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply EDGEPILOT_AGENT_* variables to `raw`; which keys came from where (for messages)."""
    origin: dict[str, str] = {}
    for key in _TOP_LEVEL:
        var = ENV_PREFIX + key.upper()
        if var in env:
            raw[key] = env[var]
            origin[key] = var
    for section, model in _SECTIONS.items():
        for key in model.model_fields:
            var = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            if var in env:
                target = raw.setdefault(section, {})
                if not isinstance(target, dict):
                    continue  # reported by validation: the section is not a table
                target[key] = env[var]
                origin[f"{section}.{key}"] = var
    return origin


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> AgentSettings:
    """Read and validate the agent's configuration; ConfigError says what is wrong."""
    path = Path(path)
    env = os.environ if env is None else env
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    origin = _env_overrides(raw, env)
    try:
        settings = AgentSettings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(file)"
            source = f" (from {origin[where]})" if where in origin else ""
            if error["type"] == "missing":
                lines.append(f"{path}: {where}{source}: required key is missing")
            elif error["type"] == "extra_forbidden":
                lines.append(f"{path}: {where}: unknown key")
            else:
                shown = repr(error.get("input"))
                if where in _SECRET_LOCS:  # the whole [mqtt] table holds the password too
                    lines.append(f"{path}: {where}{source}: {error['msg']}")
                    continue
                if len(shown) > 60:
                    shown = shown[:57] + "..."
                lines.append(f"{path}: {where}{source}: {error['msg']} (got {shown})")
        raise ConfigError("\n".join(lines)) from None
    if not settings.data_dir.is_absolute():
        settings.data_dir = (path.parent / settings.data_dir).resolve()
    ca_file = settings.mqtt.ca_file
    if ca_file is not None and not ca_file.is_absolute():
        settings.mqtt.ca_file = (path.parent / ca_file).resolve()
    if settings.mqtt.ca_file is not None and not settings.mqtt.ca_file.is_file():
        raise ConfigError(f"{path}: mqtt.ca_file: no such file {settings.mqtt.ca_file}")
    return settings
