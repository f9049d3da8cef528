"""What identifies this machine across a re-flash, what it is and what it can run.

`hardware_id` reads, in order, the first source that has a usable value:

1. the device tree's serial number (`/sys/firmware/devicetree/base/serial-number`: a Raspberry
   Pi's SoC serial, a Jetson module's serial number), NUL-terminated in the file;
2. the `Serial` line of `/proc/cpuinfo` (a Raspberry Pi's kernel prints the same serial there;
   it is visible inside containers where /sys/firmware is not);
3. `/etc/machine-id` (systemd's id of the installation: it survives reboots, not a re-flash).

The value is prefixed by its kind (`serial:`, `machine-id:`), so ids from different sources never
collide; the two serial sources give the same id on a Pi. `root` is where the filesystem starts
(tests pass a fake root).
"""

from __future__ import annotations

import importlib.util
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Literal

__all__ = [
    "HardwareIdUnavailable",
    "agent_version",
    "available_runtimes",
    "hardware_id",
    "hardware_model",
]

RuntimeName = Literal["onnxruntime", "litert"]

_MAX_ID = 128  # the wire contract's limit for a hardware id
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


class HardwareIdUnavailable(RuntimeError):
    """No source of a stable hardware id on this machine: configure `enroll.hardware_id`."""


def _read(root: Path, relative: str) -> str | None:
    try:
        raw = (root / relative).read_bytes()
    except OSError:
        return None
    text = raw.replace(b"\x00", b"").decode("ascii", errors="replace").strip()
    return text or None


def _usable(value: str | None) -> str | None:
    """A serial or id worth using: printable, not all zeros (a VM's or an unset serial)."""
    if value is None:
        return None
    value = value.strip().lower()
    if not value or not _PRINTABLE.match(value) or set(value) <= {"0"}:
        return None
    return value


def _cpuinfo_serial(root: Path) -> str | None:
    text = _read(root, "proc/cpuinfo")
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "serial":
            return _usable(value)
    return None


def hardware_id(root: Path = Path("/")) -> str:
    """This machine's hardware id, prefixed by its source; HardwareIdUnavailable if none."""
    candidates = [
        ("serial", _usable(_read(root, "sys/firmware/devicetree/base/serial-number"))),
        ("serial", _cpuinfo_serial(root)),
        ("machine-id", _usable(_read(root, "etc/machine-id"))),
    ]
    for kind, value in candidates:
        if value is not None:
            return f"{kind}:{value}"[:_MAX_ID]
    raise HardwareIdUnavailable(
        "no hardware id found (no device-tree serial number, no Serial in /proc/cpuinfo, no "
        "/etc/machine-id): set enroll.hardware_id (EDGEPILOT_AGENT_ENROLL_HARDWARE_ID) or pass "
        "--hardware-id"
    )


def hardware_model(root: Path = Path("/")) -> str:
    """What the machine is: the device tree's model ("Raspberry Pi 5 Model B Rev 1.0", "NVIDIA
    Jetson Orin Nano ..."), else the CPU architecture."""
    for relative in ("sys/firmware/devicetree/base/model", "proc/device-tree/model"):
        model = _read(root, relative)
        if model:
            return model[:256]
    return platform.machine()


def available_runtimes() -> list[RuntimeName]:
    """The engines installed, found without importing them (names as the hub knows them)."""
    found: list[RuntimeName] = []
    if importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnxruntime")
    if any(
        importlib.util.find_spec(name) is not None for name in ("ai_edge_litert", "tflite_runtime")
    ):
        found.append("litert")
    return found


def agent_version() -> str:
    """The installed edgepilot package's version."""
    try:
        return metadata.version("edgepilot")
    except metadata.PackageNotFoundError:
        return "0+unknown"
