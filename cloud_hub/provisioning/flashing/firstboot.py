"""What `edgepilot flash` writes into a Raspberry Pi OS boot partition, rendered from the
templates in firmware_configs/raspberrypi (and the agent's and install script's own files).

Two first-boot mechanisms: Bookworm runs `firstrun.sh` from `cmdline.txt` (as Raspberry Pi Imager
sets it up); Trixie runs cloud-init from `user-data`, `network-config` and `meta-data`. Both run
the same first-boot script (see firstboot.sh.template); everything rendered here is a pure
function of the settings, so flashing twice writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import uuid
from typing import Literal

from pydantic import BaseModel, Field, field_validator

import firmware_configs
from cloud_hub.core.errors import InvalidInput

__all__ = [
    "BOOT_FOLDER",
    "DATA_DIR",
    "FIRSTRUN_ARGS",
    "TOKEN_FILE",
    "FlashConfig",
    "Mechanism",
    "WifiConfig",
    "boot_files",
    "edit_cmdline",
]

Mechanism = Literal["firstrun", "cloud-init"]
WRITTEN_BY = "edgepilot flash"
BOOT_FOLDER = "edgepilot"  # on the boot partition
DATA_DIR = "/var/lib/edgepilot"
TOKEN_FILE = "/etc/edgepilot/enroll-token"
FIRSTRUN_ARGS = (
    "systemd.run=/boot/firstrun.sh",
    "systemd.run_success_action=reboot",
    "systemd.unit=kernel-command-line.target",
)
CLOUD_INIT_FILES = ("user-data", "meta-data", "network-config")
_REGDOM = "cfg80211.ieee80211_regdom="


class WifiConfig(BaseModel):
    ssid: str = Field(min_length=1)
    psk: str = Field(repr=False)
    country: str = Field(pattern=r"^[A-Z]{2}$")

    @field_validator("ssid")
    @classmethod
    def _ssid(cls, value: str) -> str:
        if len(value.encode()) > 32 or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a Wi-Fi network name is 1 to 32 bytes, no control characters")
        return value

    @field_validator("psk")
    @classmethod
    def _psk(cls, value: str) -> str:
        printable = all(32 <= ord(c) < 127 for c in value)
        if not ((8 <= len(value) <= 63 and printable) or re.fullmatch(r"[0-9A-Fa-f]{64}", value)):
            # Never the value itself: it is the network's key.
            raise ValueError(
                "the Wi-Fi passphrase must be 8 to 63 printable ASCII characters (or 64 hex digits)"
            )
        return value

    @property
    def wpa_psk(self) -> str:
        """The 256-bit key WPA derives from the passphrase (PBKDF2-HMAC-SHA1, the SSID as salt,
        4096 rounds), in hex, as Raspberry Pi Imager writes it: the card never holds the
        passphrase itself (WPA2-PSK; a WPA3-only network needs the passphrase)."""
        if len(self.psk) == 64:
            return self.psk.lower()
        key = hashlib.pbkdf2_hmac("sha1", self.psk.encode(), self.ssid.encode(), 4096, 32)
        return key.hex()


class FlashConfig(BaseModel):
    hub_url: str
    token: str = Field(min_length=8, max_length=256, repr=False)
    hostname_prefix: str = Field(
        default="edgepilot", pattern=r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"
    )
    wifi: WifiConfig | None = None
    ssh_key: str | None = None
    agent_package: str = Field(default="edgepilot[agent]", min_length=1)

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("the enrollment token holds spaces or control characters")
        return value

    @field_validator("ssh_key")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "PRIVATE KEY" in value:
            raise ValueError("that is a private key: give the public one (the .pub file)")
        lines = [ln.strip() for ln in value.splitlines() if ln.strip()]
        if len(lines) != 1 or not re.match(
            r"^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+", lines[0]
        ):
            raise ValueError("not an OpenSSH public key (one line: ssh-ed25519 AAAA... comment)")
        return lines[0]


def _keyfile_value(text: str) -> str:
    """A value as GLib's key files (NetworkManager's keyfiles) escape it."""
    escaped = text.replace("\\", "\\\\")
    return "\\s" + escaped[1:] if escaped.startswith(" ") else escaped


def _nm_keyfile(wifi: WifiConfig) -> str:
    return "\n".join(
        [
            "[connection]",
            "id=edgepilot-wifi",
            f"uuid={uuid.uuid5(uuid.NAMESPACE_URL, 'edgepilot-wifi:' + wifi.ssid)}",
            "type=wifi",
            "autoconnect=true",
            "",
            "[wifi]",
            "mode=infrastructure",
            f"ssid={_keyfile_value(wifi.ssid)}",
            "",
            "[wifi-security]",
            "key-mgmt=wpa-psk",
            f"psk={wifi.wpa_psk}",
            "",
            "[ipv4]",
            "method=auto",
            "",
            "[ipv6]",
            "addr-gen-mode=default",
            "method=auto",
        ]
    )


def _yaml(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _install_script() -> str:
    try:
        return firmware_configs.read("systemd/install.sh")
    except FileNotFoundError:
        raise InvalidInput(
            "firmware_configs/systemd/install.sh is missing from this installation of EdgePilot"
        ) from None


def _first_boot_script(cfg: FlashConfig, mechanism: Mechanism) -> str:
    wifi = cfg.wifi if mechanism == "firstrun" else None
    return firmware_configs.render(
        "raspberrypi/firstboot.sh.template",
        {
            "WRITTEN_BY": WRITTEN_BY,
            "MECHANISM": mechanism,
            "HOSTNAME_PREFIX": shlex.quote(cfg.hostname_prefix),
            "SSH_KEY": shlex.quote(cfg.ssh_key or ""),
            "HAS_WIFI": "1" if cfg.wifi is not None else "0",
            "AGENT_PACKAGE": shlex.quote(cfg.agent_package),
            "WIFI_KEYFILE": _nm_keyfile(wifi) if wifi is not None else "",
        },
    )


def _cloud_init(cfg: FlashConfig) -> dict[str, str]:
    files: dict[str, str] = {}
    ssh = ""
    if cfg.ssh_key:
        ssh = f"enable_ssh: true\nssh_pwauth: false\nssh_authorized_keys:\n  - {_yaml(cfg.ssh_key)}"
    files["user-data"] = firmware_configs.render(
        "raspberrypi/user-data.template",
        {"WRITTEN_BY": WRITTEN_BY, "HOSTNAME_PREFIX": cfg.hostname_prefix, "SSH_SECTION": ssh},
    )
    if cfg.wifi is not None:
        files["network-config"] = firmware_configs.render(
            "raspberrypi/network-config.template",
            {
                "WRITTEN_BY": WRITTEN_BY,
                "WIFI_COUNTRY": _yaml(cfg.wifi.country),
                "WIFI_SSID": _yaml(cfg.wifi.ssid),
                "WIFI_PSK": _yaml(cfg.wifi.wpa_psk),
            },
        )
    return files


def boot_files(cfg: FlashConfig, mechanism: Mechanism) -> dict[str, bytes]:
    """Path on the boot partition -> content (cmdline.txt apart: see `edit_cmdline`)."""
    folder = f"/{BOOT_FOLDER}"
    agent_toml = firmware_configs.render(
        "agent/agent-enroll.toml.template",
        {
            "WRITTEN_BY": WRITTEN_BY,
            "DATA_DIR": json.dumps(DATA_DIR),
            "HUB_URL": json.dumps(cfg.hub_url),
            "TOKEN_FILE": json.dumps(TOKEN_FILE),
        },
    )
    files: dict[str, str] = {
        f"{folder}/agent.toml": agent_toml,
        f"{folder}/enroll-token": cfg.token + "\n",
        f"{folder}/install.sh": _install_script(),
        f"{folder}/setup.sh": firmware_configs.read("raspberrypi/setup.sh"),
        f"{folder}/edgepilot-firstboot.service": firmware_configs.read(
            "raspberrypi/edgepilot-firstboot.service"
        ),
    }
    script = _first_boot_script(cfg, mechanism)
    if mechanism == "firstrun":
        files["/firstrun.sh"] = script
    else:
        files[f"{folder}/firstboot.sh"] = script
        for name, text in _cloud_init(cfg).items():
            files[f"/{name}"] = text
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
        files["/meta-data"] = firmware_configs.render(
            "raspberrypi/meta-data.template",
            {"WRITTEN_BY": WRITTEN_BY, "INSTANCE_ID": f"edgepilot-{digest.hexdigest()[:16]}"},
        )
    return {path: text.encode() for path, text in files.items()}


def edit_cmdline(text: str, wifi_country: str | None) -> str:
    """cmdline.txt with the firstrun arguments (once, however often it is edited) and the Wi-Fi
    country (as raspi-config sets it)."""
    words = text.strip().splitlines()[0].split() if text.strip() else []
    words = [
        w
        for w in words
        if w not in FIRSTRUN_ARGS and not w.startswith(("systemd.run=", "systemd.run_success"))
    ]
    if wifi_country is not None:
        words = [w for w in words if not w.startswith(_REGDOM)] + [_REGDOM + wifi_country]
    return " ".join([*words, *FIRSTRUN_ARGS]) + "\n"
