"""Input hygiene of the REST API: what a careless or hostile caller sends is refused with a
small, uniform error body, and never reads a file outside the data roots or echoes one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.core.settings import HubSettings
from cloud_hub.hub import Hub
from tests.conftest import admin_headers

API = "/api/v1"
SECRET = "hub:$7$101$c2VjcmV0LXNhbHQ=$SUPER-SECRET-HASH-DO-NOT-LEAK=="
MiB = 1024 * 1024


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    settings = HubSettings(
        data_dir=tmp_path / "hub", run_scheduler=False, max_upload_bytes=256 * 1024
    )
    opened = Hub.open(settings)
    passwd = settings.data_dir / "mosquitto" / "passwd"  # as `hub broker-config` writes it
    passwd.parent.mkdir(parents=True)
    passwd.write_text(SECRET + "\n")
    (settings.data_dir / "datasets").mkdir()
    yield opened
    opened.close()


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(
        create_app(hub, scheduler=False, fleet=False),
        headers=admin_headers(hub),
        raise_server_exceptions=False,
    ) as c:
        yield c


def csv_run(path: str) -> dict[str, Any]:
    return {
        "project": "p",
        "dataset": "csv",
        "model_type": "logreg",
        "path": path,
        "label_column": "label",
    }


def assert_error_body(resp: Any, code: int) -> dict[str, Any]:
    assert resp.status_code == code, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and isinstance(body["error"], str), body
    assert set(body) <= {"detail", "error", "step", "errors"}, body
    return dict(body)


# -- 1. paths ------------------------------------------------------------------------------------
def test_a_file_outside_the_data_roots_is_never_read(client: TestClient, hub: Hub) -> None:
    passwd = hub.settings.data_dir / "mosquitto" / "passwd"
    roots = str(hub.settings.data_dir / "datasets")
    resp = client.post(f"{API}/runs", json=csv_run(str(passwd)))
    body = assert_error_body(resp, 422)
    assert "SECRET" not in resp.text and "$7$" not in resp.text
    assert str(passwd) in body["detail"] and roots in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "path"]
    # through a symbolic link inside the root, or a relative path climbing out of it
    link = hub.settings.data_dir / "datasets" / "innocent.csv"
    link.symlink_to(passwd)
    for path in (str(link), "innocent.csv", "../mosquitto/passwd"):
        resp = client.post(f"{API}/runs", json=csv_run(path))
        assert resp.status_code == 422 and "outside the hub's data roots" in resp.text, path
        assert "SECRET" not in resp.text
    assert client.get(f"{API}/runs").json() == []


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("post", "/schedules", {"name": "s", "cron": "0 3 * * *", "request": csv_run("{p}")}),
        ("post", "/versions/1/quantize", {"dataset": "csv", "path": "{p}", "label_column": "l"}),
        ("post", "/versions/1/baseline", {"dataset": "csv", "path": "{p}", "label_column": "l"}),
        ("post", "/endpoints/any/batches", {"source": {"kind": "csv", "path": "{p}"}}),
        (
            "post",
            "/endpoints",
            {
                "name": "e",
                "steps": [
                    {
                        "name": "fetch",
                        "kind": "data_cache",
                        "params": {"source": {"kind": "csv", "path": "{p}"}},
                    }
                ],
            },
        ),
    ],
)
def test_every_path_the_api_takes_is_confined(
    client: TestClient, hub: Hub, method: str, url: str, body: dict[str, Any]
) -> None:
    passwd = str(hub.settings.data_dir / "mosquitto" / "passwd")
    sent = json.loads(json.dumps(body).replace("{p}", passwd))
    resp = client.request(method, API + url, json=sent)
    error = assert_error_body(resp, 422)
    assert "outside the hub's data roots" in error["detail"], error
    assert "SECRET" not in resp.text
    assert client.get(f"{API}/schedules").json() == []
    assert client.get(f"{API}/endpoints").json() == []


def test_a_dataset_inside_the_roots_is_read_but_never_echoed(client: TestClient, hub: Hub) -> None:
    datasets = hub.settings.data_dir / "datasets"
    (datasets / "cols.csv").write_text("TOPSECRET-COLUMN,b\n1,2\n")
    resp = client.post(f"{API}/runs", json=csv_run("cols.csv"))  # relative: the first root
    error = assert_error_body(resp, 422)
    assert "no label column 'label'" in error["detail"]
    assert "TOPSECRET" not in resp.text
    (datasets / "cells.csv").write_text("a,label\n1,x\nTOPSECRET-CELL,y\n")
    resp = client.post(f"{API}/runs", json=csv_run(str(datasets / "cells.csv")))
    error = assert_error_body(resp, 422)
    assert "line 3" in error["detail"] and "not numeric" in error["detail"]
    assert "TOPSECRET" not in resp.text


# -- 2. bodies -----------------------------------------------------------------------------------
def test_a_json_body_over_the_limit_is_refused_and_nothing_is_stored(client: TestClient) -> None:
    big = {"name": "big", "description": "x" * (2 * MiB)}
    resp = client.post(f"{API}/projects", json=big)
    assert_error_body(resp, 413)
    assert len(resp.content) < 1000
    assert client.get(f"{API}/projects").json() == []
    rule = {"metric": "x" * (2 * MiB), "threshold": 1}
    resp = client.post(f"{API}/alerts/rules", json=rule)
    assert_error_body(resp, 413)
    assert len(resp.content) < 1000


def test_the_limit_holds_without_a_content_length_and_before_the_body_is_read(
    client: TestClient,
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked", "description": "'
        for _ in range(3 * 16):
            yield b"x" * (64 * 1024)
        yield b'"}'

    resp = client.post(
        f"{API}/projects", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error_body(resp, 413)
    # announced: refused on the header alone, whatever follows
    resp = client.post(
        f"{API}/projects",
        content=b'{"name": "liar"}',
        headers={"content-type": "application/json", "content-length": str(100 * MiB)},
    )
    assert_error_body(resp, 413)
    assert client.get(f"{API}/projects").json() == []


def test_uploads_and_predict_bodies_keep_their_own_limits(client: TestClient) -> None:
    files = {"file": ("m.onnx", b"\0" * (300 * 1024), "application/octet-stream")}
    resp = client.post(f"{API}/projects/p/models/m/versions", files=files)
    assert_error_body(resp, 413)
    files = {"file": ("m.onnx", b"not a model", "application/octet-stream")}
    resp = client.post(f"{API}/projects/p/models/m/versions", files=files)
    assert_error_body(resp, 422)  # read: under the upload limit
    rows = {"inputs": [[0.5] * 64] * 3000}  # about 2 MiB: over the JSON limit, under predict's
    resp = client.post(f"{API}/endpoints/ghost/predict", json=rows)
    assert_error_body(resp, 404)


@pytest.mark.parametrize("text", ["\\ud800", "a\\u0000b", "\\udfff tail"])
def test_text_that_cannot_be_stored_is_refused_naming_the_field(
    client: TestClient, text: str
) -> None:
    raw = '{"name": "p", "description": "' + text + '"}'
    resp = client.post(f"{API}/projects", content=raw, headers={"content-type": "application/json"})
    error = assert_error_body(resp, 422)
    assert error["errors"][0]["loc"] == ["body", "description"], error
    assert client.get(f"{API}/projects").json() == []
    key = '{"name": "r", "metric": "error_rate", "threshold": 1, "' + text + '": 1}'
    resp = client.post(
        f"{API}/alerts/rules", content=key, headers={"content-type": "application/json"}
    )
    assert_error_body(resp, 422)
    resp = client.get(f"{API}/projects/a%00b")
    error = assert_error_body(resp, 422)
    assert error["errors"][0]["loc"] == ["path"]
    resp = client.get(f"{API}/runs", params={"project": "a\0b"})
    error = assert_error_body(resp, 422)
    assert error["errors"][0]["loc"] == ["query", "project"]


def test_validation_errors_echo_only_an_excerpt_of_the_input(client: TestClient) -> None:
    resp = client.post(f"{API}/alerts/rules", json={"metric": "y" * 500_000, "threshold": 1})
    error = assert_error_body(resp, 422)
    assert len(resp.content) < 2000
    assert error["errors"][0]["loc"] == ["body", "metric"]
    assert {"loc", "msg", "type"} == set(error["errors"][0])
    resp = client.post(f"{API}/runs", json={"project": "p", "dataset": "mnist"})
    error = assert_error_body(resp, 422)
    assert "unknown dataset 'mnist'" in error["detail"] or "model_type" in error["detail"]


def test_every_error_has_the_one_body(client: TestClient) -> None:
    assert_error_body(client.get(f"{API}/projects/nope"), 404)  # NotFound
    assert_error_body(client.get(f"{API}/no-such-route"), 404)  # the router's
    assert_error_body(client.patch(f"{API}/projects"), 405)
    client.post(f"{API}/projects", json={"name": "p"})
    assert_error_body(client.post(f"{API}/projects", json={"name": "p"}), 409)
    assert_error_body(client.post(f"{API}/projects", content=b"{", headers=_JSON), 422)
    anonymous = client.get(f"{API}/projects", headers={"authorization": ""})
    assert_error_body(anonymous, 401)


_JSON = {"content-type": "application/json"}


# -- 3. query parameters -------------------------------------------------------------------------
def test_unknown_query_parameters_are_refused_naming_them(client: TestClient) -> None:
    resp = client.get(f"{API}/logs", params={"device": "dev-a"})  # the parameter is device_id
    error = assert_error_body(resp, 422)
    assert error["errors"][0]["loc"] == ["query", "device"]
    assert "device_id" in error["errors"][0]["msg"]
    assert client.get(f"{API}/logs", params={"device_id": "dev-a"}).status_code == 200
    resp = client.get(f"{API}/projects", params={"limit": 1, "colour": "red"})
    error = assert_error_body(resp, 422)
    assert [e["loc"] for e in error["errors"]] == [["query", "colour"], ["query", "limit"]]
    resp = client.delete(f"{API}/schedules/nightly", params={"force": "1"})
    assert_error_body(resp, 422)
    assert client.get(f"{API}/runs", params={"status": "failed"}).status_code == 200


# -- 4. the documented contract ------------------------------------------------------------------
def test_the_openapi_document_names_every_error_with_the_one_body(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "ErrorBody" in doc["components"]["schemas"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code in ("400", "404", "409", "422", "500"):
                got = op["responses"].get(code)
                assert got is not None, f"{method} {path} does not document {code}"
                assert got["content"]["application/json"]["schema"] == ref
            if "requestBody" in op:
                assert "413" in op["responses"], f"{method} {path}"


def test_a_bool_is_not_a_number_in_serving_params(client: TestClient) -> None:
    for body in ({"shadow_sample": False}, {"min_score": True}):
        resp = client.put(f"{API}/deployments/1/params", json=body)
        error = assert_error_body(resp, 422)
        assert error["errors"][0]["loc"] == ["body", next(iter(body))]
    assert client.put(f"{API}/deployments/1/params", json={"min_score": 1}).status_code == 404


def test_a_method_the_path_does_not_document_is_405_with_its_methods(client: TestClient) -> None:
    resp = client.options(f"{API}/alerts/rules")
    assert_error_body(resp, 405)
    assert resp.headers["allow"] == "GET, POST"  # two routes: the router named only the first
    resp = client.get(f"{API}/alerts/evaluate")  # not alert id "evaluate": a concrete path
    assert_error_body(resp, 405)
    assert resp.headers["allow"] == "POST"


def test_integers_past_what_the_database_holds_are_refused(client: TestClient) -> None:
    resp = client.get(f"{API}/versions/{2**63}/baseline")
    error = assert_error_body(resp, 422)
    assert error["errors"][0]["loc"] == ["path", "version_id"]
    resp = client.get(f"{API}/logs", params={"model_version": -(2**64)})
    error = assert_error_body(resp, 422)
    assert error["errors"][0]["loc"] == ["query", "model_version"]
    assert client.get(f"{API}/versions/{2**63 - 1}/baseline").status_code == 404


def test_hub_serve_takes_its_data_roots_and_opens_metrics_when_asked(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """What an operator sets on the command line is what the running hub enforces."""
    import subprocess

    import httpx

    from tests.conftest import BIN, REPO, free_port, run_cli, wait_for_port

    missing = run_cli(["hub", "serve", "--data-root", str(tmp_path / "nope")], cli_env)
    assert missing.returncode == 2 and "not a folder" in missing.stderr
    shared = tmp_path / "shared-datasets"
    shared.mkdir()
    port = free_port()
    cmd = [str(BIN / "edgepilot"), "hub", "serve", "--port", str(port), "--no-scheduler",
           "--data-root", str(shared), "--metrics-public"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=cli_env, cwd=REPO, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=60, proc=proc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/metrics").status_code == 200
        token = (Path(cli_env["EDGEPILOT_DATA_DIR"]) / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}{API}/projects").status_code == 401
        outside = httpx.post(f"{base}{API}/runs", json=csv_run("/etc/passwd"), headers=auth)
        body = assert_error_body(outside, 422)
        assert str(shared) in body["detail"] and "root:" not in outside.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert b"admin-token" in err  # the start-up line says where the admin token is
