"""`edgepilot` as a user runs it: a real process, tables for people, JSON for scripts, clear
messages and non-zero exit codes for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def test_train_list_show_as_json_and_tables(cli_env: dict[str, str]) -> None:
    trained = run_cli(
        ["train", "--project", "flowers", "--dataset", "iris", "--model", "mlp", "--json"], cli_env
    )
    assert trained.returncode == 0, trained.stderr
    version = json.loads(trained.stdout)["version"]
    assert version["project"] == "flowers" and version["model"] == "iris-mlp"

    listed = run_cli(["models", "list", "--json"], cli_env)
    assert [m["name"] for m in json.loads(listed.stdout)] == ["iris-mlp"]
    table = run_cli(["models", "list"], cli_env)
    assert "iris-mlp" in table.stdout and "┃" in table.stdout  # a rich table, not a dict

    shown = run_cli(["models", "show", "flowers/iris-mlp:1", "--json"], cli_env)
    assert json.loads(shown.stdout)["id"] == version["id"]
    shown_table = run_cli(["models", "show", "flowers/iris-mlp:1"], cli_env)
    assert "onnx" in shown_table.stdout and "int8" in shown_table.stdout

    runs = json.loads(run_cli(["runs", "list", "--json"], cli_env).stdout)
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    run_table = run_cli(["runs", "show", runs[0]["name"]], cli_env)
    assert run_table.returncode == 0 and "quantize" in run_table.stdout


def test_data_dir_flag_and_env_agree(cli_env: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    made = run_cli(["--data-dir", str(other), "projects", "create", "alpha"], cli_env)
    assert made.returncode == 0, made.stderr
    assert (other / "registry.db").exists()
    via_env = run_cli(["projects", "list", "--json"], {**cli_env, "EDGEPILOT_DATA_DIR": str(other)})
    assert [p["name"] for p in json.loads(via_env.stdout)] == ["alpha"]
    default_env = run_cli(["projects", "list", "--json"], cli_env)
    assert json.loads(default_env.stdout) == []


def test_bad_input_gets_a_message_and_a_nonzero_exit(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    unknown = run_cli(["train", "--project", "p", "--dataset", "mnist", "--model", "mlp"], cli_env)
    assert unknown.returncode == 2
    assert "unknown dataset 'mnist'" in unknown.stderr
    kind = run_cli(["train", "--project", "p", "--dataset", "iris", "--model", "svm"], cli_env)
    assert kind.returncode == 2 and "unknown model type 'svm'" in kind.stderr
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n")
    no_label = run_cli(
        [
            "train",
            "--project",
            "p",
            "--dataset",
            "csv",
            "--path",
            str(csv),
            "--label",
            "y",
            "--model",
            "mlp",
        ],
        cli_env,
    )
    assert no_label.returncode == 2 and "no label column 'y'" in no_label.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    upload = run_cli(["models", "upload", str(junk), "--project", "p", "--model", "m"], cli_env)
    assert upload.returncode == 2 and "not an ONNX or TFLite model" in upload.stderr
    assert run_cli(["projects", "create", "p"], cli_env).returncode == 0
    dup = run_cli(["projects", "create", "p"], cli_env)
    assert dup.returncode == 2 and "project 'p' already exists" in dup.stderr
    missing = run_cli(["models", "show", "p/nothing:1"], cli_env)
    assert missing.returncode == 2 and "not found" in missing.stderr
    projects = json.loads(run_cli(["projects", "list", "--json"], cli_env).stdout)
    assert [p["name"] for p in projects] == ["p"]  # nothing else was created on the way
    runs = json.loads(run_cli(["runs", "list", "--json"], cli_env).stdout)
    assert runs == []


def test_schedule_from_the_cli(cli_env: dict[str, str]) -> None:
    made = run_cli(
        [
            "train",
            "--project",
            "p",
            "--dataset",
            "iris",
            "--model",
            "logreg",
            "--schedule",
            "0 3 * * *",
            "--json",
        ],
        cli_env,
    )
    assert made.returncode == 0, made.stderr
    sched = json.loads(made.stdout)
    assert sched["cron"] == "0 3 * * *" and sched["name"] == "p.iris-logreg"
    bad = run_cli(
        [
            "train",
            "--project",
            "p",
            "--dataset",
            "iris",
            "--model",
            "logreg",
            "--schedule",
            "sometimes",
        ],
        cli_env,
    )
    assert bad.returncode == 2 and "invalid cron expression" in bad.stderr
    listed = run_cli(["schedules", "list"], cli_env)
    assert "p.iris-logreg" in listed.stdout
