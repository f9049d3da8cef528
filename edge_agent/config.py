"""The agent's settings: a TOML file (the hub writes it for a registered device), the identity
an enrolled device got from the hub, env overrides.

Every key may be overridden by an environment variable: `EDGEPILOT_AGENT_<SECTION>_<KEY>` for a
key in a section (`EDGEPILOT_AGENT_MQTT_PORT=1884`), `EDGEPILOT_AGENT_<KEY>` for a top-level key
(`EDGEPILOT_AGENT_DEVICE_ID=pi-02`). Relative paths (`data_dir`, `mqtt.ca_file`,
`enroll.token_file`, `enroll.hub_ca_file`) are taken relative to the config file.

A registered device's file names its `device_id` and `hub_public_key`. A device that enrolls
itself has an `[enroll]` section instead (the hub's URL and a fleet token); once enrolled, its
`{data_dir}/identity.json` supplies the device id, the hub's key and the broker's address and
credentials. Precedence: the file < identity.json < the environment.

`load_config` returns an `AgentConfig`, which may still need enrollment (`needs_enrollment`);
`load_settings` returns the `AgentSettings` the agent runs with (a device id and the hub's key
are set) or raises ConfigError. Both raise ConfigError with one line per problem, each naming the
key, never a secret's value.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.core.wire import HardwareId
from edge_agent.identity import Identity, IdentityError, load_identity
from edge_agent.signing import InvalidPublicKey, check_public_key

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "AgentSettings",
    "ConfigError",
    "EnrollSettings",
    "load_config",
    "load_settings",
    "needs_enrollment",
]

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
    password: str | None = Field(default=None, repr=False)
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


class EnrollSettings(_Section):
    """Zero-touch enrollment: the hub to ask and the fleet token to prove. After enrolling, the
    agent deletes `token_file`; `token` (here or in EDGEPILOT_AGENT_ENROLL_TOKEN) stays where it
    was written: prefer a token file."""

    hub: str = Field(description="the hub's URL, e.g. http://hub.example:8000")
    token: str | None = Field(
        default=None, min_length=8, max_length=256, repr=False, description="the fleet token"
    )
    token_file: Path | None = Field(default=None, description="a file holding the fleet token")
    hardware_id: HardwareId | None = Field(
        default=None, description="what identifies this machine (default: detected)"
    )
    hub_ca_file: Path | None = Field(
        default=None, description="the CA (PEM) that signed an https hub's certificate"
    )
    timeout_s: float = Field(default=30.0, gt=0)
    retry_min_s: float = Field(default=2.0, gt=0, description="the first back-off")
    retry_max_s: float = Field(default=300.0, gt=0, description="the longest back-off")

    @field_validator("hub")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _bounds(self) -> EnrollSettings:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError("retry_min_s is more than retry_max_s")
        if self.hub_ca_file is not None and not self.hub.startswith("https://"):
            raise ValueError("hub_ca_file is given but the hub URL is not https://")
        return self


def _check_key(value: str) -> str:
    try:
        check_public_key(value)
    except InvalidPublicKey as exc:
        raise ValueError(str(exc)) from None
    return value.strip()


class _AgentBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    forwarder: ForwarderSettings = Field(default_factory=ForwarderSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    enroll: EnrollSettings | None = None


_DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class AgentSettings(_AgentBase):
    """What the agent runs with: its device id and the hub's key are known."""

    device_id: str = Field(min_length=1, max_length=128, pattern=_DEVICE_ID)
    hub_public_key: str

    @field_validator("hub_public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _check_key(value)


class AgentConfig(_AgentBase):
    """What the file, the identity and the environment say: a device that enrolls itself has no
    device id or hub key until it has enrolled (`needs_enrollment`)."""

    device_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_DEVICE_ID)
    hub_public_key: str | None = None
    _identity: Identity | None = PrivateAttr(default=None)
    _path: Path | None = PrivateAttr(default=None)

    @field_validator("hub_public_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else _check_key(value)

    @property
    def identity(self) -> Identity | None:
        """The identity the device enrolled with (None: not enrolled)."""
        return self._identity

    def settings(self) -> AgentSettings:
        """The settings to run with; ConfigError when the device must enroll first."""
        if needs_enrollment(self):
            where = f"{self._path}: " if self._path is not None else ""
            raise ConfigError(
                f"{where}not enrolled yet: `edgepilot-agent run` enrolls it first, or run "
                "`edgepilot-agent enroll`"
            )
        values = {name: getattr(self, name) for name in AgentSettings.model_fields}
        return AgentSettings.model_validate(values)


def needs_enrollment(config: AgentConfig) -> bool:
    """Whether the device must enroll before it can run: it has an [enroll] section and no
    identity, or lacks a device id or the hub's key."""
    if config.device_id is None or config.hub_public_key is None:
        return True
    return config.enroll is not None and config.identity is None


_SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in _AgentBase.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
}
_SECTIONS["enroll"] = EnrollSettings
_TOP_LEVEL = [name for name in AgentConfig.model_fields if name not in _SECTIONS]
_SECRET_LOCS = ("mqtt", "mqtt.password", "enroll", "enroll.token")


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


