"""The prediction log (every prediction of every endpoint and device, queryable, exportable) and
an endpoint's run-time parameters (kill switches, per-step values) changed without a rebuild."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from cloud_hub.fleet.ingest import Ingest
from cloud_hub.hub import Hub
from edge_agent.core.features import summarize
from edge_agent.core.wire import LogBatch, LogRecord
from tests.cloud_hub.serving.conftest import digits_rows, example

API = "/api/v1/endpoints"


def _flush(client: TestClient) -> None:
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]


def _sync_spec(name: str = "logged") -> dict[str, Any]:
    return {
        "name": name,
        "models": {"m": "digits/digits-mlp:1"},
        "steps": [{"name": "predict", "kind": "model", "params": {"model": "m"}}],
    }


def test_every_prediction_is_one_record_with_its_request_id(
    client: TestClient, serving_hub: Hub
) -> None:
    assert client.post(API, json=_sync_spec()).status_code == 201
    x, _ = digits_rows()
    resp = client.post(
        f"{API}/logged/predict",
        json={"inputs": x[:3].tolist()},
        headers={"X-Request-ID": "req-abc"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    version = serving_hub.registry.resolve_version("digits/digits-mlp:1")
    assert body["request_id"] == "req-abc" == resp.headers["x-request-id"]
    assert [p["model_version"] for p in body["predictions"]] == [version.id] * 3

    anonymous = client.post(f"{API}/logged/predict", json={"inputs": x[3:4].tolist()}).json()
    assert len(anonymous["request_id"]) == 32  # one is made when the caller gives none

    _flush(client)
    page = client.get("/api/v1/logs", params={"request_id": "req-abc"}).json()
    records = page["records"]
    assert [r["row"] for r in records] == [0, 1, 2]
    for rec, pred, row in zip(records, body["predictions"], x[:3], strict=True):
        assert rec["origin"] == "endpoint" and rec["endpoint"] == "logged"
        assert rec["model_version"] == version.id and rec["outcome"] == "ok"
        assert rec["label"] == pred["label"] and rec["score"] == pred["score"]
        assert rec["output"] == pred["scores"]
        assert rec["role"] == "answer" and rec["latency_ms"] > 0
        assert len(rec["input_digest"]) == 16
        # what drift monitoring compares with the training baseline
        assert np.allclose(rec["features"], summarize(row[None])[0], atol=1e-4)
    # the same input gives the same digest
    again = client.post(
        f"{API}/logged/predict", json={"inputs": x[:1].tolist(), "request_id": "req-again"}
    )
    assert again.status_code == 200
    _flush(client)
    (rec,) = client.get("/api/v1/logs", params={"request_id": "req-again"}).json()["records"]
    assert rec["input_digest"] == records[0]["input_digest"]


def test_refused_and_failed_predictions_are_logged_with_their_outcome(
    client: TestClient, serving_hub: Hub
) -> None:
    assert client.post(API, json=_sync_spec("strict")).status_code == 201
    resp = client.post(
        f"{API}/strict/predict", json={"inputs": [[1.0, 2.0]], "request_id": "bad-shape"}
    )
    assert resp.status_code == 422
    _flush(client)
    (rec,) = client.get("/api/v1/logs", params={"request_id": "bad-shape"}).json()["records"]
    assert rec["outcome"] == "bad_input" and rec["step"] == "predict"
    assert "input shape" in rec["error"] and rec["label"] is None
    # one model behind the endpoint: the failure counts against its version
    assert rec["model_version"] == serving_hub.registry.resolve_version("digits/digits-mlp:1").id
    errors = client.get("/api/v1/logs", params={"endpoint": "strict", "outcome": "ok"}).json()
    assert errors["records"] == []


def test_pages_cover_every_record_once_and_exports_match(client: TestClient) -> None:
    assert client.post(API, json=_sync_spec("paged")).status_code == 201
    x, _ = digits_rows()
    for i in range(5):
        rows = x[i * 5 : i * 5 + 5].tolist()
        resp = client.post(f"{API}/paged/predict", json={"inputs": rows, "request_id": f"p{i}"})
        assert resp.status_code == 200
    _flush(client)
    seen: list[tuple[str, int]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"endpoint": "paged", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/logs", params=params).json()
        seen += [(r["request_id"], r["row"]) for r in page["records"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted((f"p{i}", r) for i in range(5) for r in range(5))

    jsonl = client.get("/api/v1/logs/export", params={"endpoint": "paged", "format": "jsonl"})
    assert jsonl.status_code == 200
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [(r["request_id"], r["row"]) for r in lines] == seen
    exported = client.get("/api/v1/logs/export", params={"endpoint": "paged", "format": "csv"})
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(table) == 25 and {"request_id", "label", "latency_ms"} <= set(table[0])
    assert [t["label"] for t in table] == [r["label"] for r in lines]

    bad = client.get("/api/v1/logs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]


def test_device_logs_are_in_the_same_stream(client: TestClient, serving_hub: Hub) -> None:
    version = serving_hub.registry.resolve_version("digits/digits-mlp:1")
    registered = client.post("/api/v1/devices", json={"id": "pi-logs", "hardware": "rpi4"})
    assert registered.status_code == 201, registered.text
    scores = [0.0] * 10
    scores[7] = 0.9
    now = time.time()
    batch = LogBatch(
        device_id="pi-logs",
        floor=1,
        records=[
            LogRecord(
                seq=i,
                request_id=f"dev-{i}",
                model_version=version.id,
                input_digest="ab" * 8,
                output=scores,
                latency_ms=2.5,
                ts=now + i,
            )
            for i in (1, 2)
        ],
    )
    Ingest(serving_hub.db).store_logs("pi-logs", batch)
    page = client.get("/api/v1/logs", params={"device_id": "pi-logs"}).json()
    assert [r["request_id"] for r in page["records"]] == ["dev-1", "dev-2"]
    rec = page["records"][0]
    assert rec["origin"] == "device" and rec["endpoint"] is None
    assert rec["label"] == "7" and rec["score"] == 0.9 and rec["model_version"] == version.id
    only_endpoints = client.get("/api/v1/logs", params={"origin": "endpoint", "limit": 10000})
    assert all(r["origin"] == "endpoint" for r in only_endpoints.json()["records"])


def test_kill_switch_and_step_params_change_answers_without_a_rebuild(
    client: TestClient,
) -> None:
    spec = example("serial_chain.json")
    assert client.post(API, json=spec).status_code == 201
    name = spec["name"]
    before = client.get(f"{API}/{name}").json()
    x, _ = digits_rows()
    rows = {"inputs": x[:40].tolist()}

    first = client.post(f"{API}/{name}/predict", json=rows).json()["counters"]
    assert first == {"choose:fast": 40}  # the fast model is sure of all of these

    # a stricter threshold, in force at the next request: rows now go on to the MLP
    resp = client.put(f"{API}/{name}/params", json={"steps": {"choose": {"min_score": 1.0}}})
    assert resp.status_code == 200, resp.text
    counters = client.post(f"{API}/{name}/predict", json=rows).json()["counters"]
    assert counters.get("choose:accurate", 0) > 20

    # kill the accurate model (PUT replaces the whole set): rows routed to it fail with 503
    strict = {"kill": ["accurate"], "steps": {"choose": {"min_score": 1.0}}}
    assert client.put(f"{API}/{name}/params", json=strict).status_code == 200
    killed = client.post(f"{API}/{name}/predict", json=rows)
    assert killed.status_code == 503
    assert "switched off" in killed.json()["detail"] and killed.json()["step"] == "accurate"
    assert client.get(f"{API}/{name}/params").json()["kill"] == ["accurate"]

    client.put(f"{API}/{name}/params", json={})
    again = client.post(f"{API}/{name}/predict", json=rows)
    assert again.status_code == 200 and again.json()["counters"] == first
    after = client.get(f"{API}/{name}").json()
    assert after["updated_at"] == before["updated_at"]  # no rebuild, no redeploy
    _flush(client)
    offs = client.get("/api/v1/logs", params={"endpoint": name, "outcome": "model_off"})
    assert len(offs.json()["records"]) == 1


def test_bad_params_are_refused_naming_the_field(client: TestClient) -> None:
    spec = example("serial_chain.json")
    assert client.post(API, json=spec).status_code == 201
    name = spec["name"]
    url = f"{API}/{name}/params"
    cases = [
        ({"kill": ["nobody"]}, "'nobody' is not a model alias"),
        ({"steps": {"ghost": {"min_score": 0.5}}}, "'ghost' is not a step"),
        ({"steps": {"choose": {"min_score": 1.5}}}, "min_score"),
        ({"steps": {"choose": {"default": "fast"}}}, "cannot change at run time"),
        ({"steps": {"fast": {"model": "accurate"}}}, "cannot change at run time"),
        ({"bogus": 1}, "bogus"),
    ]
    for body, words in cases:
        resp = client.put(url, json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert words in json.dumps(resp.json()), (body, resp.json())
    assert client.get(url).json() == {"kill": [], "steps": {}}  # nothing stored

    # a spec change that would orphan parameters in force is refused, the params kept
    client.put(url, json={"steps": {"choose": {"min_score": 0.5}}})
    smaller = {
        **spec,
        "steps": [s for s in spec["steps"] if s["name"] in ("pre", "fast")],
    }
    resp = client.put(f"{API}/{name}", json=smaller)
    assert resp.status_code == 422 and "'choose' is not a step" in resp.json()["detail"]
    assert client.get(url).json()["steps"] == {"choose": {"min_score": 0.5}}


def test_params_set_by_another_process_take_effect(client: TestClient, serving_hub: Hub) -> None:
    """The CLI writes params to the database; a running hub picks them up within its poll."""
    from cloud_hub.serving.engine.params import EndpointParams
    from cloud_hub.serving.engine.store import EndpointStore

    spec = example("serial_chain.json")
    assert client.post(API, json=spec).status_code == 201
    EndpointStore(serving_hub.db).set_params(spec["name"], EndpointParams(kill=["fast"]))
    x, _ = digits_rows()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resp = client.post(f"{API}/{spec['name']}/predict", json={"inputs": x[:2].tolist()})
        if resp.status_code == 503:
            break
        time.sleep(0.1)
    assert resp.status_code == 503 and "'fast' is switched off" in resp.json()["detail"]


def test_metrics_expose_endpoint_and_step_counters(client: TestClient) -> None:
    spec = example("prediction_cache.json")
    assert client.post(API, json=spec).status_code == 201
    x, _ = digits_rows()
    for _ in range(3):
        resp = client.post(f"{API}/{spec['name']}/predict", json={"inputs": x[:2].tolist()})
        assert resp.status_code == 200
    client.post(f"{API}/{spec['name']}/predict", json={"inputs": [[1.0]]})
    _flush(client)
    text = client.get("/metrics").text
    name = spec["name"]
    assert f'ep_endpoint_requests_total{{endpoint="{name}"}} 4.0' in text
    assert f'ep_endpoint_errors_total{{endpoint="{name}",kind="bad_input"}} 1.0' in text
    assert f'ep_endpoint_rows_total{{endpoint="{name}"}} 6.0' in text
    hits = [
        line
        for line in text.splitlines()
        if line.startswith("ep_step_value{") and f'endpoint="{name}"' in line and "hits" in line
    ]
    assert hits and float(hits[0].rsplit(" ", 1)[1]) == 4.0, hits
    assert 'ep_prediction_log_records_total{fate="written"}' in text


def test_a_killed_model_is_not_served_from_the_prediction_cache(client: TestClient) -> None:
    spec = example("prediction_cache.json")
    assert client.post(API, json=spec).status_code == 201
    url = f"{API}/{spec['name']}"
    x, _ = digits_rows()
    row = {"inputs": x[:1].tolist()}
    assert client.post(f"{url}/predict", json=row).json()["cache"]["misses"] == 1
    assert client.post(f"{url}/predict", json=row).json()["cache"]["hits"] == 1
    assert client.put(f"{url}/params", json={"kill": ["mlp"]}).status_code == 200
    killed = client.post(f"{url}/predict", json=row)
    assert killed.status_code == 503 and "'mlp' is switched off" in killed.json()["detail"]
    client.put(f"{url}/params", json={})
    assert client.post(f"{url}/predict", json=row).json()["cache"]["hits"] == 1
