"""An option whose value is one of a fixed set is checked by the command line itself: a bad value
exits 2 naming the choices, and --help lists them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud_hub.cli.main import app

CASES = [
    (["demo", "--broker", "nope"], "--broker", ["auto", "mosquitto", "embedded"]),
    (["deploy", "v", "--device", "d", "--strategy", "fast"], "--strategy", ["all_at_once"]),
    (["monitor", "--by", "user"], "--by", ["version", "endpoint", "device"]),
    (["endpoints", "report", "e", "--ab", "--metric", "x"], "--metric", ["latency", "error_rate"]),
    (["quantize", "x.onnx", "--method", "fancy"], "--method", ["auto", "static", "dynamic"]),
    (["models", "download", "v", "-o", "out", "--format", "pt"], "--format", ["onnx", "tflite"]),
    (["devices", "metrics", "d", "--step", "5m"], "--step", ["raw", "1m", "1h", "auto"]),
    (
        ["train", "--project", "p", "--dataset", "digits", "--model", "cnn", "--color", "blue"],
        "--color",
        ["gray", "rgb"],
    ),
]


@pytest.mark.parametrize(("args", "option", "choices"), CASES, ids=[c[1] for c in CASES])
def test_a_value_outside_the_choices_exits_2_naming_them(
    tmp_path: Path, args: list[str], option: str, choices: list[str]
) -> None:
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.replace("│", " ").split())
    assert f"Invalid value for '{option}'" in message
    for choice in choices:
        assert f"'{choice}'" in message, (choice, message)
    assert not (tmp_path / "registry.db").exists()  # refused before anything was opened


@pytest.mark.parametrize(("args", "option", "choices"), CASES, ids=[c[1] for c in CASES])
def test_help_lists_the_choices(args: list[str], option: str, choices: list[str]) -> None:
    command = args[: 2 if args[0] in ("endpoints", "models", "devices") else 1]
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.replace("│", " ").split())
    assert option in shown
    for choice in choices:  # in the option's <a|b|c>
        assert choice in shown, choice
