"""The issue's 'done when': train the digits CNN from the CLI, then read it back over REST."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from cloud_hub.registry.artifacts import sha256_hex
from tests.conftest import BIN, free_port, run_cli, wait_for_port
from tests.waiting import wait_until


def test_cli_trains_the_cnn_and_hub_serve_answers_the_same_version(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir = tmp_path / "D"
    done = run_cli(
        [
            "--data-dir",
            str(data_dir),
            "train",
            "--project",
            "digits",
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--json",
        ],
        cli_env,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["run"]["status"] == "succeeded"
    version = out["version"]
    assert version["status"] == "ready"
    kinds = {(a["format"], a["precision"]) for a in version["artifacts"]}
    assert kinds == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")}
    for art in version["artifacts"]:
        assert len(art["sha256"]) == 64 and art["size"] > 0
        assert art["metrics"]["accuracy"] > 0.9
        assert art["metrics"]["top1_agreement"] >= 0.99
    int8 = {a["format"]: a for a in version["artifacts"] if a["precision"] == "int8"}
    fp32 = {a["format"]: a for a in version["artifacts"] if a["precision"] == "fp32"}
    for fmt in ("onnx", "tflite"):
        assert int8[fmt]["size"] < fp32[fmt]["size"] / 2
        assert abs(int8[fmt]["metrics"]["accuracy"] - fp32[fmt]["metrics"]["accuracy"]) <= 0.01
    report = version["report"]
    assert report["passed"] is True and len(report["artifacts"]) == 4

    port = free_port()
    hub = subprocess.Popen(
        [str(BIN / "edgepilot"), "--data-dir", str(data_dir), "hub", "serve", "--port", str(port)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc=hub)
        base = f"http://127.0.0.1:{port}/api/v1"
        # the admin token the hub wrote into its data dir on first start: the CLI's, on this
        # machine; a caller without it is refused
        token = (data_dir / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        url = f"{base}/projects/digits/models/digits-cnn/versions/1"
        assert httpx.get(url).status_code == 401
        served = httpx.get(url, headers=auth).json()
        assert served == version
        art = int8["tflite"]
        blob = httpx.get(f"http://127.0.0.1:{port}{art['download_url']}", headers=auth)
        assert blob.headers["x-content-sha256"] == art["sha256"] == sha256_hex(blob.content)
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
    finally:
        hub.terminate()
        hub.wait(20)


def test_a_run_killed_mid_training_is_marked_failed_at_its_step(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 during `train`: the next command sees the run failed at that step (resumable)."""
    import signal

    data_dir = str(tmp_path / "D")
    proc = subprocess.Popen(
        [
            str(BIN / "edgepilot"),
            "--data-dir",
            data_dir,
            "train",
            "--project",
            "digits",
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--param",
            "epochs=200",
            "--json",
        ],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def training() -> bool:
        listed = run_cli(["--data-dir", data_dir, "runs", "list", "--json"], cli_env)
        runs = json.loads(listed.stdout) if listed.returncode == 0 else []
        steps = {s["step"]: s["status"] for s in runs[0]["steps"]} if runs else {}
        return steps.get("train") == "running"

    wait_until(training, 120, "the process to be inside the train step", interval=0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    shown = json.loads(
        run_cli(["--data-dir", data_dir, "runs", "show", "1", "--json"], cli_env).stdout
    )
    assert shown["status"] == "failed"
    assert shown["failed_step"] == "train"
    assert f"process {proc.pid} ended" in shown["error"]
    assert {s["step"]: s["status"] for s in shown["steps"]}["preprocess"] == "succeeded"
