"""The edge agent's config file (TOML) for a device registration: what `edgepilot devices
register --write-config` writes, and the benches and end-to-end tests start agents with."""

from __future__ import annotations

import json

from cloud_hub.fleet.schemas import DeviceRegistration


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def agent_config(reg: DeviceRegistration, *, data_dir: str = "./agent-data") -> str:
    """The agent's config file for a registration (keys agreed with the agent)."""
    lines = [
        f"device_id = {_toml_str(reg.device.id)}",
        f"data_dir = {_toml_str(data_dir)}  # where the agent keeps models and its outbox",
        f"hub_public_key = {_toml_str(reg.hub_public_key)}",
        "",
        "[mqtt]",
        f"host = {_toml_str(reg.broker.host)}",
        f"port = {reg.broker.port}",
        f"username = {_toml_str(reg.username)}",
        f"password = {_toml_str(reg.password)}",
        f"topic_root = {_toml_str(reg.broker.topic_root)}",
    ]
    if reg.broker.tls:
        lines.append("tls = true  # the broker's certificate and name are checked")
        if reg.broker.ca_pem is not None:  # PEM is base64 and dashes: a literal string holds it
            lines.append(f"ca_pem = '''\n{reg.broker.ca_pem.strip()}\n'''")
    lines += [
        "",
        "[http]",
        'host = "127.0.0.1"',
        "port = 8081",
        "",
    ]
    return "\n".join(lines)
