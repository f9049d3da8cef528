"""The agent.toml templates, rendered and read by the agent's own config loader; every file of
firmware_configs/agent/ is covered here or by the image tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import firmware_configs
from edge_agent.config import ConfigError, load_config, load_settings, needs_enrollment

COVERED = {"agent-enroll.toml.template", "agent-container.toml"}  # the latter: test_dockerfiles


def test_every_agent_file_is_tested() -> None:
    assert {p.name for p in (firmware_configs.root() / "agent").iterdir()} == COVERED


def render_enroll(data_dir: Path, hub: str, token_file: Path) -> str:
    return firmware_configs.render(
        "agent/agent-enroll.toml.template",
        {
            "DATA_DIR": json.dumps(str(data_dir)),
            "HUB_URL": json.dumps(hub),
            "TOKEN_FILE": json.dumps(str(token_file)),
            "WRITTEN_BY": "a test",
        },
    )


def test_enroll_template_makes_a_config_that_enrolls(tmp_path: Path) -> None:
    text = firmware_configs.read("agent/agent-enroll.toml.template")
    assert firmware_configs.placeholders(text) == {
        "DATA_DIR",
        "HUB_URL",
        "TOKEN_FILE",
        "WRITTEN_BY",
    }
    token = tmp_path / "enroll-token"
    token.write_text("ept_template_test_token\n")
    config = tmp_path / "agent.toml"
    config.write_text(render_enroll(tmp_path / "data", "http://hub.example:8000/", token))
    loaded = load_config(config, env={})
    assert needs_enrollment(loaded)
    assert loaded.enroll is not None and loaded.enroll.hub == "http://hub.example:8000"
    assert loaded.enroll.token_file == token and loaded.data_dir == tmp_path / "data"
    assert loaded.http.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="not enrolled yet"):
        load_settings(config, env={})  # it cannot run before it has enrolled


def test_enroll_template_with_a_bad_hub_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(render_enroll(tmp_path, "hub.example:8000", tmp_path / "t"))
    with pytest.raises(ConfigError, match=r"enroll\.hub"):
        load_config(config, env={})
