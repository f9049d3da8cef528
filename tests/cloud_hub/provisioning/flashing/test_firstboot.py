"""The first-boot scripts `edgepilot flash` writes, run with bash against a fake root directory
whose /boot/firmware is the flashed partition's files (copied out with mcopy): they must leave
an agent config the agent accepts, the token 0600 and gone from the boot partition, the agent
installed (from a wheel of this project, offline) with its unit enabled, and no secret on the
card."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from edge_agent.config import load_config, needs_enrollment
from tests.cloud_hub.provisioning.flashing.conftest import (
    PSK,
    SSH_KEY,
    TOKEN,
    ImageFactory,
    wpa_psk,
)
from tests.cloud_hub.provisioning.flashing.images import CMDLINE, copy_out
from tests.conftest import run_cli

HUB = "http://hub.example:8000"
SERIAL = "10000000a1b2c3d4"


def fake_device(root: Path, image: Path) -> Path:
    """A Raspberry Pi's root file system as first boot finds it; returns its boot folder."""
    boot = copy_out(image, root / "boot" / "firmware")
    (root / "proc").mkdir()
    (root / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nHardware\t: BCM2835\nRevision\t: c03112\nSerial\t\t: {SERIAL}\n"
    )
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("raspberrypi\n")
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"
    )
    (root / "home" / "pi").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)  # as every systemd OS has it
    rfkill = root / "var" / "lib" / "systemd" / "rfkill"
    rfkill.mkdir(parents=True)
    (rfkill / "platform-fe300000.mmcnr:wlan").write_text("1\n")
    return boot


def run_script(script: Path, root: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(root / "root"),
        "EDGEPILOT_ROOT": str(root),
        "EDGEPILOT_PACKAGE": str(wheel),
        "EDGEPILOT_PIP_ARGS": "--no-index --no-deps",
        "EDGEPILOT_PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600
    )


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_agent_installed(root: Path) -> None:
    etc = root / "etc" / "edgepilot"
    config = load_config(
        etc / "agent.toml", env={"EDGEPILOT_AGENT_DATA_DIR": str(root / "var/lib/edgepilot")}
    )
    assert config.enroll is not None and config.enroll.hub == HUB
    assert config.enroll.token_file == Path("/etc/edgepilot/enroll-token")
    assert needs_enrollment(config)  # it enrolls itself on its first start
    token = etc / "enroll-token"
    assert token.read_text().strip() == TOKEN and mode(token) == 0o600
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "edgepilot-agent.service").is_symlink()
    assert not (wants / "edgepilot-firstboot.service").exists()
    assert (root / "opt/edgepilot/venv/bin/edgepilot-agent").is_file()
    assert not (root / "var/lib/edgepilot-setup").exists()  # the staged token went with it