def _data_dir(raw: dict[str, Any], path: Path, env: Mapping[str, str]) -> Path | None:
    value = env.get(ENV_PREFIX + "DATA_DIR", raw.get("data_dir"))
    if not isinstance(value, str) or not value:
        return None  # reported by validation
    data_dir = Path(value)
    return data_dir if data_dir.is_absolute() else (path.parent / data_dir).resolve()


def _overlay_identity(raw: dict[str, Any], identity: Identity, source: str) -> dict[str, str]:
    """Put what the hub gave the device over what the file says; which keys came from it."""
    raw["device_id"] = identity.device_id
    raw["hub_public_key"] = identity.hub_public_key
    origin = {"device_id": source, "hub_public_key": source}
    mqtt = raw.setdefault("mqtt", {})
    if not isinstance(mqtt, dict):
        return origin  # reported by validation: [mqtt] is not a table
    broker = identity.broker
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "topic_root": broker.topic_root,
        "tls": broker.tls,
        "username": identity.username,
        "password": identity.password,
    }
    if broker.ca_pem is not None:
        values["ca_pem"] = broker.ca_pem
        mqtt.pop("ca_file", None)
    elif not broker.tls:
        mqtt.pop("ca_file", None)
        mqtt.pop("ca_pem", None)
    mqtt.update(values)
    origin.update({f"mqtt.{key}": source for key in values})
    return origin


def _relative(path: Path, value: Path | None) -> Path | None:
    if value is None or value.is_absolute():
        return value
    return (path.parent / value).resolve()


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the agent's configuration (with its identity when it has enrolled);
    ConfigError says what is wrong."""
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
    data_dir = _data_dir(raw, path, env)
    identity = None
    origin: dict[str, str] = {}
    if data_dir is not None:
        try:
            identity = load_identity(data_dir)
        except IdentityError as exc:
            raise ConfigError(str(exc)) from None
        if identity is not None:
            origin = _overlay_identity(raw, identity, str(data_dir / "identity.json"))
    origin.update(_env_overrides(raw, env))
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc, origin)) from None
    config._identity = identity
    config._path = path
    problems = []
    if config.enroll is None:
        for key in ("device_id", "hub_public_key"):
            if getattr(config, key) is None:
                problems.append(
                    f"{path}: {key}: required key is missing (or give an [enroll] section: the "
                    "device then enrolls itself at the hub)"
                )
    elif needs_enrollment(config) and not (config.enroll.token or config.enroll.token_file):
        problems.append(f"{path}: enroll: give token or token_file to enroll at the hub")
    if problems:
        raise ConfigError("\n".join(problems))
    if not config.data_dir.is_absolute():
        config.data_dir = (path.parent / config.data_dir).resolve()
    config.mqtt.ca_file = _relative(path, config.mqtt.ca_file)
    if config.mqtt.ca_file is not None and not config.mqtt.ca_file.is_file():
        raise ConfigError(f"{path}: mqtt.ca_file: no such file {config.mqtt.ca_file}")
    if config.enroll is not None:
        config.enroll.token_file = _relative(path, config.enroll.token_file)
        config.enroll.hub_ca_file = _relative(path, config.enroll.hub_ca_file)
    return config


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> AgentSettings:
    """The settings the agent runs with; ConfigError also when the device must enroll first."""
    return load_config(path, env).settings()


def _describe(path: Path, exc: ValidationError, origin: Mapping[str, str]) -> str:
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
            if where in _SECRET_LOCS:  # a whole table holds its secret too
                lines.append(f"{path}: {where}{source}: {error['msg']}")
                continue
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"{path}: {where}{source}: {error['msg']} (got {shown})")
    return "\n".join(lines)
