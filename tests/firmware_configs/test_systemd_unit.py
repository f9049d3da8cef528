"""The shipped systemd unit passes `systemd-analyze verify` and keeps its exposure score (the
`systemd-analyze security` scale, 0 = locked down, 10 = none) at or under EXPOSURE_MAX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import firmware_configs

UNIT = "systemd/edgepilot-agent.service"
EXEC = "/opt/edgepilot/venv/bin/edgepilot-agent"
# Measured 2.0 with systemd 252 (Debian Bookworm); the margin lets newer systemd versions score
# a new setting without failing, and fails if a hardening line goes.
EXPOSURE_MAX = 2.5


def directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` → its values, in order (a unit may repeat a key)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def runnable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at this test venv's agent: verify checks that the
    program exists; everything else is the shipped file."""
    assert EXEC in text
    agent = Path(sys.executable).with_name("edgepilot-agent")
    assert agent.is_file()
    path = tmp_path / "edgepilot-agent.service"
    path.write_text(text.replace(EXEC, str(agent)))
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    res = analyze("verify", str(runnable_copy(tmp_path, firmware_configs.read(UNIT))))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "" and res.stdout.strip() == ""


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above is a real one: a misspelt directive is reported."""
    text = firmware_configs.read(UNIT).replace("ProtectHome=true", "ProtectHme=true")
    res = analyze("verify", str(runnable_copy(tmp_path, text)))
    assert "ProtectHme" in res.stderr


def test_exposure_score_under_threshold(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path, firmware_configs.read(UNIT))
    res = analyze("security", "--offline=true", f"--threshold={EXPOSURE_MAX * 10:.0f}", str(unit))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    score = float(res.stdout.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
    assert score <= EXPOSURE_MAX


def test_unit_runs_the_agent_as_its_own_user() -> None:
    unit = directives(firmware_configs.read(UNIT))
    assert unit["Service.User"] == ["edgepilot"] and unit["Service.Group"] == ["edgepilot"]
    assert "video" in unit["Service.SupplementaryGroups"][0].split()
    assert unit["Service.ExecStart"] == [f"{EXEC} run --config /etc/edgepilot/agent.toml"]
    assert unit["Service.Restart"] == ["on-failure"] and unit["Service.RestartSec"] == ["5"]
    assert unit["Unit.StartLimitIntervalSec"] == ["0"]  # restarts never stop for good
    assert unit["Service.StateDirectory"] == ["edgepilot"]
    assert unit["Service.ProtectSystem"] == ["strict"]
    assert unit["Service.NoNewPrivileges"] == ["true"]
    assert unit["Service.ReadWritePaths"] == ["/etc/edgepilot"]  # to delete the used token
    assert unit["Service.ConfigurationDirectoryMode"] == ["1770"]
    assert "network-online.target" in unit["Unit.After"][0].split()
    assert unit["Unit.Wants"] == ["network-online.target"]
    assert unit["Install.WantedBy"] == ["multi-user.target"]
