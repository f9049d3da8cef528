"""Model-in-image: `edgepilot build-image` writes a build context; no Docker engine runs here,
so the image's entry command (the Dockerfile's CMD) is run from the context with this venv's
python, with the hub's data directory moved out of reach, and must answer predictions equal to
the ones the registry-backed engine gives."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from cloud_hub.cli.main import app
from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from cloud_hub.serving import EndpointSpec, PredictRequest, ServingEngine
from cloud_hub.serving.engine.spec import ModelRef
from cloud_hub.serving.image.build import FORBIDDEN, parse_cmd, version_spec
from cloud_hub.training.request import TrainRequest
from tests.cloud_hub.serving.conftest import digits_rows, example, png_b64
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def image_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = Hub.open(HubSettings(data_dir=tmp_path_factory.mktemp("image-hub"), run_scheduler=False))
    for model in ("mlp", "logreg"):
        run = hub.pipeline().start(
            TrainRequest(
                project="digits",
                dataset="digits",
                model_type=model,
                formats=["onnx"],
                quantize=False,
            )
        )
        assert run.status == "succeeded", run.error
    engine = ServingEngine(hub.registry, hub.db)
    engine.create(EndpointSpec.model_validate(example("parallel.json")))
    engine.close()
    yield hub
    hub.close()


def cli(hub: Hub, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, ["--data-dir", str(hub.settings.data_dir), *args], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


def registry_served(hub: Hub, spec: EndpointSpec, body: dict[str, Any]) -> dict[str, Any]:
    """The same request through the hub's engine, models loaded from the registry."""
    engine = ServingEngine(hub.registry, hub.db)
    try:
        info, _ = engine.apply(spec.model_copy(update={"name": f"ref-{spec.name}"}))
        out = engine.predict(info.name, PredictRequest.model_validate(body))
        engine.delete(info.name)
    finally:
        engine.close()
    return out.model_dump()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def entry_command(context: Path) -> Iterator[str]:
    """Run the Dockerfile's CMD from the build context, as the image would; yield its URL."""
    command = parse_cmd((context / "Dockerfile").read_text())
    assert command[0] == "python"
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(context),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "EDGEPILOT_DATA_DIR": str(context / "no-hub-here"),
    }
    proc = subprocess.Popen(
        [sys.executable, *command[1:]],
        cwd=context,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        timeout = 60.0

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {proc.stdout and proc.stdout.read()}")
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout, "the image server to start", interval=0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def hub_out_of_reach(hub: Hub) -> Iterator[None]:
    data = Path(hub.settings.data_dir)
    away = data.with_name(data.name + "-away")
    data.rename(away)
    try:
        yield
    finally:
        away.rename(data)


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["labels"] == want["labels"]
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    np.testing.assert_allclose(
        [p["scores"] for p in got["predictions"]],
        [p["scores"] for p in want["predictions"]],
        atol=1e-5,
    )


def test_version_image_serves_without_the_registry(image_hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    code, stdout, err = cli(image_hub, "build-image", "digits/digits-mlp:latest", "-o", str(out))
    assert code == 0, err
    assert "digits-digits-mlp-v1" in stdout and "digits/digits-mlp:1 onnx/fp32" in stdout

    dockerfile = (out / "Dockerfile").read_text()
    assert (
        dockerfile.startswith("# edgepilot build-image") and "FROM python:3.11-slim" in dockerfile
    )
    assert parse_cmd(dockerfile)[:3] == ["python", "-m", "cloud_hub.serving.image.server"]
    assert "EXPOSE 8080" in dockerfile and "PORT=8080" in dockerfile
    reqs = (out / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} == {
        "numpy",
        "pydantic",
        "onnxruntime",
        "opencv-python-headless",
    }
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["endpoint"]["models"]["model"]["ref"] == "digits/digits-mlp:1"  # pinned
    vdir = out / "bundle" / "models" / "digits-digits-mlp-1"
    assert (vdir / "onnx-fp32.onnx").stat().st_size > 0
    assert json.loads((vdir / "labels.json").read_text()) == [str(i) for i in range(10)]
    assert json.loads((vdir / "preprocessing.json").read_text())["input_kind"] == "image"
    assert not (out / "cloud_hub" / "registry.py").exists()
    assert not (out / "cloud_hub" / "serving" / "engine.py").exists()

    raw, _ = digits_rows(raw=True)
    rows = {"inputs": raw[:5].tolist()}
    image = {"image_b64": png_b64(7)}
    version = image_hub.registry.resolve_version("digits/digits-mlp:1")
    spec = version_spec(version, ModelRef(ref="digits/digits-mlp:1"))
    want_rows = registry_served(image_hub, spec, rows)
    want_image = registry_served(image_hub, spec, image)

    with hub_out_of_reach(image_hub), entry_command(out) as url:
        got = httpx.post(f"{url}/predict", json=rows, timeout=30)
        assert got.status_code == 200, got.text
        assert_same(got.json(), want_rows)
        assert got.json()["steps"] == ["pre", "predict"]
        # the hub's path works too, and an image body
        got = httpx.post(f"{url}/api/v1/endpoints/{spec.name}/predict", json=image, timeout=30)
        assert got.status_code == 200, got.text
        assert_same(got.json(), want_image)
        # bad input: 4xx with a message, and it keeps serving
        nan = json.dumps({"inputs": [[float("nan")] * 64]}).encode()  # NaN: not strict JSON
        bad = httpx.post(f"{url}/predict", content=nan, timeout=30)
        assert bad.status_code == 422 and "NaN" in bad.json()["detail"]
        bad = httpx.post(f"{url}/predict", content=b"not json", timeout=30)
        assert bad.status_code == 422 and "not JSON" in bad.json()["detail"]
        assert httpx.get(f"{url}/nope", timeout=30).status_code == 404
        info = httpx.get(f"{url}/info", timeout=30).json()
        assert info["models"][0]["version"] == "digits/digits-mlp:1"
        stats = httpx.get(f"{url}/stats", timeout=30).json()
        assert stats["requests"] >= 2 and stats["errors"]["bad_input"] >= 1

    # the server imports the engine copied into the context, and none of the registry
    probe = (
        "import json, sys, cloud_hub\n"
        "from cloud_hub.serving.image.server import load_bundle\n"
        "load_bundle('bundle').retire()\n"
        "print(json.dumps({'file': cloud_hub.__file__, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=out, capture_output=True, text=True, check=True
    )
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).resolve().is_relative_to(out.resolve())
    assert not [m for m in seen["modules"] if m.startswith((*FORBIDDEN, "fastapi", "sqlite"))]


def test_endpoint_image_bakes_its_models(image_hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    code, stdout, err = cli(
        image_hub, "build-image", "digits-ensemble", "-o", str(out), "--port", "9000"
    )
    assert code == 0, err
    assert "digits/digits-logreg:1" in stdout and "digits/digits-mlp:1" in stdout
    assert "EXPOSE 9000" in (out / "Dockerfile").read_text()
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert sorted(manifest["versions"]) == ["digits/digits-logreg:1", "digits/digits-mlp:1"]
    assert [s["kind"] for s in manifest["endpoint"]["steps"]] == [
        "preprocess",
        "model",
        "model",
        "parallel",
    ]

    raw, _ = digits_rows(raw=True)
    body = {"inputs": raw[10:18].tolist()}
    spec = EndpointSpec.model_validate(example("parallel.json"))
    want = registry_served(image_hub, spec, body)
    with hub_out_of_reach(image_hub), entry_command(out) as url:
        got = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert got.status_code == 200, got.text
        assert_same(got.json(), want)
        assert set(got.json()["steps"]) == {"pre", "mlp", "logreg", "both"}


def test_bad_targets_and_output_dirs(image_hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    code, _, err = cli(image_hub, "build-image", "digits/digits-mlp:9", "-o", str(out))
    assert code == 2 and "not found" in err
    code, _, err = cli(image_hub, "build-image", "no-such-endpoint", "-o", str(out))
    assert code == 2 and "endpoint 'no-such-endpoint' not found" in err
    code, _, err = cli(image_hub, "build-image", "nope/nothing", "-o", str(out))
    assert code == 2
    code, _, err = cli(
        image_hub, "build-image", "digits/digits-mlp:1", "-o", str(out), "--format", "tflite"
    )
    assert code == 2 and "no ready tflite" in err
    assert not out.exists() or not any(out.iterdir())  # nothing written

    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("mine")
    code, _, err = cli(image_hub, "build-image", "digits/digits-logreg:1", "-o", str(out))
    assert code == 2 and "not empty" in err and "--force" in err
    code, _, err = cli(
        image_hub, "build-image", "digits/digits-logreg:1", "-o", str(out), "--force"
    )
    assert code == 0, err
    assert (out / "keep.txt").read_text() == "mine" and (out / "Dockerfile").is_file()
    code, _, err = cli(image_hub, "build-image", "digits/digits-mlp:1", "-o", str(out), "--force")
    assert code == 0, err
    assert [p.name for p in (out / "bundle" / "models").iterdir()] == ["digits-digits-mlp-1"]
