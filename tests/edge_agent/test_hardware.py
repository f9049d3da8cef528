"""Hardware facts for enrollment, read from fake root directories laid out like real machines."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from edge_agent.hardware import (
    HardwareIdUnavailable,
    available_runtimes,
    hardware_id,
    hardware_model,
)

PI_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41

Revision\t: d04170
Serial\t\t: 10000000ABCD0001
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def _root(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    root = tmp_path / "root"
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    root.mkdir(exist_ok=True)
    return root


def test_a_raspberry_pi_is_known_by_its_serial_from_either_source(tmp_path: Path) -> None:
    tree = "sys/firmware/devicetree/base"
    pi = _root(
        tmp_path / "pi",
        {
            f"{tree}/serial-number": b"10000000abcd0001\x00",
            f"{tree}/model": b"Raspberry Pi 5 Model B Rev 1.0\x00",
            "proc/cpuinfo": PI_CPUINFO,
            "etc/machine-id": "4c4c4544004a3510804cb4c04f4e3332\n",
        },
    )
    assert hardware_id(pi) == "serial:10000000abcd0001"
    assert hardware_model(pi) == "Raspberry Pi 5 Model B Rev 1.0"
    # in a container without /sys/firmware the kernel's cpuinfo gives the same id
    container = _root(tmp_path / "container", {"proc/cpuinfo": PI_CPUINFO})
    assert hardware_id(container) == "serial:10000000abcd0001"


def test_a_jetson_is_known_by_its_module_serial_and_model(tmp_path: Path) -> None:
    tree = "sys/firmware/devicetree/base"
    jetson = _root(
        tmp_path,
        {
            f"{tree}/serial-number": b"1422921012345\x00",
            "proc/device-tree/model": b"NVIDIA Jetson Orin Nano Developer Kit\x00",
            "proc/cpuinfo": "processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n",
            "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        },
    )
    assert hardware_id(jetson) == "serial:1422921012345"
    assert hardware_model(jetson) == "NVIDIA Jetson Orin Nano Developer Kit"


def test_a_pc_falls_back_to_its_machine_id_prefixed_so_it_never_meets_a_serial(
    tmp_path: Path,
) -> None:
    pc = _root(
        tmp_path,
        {
            "proc/cpuinfo": "processor\t: 0\nSerial\t: 0000000000000000\n",  # a VM's: unset
            "etc/machine-id": "0123456789ABCDEF0123456789abcdef\n",
        },
    )
    assert hardware_id(pc) == "machine-id:0123456789abcdef0123456789abcdef"
    assert hardware_model(pc) == platform.machine()


def test_no_source_says_how_to_configure_one(tmp_path: Path) -> None:
    empty = _root(tmp_path, {"etc/machine-id": "\n"})
    with pytest.raises(HardwareIdUnavailable) as info:
        hardware_id(empty)
    assert "enroll.hardware_id" in str(info.value) and "--hardware-id" in str(info.value)


def test_runtimes_are_the_installed_ones_by_the_hubs_names() -> None:
    found = available_runtimes()
    assert "onnxruntime" in found  # the test environment installs it
    assert set(found) <= {"onnxruntime", "litert"}
