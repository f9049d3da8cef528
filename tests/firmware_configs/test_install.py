"""install.sh against a fake root: the agent in a venv, its config and token with their modes,
the shipped unit enabled, nothing started; a second run changes nothing; the installed agent
runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import firmware_configs

SCRIPT = firmware_configs.root() / "systemd" / "install.sh"
TOKEN = "ept_install_test_token_0123456789"
CONFIG = 'data_dir = "/var/lib/edgepilot"\n[enroll]\nhub = "http://hub.example:8000"\n'


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True, text=True, timeout=600,
        env={"PATH": os.environ["PATH"], "HOME": str(root)},
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under root: its mode and content (a link: its target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = (mode(path), os.readlink(path))
        elif path.is_file():
            out[rel] = (
                mode(path),
                path.read_bytes().hex()
                if path.stat().st_size < 4096
                else str(path.stat().st_mtime_ns),
            )
        else:
            out[rel] = (mode(path), "dir")
    return out


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, agent_wheel: Path
) -> tuple[Path, list[str], str]:
    wheel = agent_wheel
    src = tmp_path_factory.mktemp("src")
    (src / "agent.toml").write_text(CONFIG)
    (src / "token").write_text(TOKEN + "\n")
    root = tmp_path_factory.mktemp("root")
    args = ["--config", str(src / "agent.toml"), "--token-file", str(src / "token"),
            "--package", str(wheel), "--pip-args", "--no-index --no-deps",
            "--python", sys.executable]  # fmt: skip
    res = install(root, *args)
    assert res.returncode == 0, res.stderr
    assert not (src / "token").exists()  # moved, not copied
    return root, args, res.stderr


def test_installs_the_agent_config_token_and_unit(installed: tuple[Path, list[str], str]) -> None:
    root, _, messages = installed
    assert (root / "opt/edgepilot/venv/bin/edgepilot-agent").is_file()
    config = root / "etc/edgepilot/agent.toml"
    assert config.read_text() == CONFIG and mode(config) == 0o640
    token = root / "etc/edgepilot/enroll-token"
    assert token.read_text().strip() == TOKEN and mode(token) == 0o600
    assert mode(root / "etc/edgepilot") == 0o1770  # the agent may delete only its own token
    assert mode(root / "var/lib/edgepilot") == 0o700
    unit = root / "etc/systemd/system/edgepilot-agent.service"
    assert unit.read_text() == firmware_configs.read("systemd/edgepilot-agent.service")
    link = root / "etc/systemd/system/multi-user.target.wants/edgepilot-agent.service"
    assert link.is_symlink()
    assert os.readlink(link) == "/etc/systemd/system/edgepilot-agent.service"
    assert "skipping user creation under --root" in messages
    assert "not starting" in messages
    assert not (root / "etc/passwd").exists()  # no user made in a fake root
    assert TOKEN not in messages


def test_second_run_changes_nothing(installed: tuple[Path, list[str], str]) -> None:
    root, args, _ = installed
    before = snapshot(root)
    again = install(root, *args)  # the token file is gone now: it is in place already
    assert again.returncode == 0, again.stderr
    assert "already" in again.stderr
    assert snapshot(root) == before


def test_installed_agent_runs(installed: tuple[Path, list[str], str]) -> None:
    root, _, _ = installed
    venv = root / "opt/edgepilot/venv"
    # The wheel went in with --no-deps (PyPI is out of reach in tests); on a device pip fetches
    # the agent's dependencies. A .pth file lends the new venv this test venv's packages in
    # their place, so the installed console script itself runs.
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    try:
        res = subprocess.run(
            [str(venv / "bin/edgepilot-agent"), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        (site / "zz_test_deps.pth").unlink()
    assert res.returncode == 0, res.stderr
    assert "run" in res.stdout and "enroll" in res.stdout


def test_refuses_a_missing_config_and_unknown_arguments(tmp_path: Path) -> None:
    res = install(tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert res.returncode == 2 and "--config" in res.stderr and "no such file" in res.stderr
    res = install(tmp_path, "--frobnicate")
    assert res.returncode == 2 and "unknown argument: --frobnicate" in res.stderr
    res = install(tmp_path, "--token-file", str(tmp_path / "none"))
    assert res.returncode == 2 and "no such file" in res.stderr
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_enables_with_the_wants_link_when_systemctl_is_missing(
    installed: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    """An image's root prepared on a machine without systemd: the same link systemctl makes."""
    _, args, _ = installed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not Path(folder).is_dir():
            continue
        for tool in Path(folder).iterdir():
            target = bin_dir / tool.name
            if tool.name != "systemctl" and not target.exists() and os.access(tool, os.X_OK):
                target.symlink_to(tool)
    root = tmp_path / "root"
    root.mkdir()
    at = args.index("--token-file")
    args = args[:at] + args[at + 2 :]  # the token went to the first fake root
    res = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True, text=True, timeout=600,
        env={"PATH": str(bin_dir), "HOME": str(root)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    link = root / "etc/systemd/system/multi-user.target.wants/edgepilot-agent.service"
    assert os.readlink(link) == "/etc/systemd/system/edgepilot-agent.service"
