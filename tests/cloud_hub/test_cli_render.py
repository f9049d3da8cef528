"""The CLI's tables never cut an identifier: at 120 columns a long device id, version ref or
artifact is shown whole (free-text columns give way instead)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from cloud_hub.cli import render
from cloud_hub.devtools.demo import DemoFigures, DeviceFigures
from cloud_hub.fleet.schemas import Device

LONG_DEVICE = "jetson-orin-nano-line-17"
LONG_REF = "digits/digits-cnn-with-a-long-name:12"


def shown(table: Table, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


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
                inferences=159,
                correct=150,
                p50_ms=0.23,
                logs_made=159,
                logs_at_hub=159,
            ),
            DeviceFigures("demo-pi", "litert", "onnx/fp32", status="online"),
        ],
    )
    text = shown(render.demo_table(fig))
    assert "…" not in text
    for ident in (LONG_DEVICE, LONG_REF, "onnxruntime", "tflite/int8", "onnx/fp32"):
        assert ident in text, ident


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
    for ident in ("demo-jetson", "onnxruntime", "tflite/int8", "digits/digits-cnn:1"):
        assert ident in text, ident


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
