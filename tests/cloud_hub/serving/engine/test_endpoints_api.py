"""The endpoints REST API: validation on create, atomic swaps under traffic, bad input,
persistence across a hub restart."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api.app import create_app
from cloud_hub.hub import Hub
from tests.cloud_hub.serving.conftest import digits_rows, example
from tests.conftest import admin_headers

API = "/api/v1/endpoints"


def _spec(steps: list[dict[str, Any]], **models: str) -> dict[str, Any]:
    return {"name": "checked", "models": models or {"m": "digits/digits-mlp:1"}, "steps": steps}


PRE = {"name": "pre", "kind": "preprocess", "params": {"model": "m"}}
MODEL = {"name": "predict", "kind": "model", "inputs": ["pre"], "params": {"model": "m"}}


@pytest.mark.parametrize(
    ("spec", "step", "words"),
    [
        (_spec([PRE, MODEL], m="digits/digits-nope:1"), "pre", "unknown model version"),
        (_spec([PRE, MODEL], m="digits/digits-mlp:9"), "pre", "unknown model version"),
        (_spec([{**PRE, "kind": "teleport"}, MODEL]), "pre", "unknown step kind 'teleport'"),
        (_spec([PRE, {**MODEL, "inputs": ["missing"]}]), "predict", "'missing' is not a step"),
        (_spec([PRE, {**MODEL, "params": {"model": "zz"}}]), "predict", "unknown model alias"),
        (_spec([PRE, {**MODEL, "params": {}}]), "predict", "model: Field required"),
        (
            _spec(
                [
                    {"name": "a", "kind": "model", "inputs": ["b"], "params": {"model": "m"}},
                    {"name": "b", "kind": "model", "inputs": ["a"], "params": {"model": "m"}},
                ]
            ),
            "a",
            "cycle: a → b → a",
        ),
        (
            _spec(
                [
                    PRE,
                    {"name": "a", "kind": "model", "inputs": ["pre"], "params": {"model": "m"}},
                    {"name": "b", "kind": "model", "inputs": ["a"], "params": {"model": "m"}},
                ]
            ),
            "b",
            "input shape mismatch: model digits/digits-mlp:1 takes [None, 64], but 'a' gives "
            "scores [None, 10]",
        ),
        (
            _spec(
                [
                    {
                        **PRE,
                        "params": {
                            "spec": {
                                "input_kind": "image",
                                "layout": "NF",
                                "size": [4, 4],
                                "flatten": True,
                            }
                        },
                    },
                    MODEL,
                ]
            ),
            "predict",
            "takes [None, 64], but 'pre' gives tensor [None, 16]",
        ),
        (
            _spec(
                [
                    PRE,
                    MODEL,
                    {"name": "c", "kind": "prediction_cache", "params": {"target": "c"}},
                ]
            ),
            "c",
            "calls itself",
        ),
        (_spec([PRE]), "pre", "not class scores"),
        (
            _spec([PRE, MODEL, {**MODEL, "name": "other"}]),
            None,
            "2 final steps",
        ),
        (
            _spec(
                [
                    PRE,
                    {"name": "m1", "kind": "model", "inputs": ["pre"], "params": {"model": "m"}},
                    {"name": "s", "kind": "model", "inputs": ["pre"], "params": {"model": "s"}},
                    {"name": "p", "kind": "parallel", "params": {"branches": ["m1", "s"]}},
                ],
                m="digits/digits-mlp:1",
                s="digits/digits-stack:1",
            ),
            "s",
            "takes [None, 10], but 'pre' gives tensor [None, 64]",
        ),
    ],
)
def test_create_refuses_bad_specs_naming_the_step(
    client: TestClient, spec: dict[str, Any], step: str | None, words: str
) -> None:
    resp = client.post(API, json=spec)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert words in body["detail"], body
    assert body.get("step") == step
    if step is not None:
        assert f"step {step!r}" in body["detail"]
    assert client.get(f"{API}/checked").status_code == 404  # nothing stored


def test_parallel_branches_must_share_classes(client: TestClient) -> None:
    spec = _spec(
        [
            {"name": "a", "kind": "model", "params": {"model": "m"}},
            {"name": "b", "kind": "model", "params": {"model": "i"}},
            {"name": "p", "kind": "parallel", "params": {"branches": ["a", "b"]}},
        ],
        m="digits/digits-mlp:1",
        i="digits/digits-stack:1",
    )
    resp = client.post(API, json=spec)
    assert resp.status_code == 201, resp.text  # same classes: fine
    client.delete(f"{API}/checked")
    spec["steps"][2]["params"]["branches"] = ["a", "a"]
    spec["steps"][1] = {"name": "b", "kind": "preprocess", "params": {"model": "m"}}
    spec["steps"][2]["params"]["branches"] = ["a", "b"]
    resp = client.post(API, json=spec)
    assert resp.status_code == 422 and resp.json()["step"] == "p"
    assert "not class scores" in resp.json()["detail"]


def test_crud_and_conflicts(client: TestClient) -> None:
    spec = example("sync.json")
    assert client.post(API, json=spec).status_code == 201
    assert client.post(API, json=spec).status_code == 409
    got = client.get(f"{API}/digits-sync").json()
    assert got["spec"]["steps"][0]["kind"] == "model" and got["output"] == "predict"
    assert [e["name"] for e in client.get(API).json()] == ["digits-sync"]
    wrong = client.put(f"{API}/digits-sync", json={**spec, "name": "other"})
    assert wrong.status_code == 422
    broken = {**spec, "models": {"mlp": "digits/digits-mlp:7"}}
    refused = client.put(f"{API}/digits-sync", json=broken)
    assert refused.status_code == 422 and refused.json()["step"] == "predict"
    assert client.get(f"{API}/digits-sync").json()["spec"]["models"]["mlp"]["ref"] == (
        "digits/digits-mlp:1"
    )
    x, _ = digits_rows()
    ok = client.post(f"{API}/digits-sync/predict", json={"inputs": x[:1].tolist()})
    assert ok.status_code == 200  # the old one still serves
    assert client.put(f"{API}/nope", json={**spec, "name": "nope"}).status_code == 404
    assert client.delete(f"{API}/digits-sync").status_code == 204
    assert client.get(f"{API}/digits-sync").status_code == 404
    assert client.delete(f"{API}/digits-sync").status_code == 404


def test_bad_input_gets_4xx_and_the_server_keeps_serving(client: TestClient) -> None:
    client.post(API, json=example("preprocess_predict.json"))
    client.post(API, json=example("sync.json"))
    url = f"{API}/digits-sync/predict"
    cases: list[tuple[str, Any, int, str]] = [
        (url, {"inputs": [[0.1] * 63]}, 422, "takes input shape [None, 64], got (1, 63)"),
        (url, {"inputs": [[0.1] * 64, [0.2] * 3]}, 422, "ragged"),
        (url, {"inputs": [["a"] * 64]}, 422, "must be numbers"),
        (url, {"inputs": []}, 422, "empty"),
        (url, {"inputs": [1, 2, 3]}, 422, "list of rows"),
        (url, {"id": "x"}, 422, "needs numeric rows"),
        (url, {}, 422, "exactly one of"),
        (url, {"inputs": [[0.1] * 64], "image_b64": "aGk="}, 422, "exactly one of"),
        (f"{API}/nope/predict", {"inputs": [[0.1] * 64]}, 404, "endpoint 'nope' not found"),
        (f"{API}/digits-preprocess/predict", {"image_b64": "aGVsbG8="}, 422, "not an image"),
        (f"{API}/digits-preprocess/predict", {"image_b64": "!!!"}, 422, "not valid base64"),
        (f"{API}/digits-preprocess/predict", {"inputs": [[1, 2, 3]]}, 422, "8x8x1 = 64"),
    ]
    for path, body, code, words in cases:
        resp = client.post(path, json=body)
        assert resp.status_code == code, (body, resp.text)
        assert words in resp.json()["detail"], (body, resp.json())
    # NaN and infinity, as JSON allows them to be written by Python's json
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = '{"inputs": [[' + ", ".join(["0.5"] * 63 + [token]) + "]]}"
        resp = client.post(url, content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 422 and "NaN or infinity" in resp.json()["detail"]
    resp = client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and "not JSON" in resp.json()["detail"]
    x, _ = digits_rows()
    assert client.post(url, json={"inputs": x[:2].tolist()}).status_code == 200
    stats = client.get(f"{API}/digits-sync/stats").json()
    assert stats["errors"]["bad_input"] >= 6


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    spec = {**example("sync.json"), "max_body_bytes": 2000}
    client.post(API, json=spec)
    x, _ = digits_rows()
    resp = client.post(f"{API}/digits-sync/predict", json={"inputs": x[:20].tolist()})
    assert resp.status_code == 413 and "larger than 2000 bytes" in resp.json()["detail"]
    assert resp.json()["error"] == "PayloadTooLarge"
    # no Content-Length: counted as it streams in
    chunks = iter([b'{"inputs": [[', b"0.5, " * 600, b"0.5]]}"])
    streamed = client.post(f"{API}/digits-sync/predict", content=chunks)
    assert streamed.status_code == 413
    ok = client.post(f"{API}/digits-sync/predict", json={"inputs": x[:1].round(3).tolist()})
    assert ok.status_code == 200


def test_put_swaps_under_traffic_with_no_failed_request(client: TestClient) -> None:
    spec = example("sync.json")
    client.post(API, json=spec)
    x, _ = digits_rows()
    stop = threading.Event()
    codes: list[int] = []
    versions: set[int] = set()

    def traffic() -> None:
        while not stop.is_set():
            resp = client.post(f"{API}/digits-sync/predict", json={"inputs": x[:2].tolist()})
            codes.append(resp.status_code)
            versions.add(len(resp.json().get("steps", [])))

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(traffic)
        for i in range(6):  # alternate between a one-step and a two-step graph
            if i % 2 == 0:
                new = {
                    **spec,
                    "models": {"mlp": "digits/digits-mlp:1", "lr": "digits/digits-logreg:1"},
                    "steps": [
                        {"name": "a", "kind": "model", "params": {"model": "mlp"}},
                        {"name": "b", "kind": "model", "params": {"model": "lr"}},
                        {"name": "p", "kind": "parallel", "params": {"branches": ["a", "b"]}},
                    ],
                }
            else:
                new = spec
            resp = client.put(f"{API}/digits-sync", json=new)
            assert resp.status_code == 200, resp.text
        stop.set()
    assert codes and set(codes) == {200}, set(codes)
    assert versions == {1, 3}
    assert client.get(f"{API}/digits-sync/stats").json()["errors"] == {}


def test_endpoints_survive_a_hub_restart(serving_hub: Hub) -> None:
    x, _ = digits_rows()
    with TestClient(
        create_app(serving_hub, scheduler=False, fleet=False), headers=admin_headers(serving_hub)
    ) as first:
        assert first.post(API, json=example("sync.json")).status_code == 201
    with TestClient(
        create_app(serving_hub, scheduler=False, fleet=False), headers=admin_headers(serving_hub)
    ) as second:
        got = second.get(f"{API}/digits-sync").json()
        assert got["status"] == "ready"
        resp = second.post(f"{API}/digits-sync/predict", json={"inputs": x[:1].tolist()})
        assert resp.status_code == 200
        second.delete(f"{API}/digits-sync")


def test_an_endpoint_that_cannot_be_built_at_start_is_reported_broken(
    serving_hub: Hub, tmp_path: Any
) -> None:
    from cloud_hub.serving.engine.spec import EndpointSpec
    from cloud_hub.serving.engine.store import EndpointStore

    spec = EndpointSpec.model_validate({**example("sync.json"), "name": "ghost"})
    spec.models["mlp"] = "digits/digits-gone:1"
    EndpointStore(serving_hub.db).create(spec)  # stored behind the engine's back
    with TestClient(
        create_app(serving_hub, scheduler=False, fleet=False), headers=admin_headers(serving_hub)
    ) as c:
        got = c.get(f"{API}/ghost").json()
        assert got["status"] == "broken" and "digits-gone" in got["error"]
        resp = c.post(f"{API}/ghost/predict", json={"inputs": [[0.0] * 64]})
        assert resp.status_code == 503 and "broken" in resp.json()["detail"]
        c.delete(f"{API}/ghost")


def test_a_public_endpoint_predicts_without_a_token_and_nothing_else_opens(
    client: TestClient,
) -> None:
    x, _ = digits_rows()
    body = {"inputs": x[:2].tolist()}
    anon = TestClient(client.app)  # same app, no Authorization header
    closed = {**example("sync.json"), "name": "digits-closed"}
    opened = {**example("sync.json"), "name": "digits-open", "public": True}
    for spec in (closed, opened):
        assert client.post(API, json=spec).status_code == 201
    refused = anon.post(f"{API}/digits-closed/predict", json=body)
    assert refused.status_code == 401 and "viewer" in refused.json()["detail"]
    answered = anon.post(f"{API}/digits-open/predict", json=body)
    assert answered.status_code == 200, answered.text
    assert len(answered.json()["predictions"]) == 2
    # the endpoint's other routes still need a token: public is for predicting only
    assert anon.get(f"{API}/digits-open").status_code == 401
    assert anon.get(f"{API}/digits-open/stats").status_code == 401
    assert anon.post(f"{API}/digits-open/jobs", json=body).status_code == 401
    assert anon.put(f"{API}/digits-open", json={**opened, "public": False}).status_code == 401
    assert client.put(f"{API}/digits-open", json={**opened, "public": False}).status_code == 200
    assert anon.post(f"{API}/digits-open/predict", json=body).status_code == 401
