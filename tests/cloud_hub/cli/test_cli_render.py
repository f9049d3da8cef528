"""The CLI's tables never cut an identifier: at 120 columns a long device id, version ref or
artifact is shown whole (free-text columns give way instead)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cloud_hub.cli import render
from cloud_hub.devtools.demo import DemoFigures, DeviceFigures
from cloud_hub.fleet.schemas import Device

LONG_DEVICE = "jetson-orin-line-17"
LONG_REF = "digits/digits-cnn-v2:12"


def shown(table: Table, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def cells(text: str) -> list[str]:
    """Each column's body cells of a one-row table, read top to bottom (a value folded onto
    more lines reads whole again)."""
    rows = [line.split("│") for line in text.splitlines() if "│" in line]
    return ["".join(row[i].strip() for row in rows) for i in range(len(rows[0]))]


def test_the_demo_table_shows_whole_ids_versions_and_artifacts() -> None:
    fig = DemoFigures(
        broker="mosquitto",
        deployed_version=LONG_REF,
        phase="serving",
        devices=[
            DeviceFigures(
                device_id=LONG_DEVICE,
                runtime="onnxruntime",
                artifact="tflite/int8",
                status="online",
                active_version=LONG_REF,
                inferences=15900,
                correct=15000,
                p50_ms=0.23,
                logs_made=15900,
                logs_at_hub=15900,
            ),
        ],
    )
    text = shown(render.demo_table(fig))
    assert "…" not in text
    assert cells(text)[:5] == [LONG_DEVICE, "onnxruntime", "tflite/int8", "online", LONG_REF]
    assert cells(text)[5:] == ["15900", "94.3%", "0.23", "15900", "15900"]


def test_the_demo_table_at_its_usual_size_keeps_each_id_on_one_line() -> None:
    fig = DemoFigures(
        deployed_version="digits/digits-cnn:1",
        devices=[
            DeviceFigures(
                "demo-jetson", "onnxruntime", "onnx/fp32", "online", "digits/digits-cnn:1"
            ),
            DeviceFigures("demo-pi", "litert", "tflite/int8", "online", "digits/digits-cnn:1"),
        ],
    )
    text = shown(render.demo_table(fig))
    assert "…" not in text
    for ident in ("demo-jetson", "onnxruntime", "tflite/int8", "digits/digits-cnn:1"):
        assert ident in text, ident
    for header in ("inferences", "accuracy"):
        assert header in text, header


def _device(**fields: Any) -> Device:
    base: dict[str, Any] = {
        "id": LONG_DEVICE,
        "name": LONG_DEVICE,
        "hardware": "jetson-orin-nano",
        "runtimes": ["onnxruntime", "litert"],
        "tags": ["shop-floor", "line-3"],
        "group": "berlin-hall-7",
        "status": "online",
        "agent_version": "0.9.0",
        "last_seen": "2026-12-03T05:40:11.123456+00:00",
        "active_version_id": 123456,
        "desired_version_id": None,
        "created_at": "2026-12-01T00:00:00+00:00",
    }
    return Device(**{**base, **fields})


def test_a_wide_devices_table_wraps_free_text_but_never_an_id() -> None:
    text = shown(render.devices_table([_device(), _device(id="demo-pi")]))
    assert "…" not in text
    for ident in (LONG_DEVICE, "berlin-hall-7", "123456", "2026-12-03T05:40:11"):
        assert ident in text, ident