def test_bookworm_first_boot(
    image: ImageFactory,
    secrets: dict[str, Path],
    cli_env: dict[str, str],
    tmp_path: Path,
    agent_wheel: Path,
) -> None:
    img = image("bookworm")
    res = run_cli(
        ["flash", str(img), "--hub", HUB, "--token-file", str(secrets["token"]),
         "--hostname-prefix", "cam", "--wifi-ssid", "Shop Floor", "--wifi-psk-file",
         str(secrets["psk"]), "--wifi-country", "GB", "--ssh-key", str(secrets["ssh"])],
        cli_env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    root = tmp_path / "root"
    boot = fake_device(root, img)

    # First stage, as systemd.run runs it from cmdline.txt (no network yet).
    first = run_script(boot / "firstrun.sh", root, agent_wheel)
    assert first.returncode == 0, first.stderr
    assert (root / "etc/hostname").read_text() == "cam-b2c3d4\n"
    assert "127.0.1.1\tcam-b2c3d4" in (root / "etc/hosts").read_text()
    wifi = root / "etc/NetworkManager/system-connections/edgepilot-wifi.nmconnection"
    assert mode(wifi) == 0o600
    keyfile = wifi.read_text()
    assert "ssid=Shop Floor\n" in keyfile and f"psk={wpa_psk('Shop Floor')}\n" in keyfile
    assert (root / "var/lib/systemd/rfkill/platform-fe300000.mmcnr:wlan").read_text() == "0\n"
    keys = root / "home/pi/.ssh/authorized_keys"
    assert keys.read_text() == SSH_KEY + "\n" and mode(keys) == 0o600
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "ssh.service").is_symlink()
    # The card holds no secret any more, nor the first-boot arguments.
    assert not (boot / "firstrun.sh").exists() and not (boot / "edgepilot").exists()
    assert (boot / "cmdline.txt").read_text() == (
        CMDLINE.strip() + " cfg80211.ieee80211_regdom=GB\n"
    )
    card = all_bytes(boot)
    assert TOKEN.encode() not in card and PSK.encode() not in card
    assert wpa_psk("Shop Floor").encode() not in card
    # The agent installs on the next boot, once the network is online.
    assert (wants / "edgepilot-firstboot.service").is_symlink()
    unit = (root / "etc/systemd/system/edgepilot-firstboot.service").read_text()
    assert "After=network-online.target" in unit
    staged = root / "var/lib/edgepilot-setup"
    assert mode(staged) == 0o700 and mode(staged / "enroll-token") == 0o600

    # Second stage, as edgepilot-firstboot.service runs it.
    second = run_script(staged / "setup.sh", root, agent_wheel)
    assert second.returncode == 0, second.stderr
    assert_agent_installed(root)
    assert TOKEN not in first.stderr + second.stderr and PSK not in first.stderr + second.stderr


def test_trixie_cloud_init_first_boot(
    image: ImageFactory,
    secrets: dict[str, Path],
    cli_env: dict[str, str],
    tmp_path: Path,
    agent_wheel: Path,
) -> None:
    img = image("trixie")
    res = run_cli(
        ["flash", str(img), "--hub", HUB, "--token-file", str(secrets["token"]),
         "--wifi-ssid", "net", "--wifi-psk-file", str(secrets["psk"]), "--wifi-country", "FR"],
        cli_env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    root = tmp_path / "root"
    boot = fake_device(root, img)
    assert wpa_psk("net") in (boot / "network-config").read_text()

    # What user-data's runcmd runs, once cloud-init has brought the network up.
    done = run_script(boot / "edgepilot" / "firstboot.sh", root, agent_wheel)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/hostname").read_text() == "edgepilot-b2c3d4\n"
    assert_agent_installed(root)
    assert not (boot / "edgepilot").exists() and not (boot / "network-config").exists()
    assert (boot / "user-data").exists() and (boot / "meta-data").exists()
    kept = root / "etc/cloud/cloud.cfg.d/99-edgepilot-network.cfg"
    assert kept.read_text() == "network: {config: disabled}\n"
    card = all_bytes(boot)
    assert TOKEN.encode() not in card and PSK.encode() not in card
    assert wpa_psk("net").encode() not in card
    assert not (root / "etc/NetworkManager").exists()  # cloud-init's netplan does the Wi-Fi


def test_a_failed_bookworm_first_boot_still_boots_normally_next_time(
    image: ImageFactory,
    secrets: dict[str, Path],
    cli_env: dict[str, str],
    tmp_path: Path,
    agent_wheel: Path,
) -> None:
    img = image("bookworm")
    res = run_cli(["flash", str(img), "--hub", HUB, "--token-file", str(secrets["token"])], cli_env)
    assert res.returncode == 0, res.stderr
    root = tmp_path / "root"
    boot = fake_device(root, img)
    (boot / "edgepilot" / "enroll-token").unlink()  # a card damaged after flashing
    failed = run_script(boot / "firstrun.sh", root, agent_wheel)
    assert failed.returncode != 0
    assert (boot / "cmdline.txt").read_text() == CMDLINE
