"""`edgepilot endpoints apply | list | show | predict | delete`, run in-process on the session's
hub data directory (the digits models are registered there)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud_hub.cli.main import app
from cloud_hub.hub import Hub
from cloud_hub.serving import ServingEngine
from tests.cloud_hub.serving.conftest import EXAMPLES, digits_rows, png_b64


@pytest.fixture
def cli(serving_hub: Hub) -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, hub: Hub, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, ["--data-dir", str(hub.settings.data_dir), *args], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


def test_apply_list_show_predict_delete(cli: CliRunner, serving_hub: Hub, tmp_path: Path) -> None:
    code, out, err = run(cli, serving_hub, "endpoints", "apply", str(EXAMPLES / "sync.json"))
    assert code == 0, err
    assert "created endpoint digits-sync" in out and "predict" in out
    code, out, _ = run(cli, serving_hub, "endpoints", "apply", str(EXAMPLES / "sync.json"))
    assert code == 0 and "updated endpoint digits-sync" in out
    code, out, _ = run(
        cli,
        serving_hub,
        "endpoints",
        "apply",
        str(EXAMPLES / "preprocess_predict.json"),
        "--json",
    )
    assert json.loads(out)["status"] == "ready"

    code, out, _ = run(cli, serving_hub, "endpoints", "list", "--json")
    assert [e["name"] for e in json.loads(out)] == ["digits-preprocess", "digits-sync"]
    code, out, _ = run(cli, serving_hub, "endpoints", "list")
    assert "digits-sync" in out and "┃" in out
    code, out, _ = run(cli, serving_hub, "endpoints", "show", "digits-preprocess")
    assert code == 0 and "preprocess" in out and "digits/digits-mlp:1" in out

    x, _ = digits_rows()
    rows = json.dumps(x[:2].tolist())
    code, out, err = run(cli, serving_hub, "endpoints", "predict", "digits-sync", "--input", rows)
    assert code == 0, err
    assert "row" in out and "label" in out and "steps: predict" in out
    code, out, _ = run(
        cli, serving_hub, "endpoints", "predict", "digits-sync", "--input", rows, "--json"
    )
    assert len(json.loads(out)["predictions"]) == 2

    image = tmp_path / "five.png"
    image.write_bytes(base64.b64decode(png_b64(5)))
    code, out, err = run(
        cli,
        serving_hub,
        "endpoints",
        "predict",
        "digits-preprocess",
        "--image",
        str(image),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["steps"] == ["pre", "predict"]

    code, _, err = run(cli, serving_hub, "endpoints", "delete", "digits-sync")
    assert code == 0
    run(cli, serving_hub, "endpoints", "delete", "digits-preprocess")
    code, out, _ = run(cli, serving_hub, "endpoints", "list", "--json")
    assert json.loads(out) == []


def test_cli_errors_are_messages_with_exit_code_2(
    cli: CliRunner, serving_hub: Hub, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    spec = json.loads((EXAMPLES / "sync.json").read_text())
    spec["models"]["mlp"]["ref"] = "digits/digits-nope:1"
    bad.write_text(json.dumps(spec))
    code, _, err = run(cli, serving_hub, "endpoints", "apply", str(bad))
    assert code == 2 and "step 'predict'" in err and "unknown model version" in err
    bad.write_text("{oops")
    code, _, err = run(cli, serving_hub, "endpoints", "apply", str(bad))
    assert code == 2 and "not valid JSON" in err
    code, _, err = run(cli, serving_hub, "endpoints", "show", "nope")
    assert code == 2 and "endpoint 'nope' not found" in err
    code, _, err = run(cli, serving_hub, "endpoints", "predict", "nope", "--input", "[[1]]")
    assert code == 2 and "not found" in err
    run(cli, serving_hub, "endpoints", "apply", str(EXAMPLES / "sync.json"))
    try:
        code, _, err = run(
            cli, serving_hub, "endpoints", "predict", "digits-sync", "--input", "[[1, 2]]"
        )
        assert code == 2 and "takes input shape [None, 64]" in err
        code, _, err = run(cli, serving_hub, "endpoints", "predict", "digits-sync")
        assert code == 2 and "exactly one of" in err
    finally:
        run(cli, serving_hub, "endpoints", "delete", "digits-sync")


def test_a_running_engine_picks_up_what_the_cli_applied(cli: CliRunner, serving_hub: Hub) -> None:
    engine = ServingEngine(serving_hub.registry, serving_hub.db)
    engine.start()
    try:
        run(cli, serving_hub, "endpoints", "apply", str(EXAMPLES / "sync.json"))
        engine.sync()
        assert engine.get("digits-sync").status == "ready"
        from cloud_hub.serving import PredictRequest

        x, _ = digits_rows()
        result = engine.predict("digits-sync", PredictRequest(inputs=x[:1].tolist()))
        assert len(result.predictions) == 1
        run(cli, serving_hub, "endpoints", "delete", "digits-sync")
        engine.sync()
        assert engine.list() == []
    finally:
        engine.close()
