"""The agent's TOML config: the hub's file format, env overrides, clear errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.registry.signing import HubSigner
from edge_agent.config import ConfigError, load_settings
from tests.agent_processes import AGENT
from tests.waiting import wait_until


def _hub_file(tmp_path: Path, key: str, **replace: str) -> Path:
    """The file exactly as the hub writes it for a registered device."""
    text = f"""device_id = "pi-01"
data_dir = "./agent-data"
hub_public_key = "{key}"
[mqtt]
host = "127.0.0.1"
port = 1883
username = "pi-01"
password = "s3cret"
topic_root = "ep"
[http]
host = "127.0.0.1"
port = 8081        # 0 = pick a free port
"""
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_hub_file_format_and_env_overrides(tmp_path: Path, signer: HubSigner) -> None:
    path = _hub_file(tmp_path, signer.public_key_b64)
    settings = load_settings(path, env={})
    assert settings.device_id == "pi-01" and settings.mqtt.port == 1883
    assert settings.mqtt.username == "pi-01" and settings.http.port == 8081
    assert settings.data_dir == (tmp_path / "agent-data").resolve()
    assert settings.runtime.threads == 1 and settings.outbox.max_records == 100_000
    env = {
        "EDGEPILOT_AGENT_MQTT_PORT": "1884",
        "EDGEPILOT_AGENT_DEVICE_ID": "pi-02",
        "EDGEPILOT_AGENT_TELEMETRY_INTERVAL_S": "5",
        "EDGEPILOT_AGENT_SOURCE_URI": "0",
        "EDGEPILOT_AGENT_RUNTIME_ONNX_MEMORY_ARENA": "true",
    }
    assert not settings.runtime.onnx_memory_arena and settings.runtime.malloc_arenas == 2
    settings = load_settings(path, env=env)
    assert settings.mqtt.port == 1884 and settings.device_id == "pi-02"
    assert settings.telemetry.interval_s == 5.0 and settings.source.uri == "0"
    assert settings.runtime.onnx_memory_arena


@pytest.mark.parametrize(
    "replace, env, expected",
    [
        ({"port = 1883": "port = 70000"}, {}, "mqtt.port: Input should be less than or equal"),
        ({'device_id = "pi-01"\n': ""}, {}, "device_id: required key is missing"),
        ({'topic_root = "ep"': 'topic_root = "ep"\ncolour = 1'}, {}, "mqtt.colour: unknown key"),
        ({}, {"EDGEPILOT_AGENT_MQTT_PORT": "abc"}, "(from EDGEPILOT_AGENT_MQTT_PORT)"),
        ({"port = 8081": "port = [8081"}, {}, "not valid TOML"),
        ({'device_id = "pi-01"': 'device_id = "pi 01/x"'}, {}, "device_id: String should match"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, signer: HubSigner, replace: dict[str, str], env: dict[str, str], expected: str
) -> None:
    path = _hub_file(tmp_path, signer.public_key_b64, **replace)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    assert expected in str(info.value)
    assert "s3cret" not in str(info.value)


def test_run_with_a_bad_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    path = _hub_file(tmp_path, "bm90IGEga2V5", **{"port = 1883": "port = 0"})
    done = subprocess.run(
        [str(AGENT), "run", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "hub_public_key" in done.stderr and "32 bytes" in done.stderr
    assert "mqtt.port" in done.stderr
    missing = subprocess.run(
        [str(AGENT), "run", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no such config file" in missing.stderr


def test_status_command_and_clean_shutdown(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    wait_until(lambda: hub.statuses and hub.statuses[-1].state == "online", 10, "online")
    done = subprocess.run(
        [str(AGENT), "status", "--config", str(agent.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["device_id"] == device_id and status["active_version"] is None
    assert status["mqtt_connected"] is True
    assert agent.terminate() == 0
    wait_until(lambda: hub.statuses[-1].state == "offline", 5, "offline status")
    assert "stopped" in agent.stderr()
