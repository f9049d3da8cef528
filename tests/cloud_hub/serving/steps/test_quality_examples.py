"""The quality patterns' example specs (examples/endpoints/ab_test.json, shadow.json,
circuit_breaker.json, threshold.json, condition.json), posted to a running hub and exercised:
the breaker opens, serves the fallback and recovers; the split holds over 2,000 requests and is
sticky per key; the shadow's answer is never returned; parameters changed at run time change
answers with no redeploy; conditions route by header, field, device tag and time of day."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.hub import Hub
from cloud_hub.serving import PredictRequest
from tests.clocks import ManualClock
from tests.cloud_hub.serving.conftest import digits_rows, example, reference_labels
from tests.waiting import wait_for

API = "/api/v1/endpoints"


def post(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(API, json=spec)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def predict(
    client: TestClient, name: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    resp = client.post(f"{API}/{name}/predict", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def labels_of(out: dict[str, Any]) -> list[str]:
    return [p["label"] for p in out["predictions"]]


def flush(client: TestClient) -> None:
    assert client.app.state.engine.log.flush()  # type: ignore[attr-defined]


def step_of(client: TestClient, endpoint: str, step: str) -> Any:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine.live(endpoint).graph.steps[step]


def put_params(client: TestClient, name: str, body: dict[str, Any]) -> Any:
    return client.put(f"{API}/{name}/params", json=body)


# -- circuit breaker around a device's local API --------------------------------------------
class FakeDevice:
    """A device's local API (`POST /v1/predict`, as the edge agent answers it) on loopback,
    running the digits MLP; `mode` makes it fail (500) or slow (1 s) on demand."""

    def __init__(self, hub: Hub) -> None:
        import uvicorn
        from fastapi import FastAPI, HTTPException

        from edge_agent.core.runtimes import load_runtime

        version = hub.registry.resolve_version("digits/digits-mlp:1")
        runtime = load_runtime(hub.registry.artifact_blob(version.artifacts[0].sha256), "onnx")
        labels = list(version.labels)
        self.mode = "ok"
        self.calls = 0
        app = FastAPI()

        @app.post("/v1/predict")
        def device_predict(body: dict[str, Any]) -> dict[str, Any]:
            self.calls += 1
            if self.mode == "fail":
                raise HTTPException(500, "prediction failed")
            if self.mode == "slow":
                time.sleep(1.0)
            scores = runtime.predict(np.asarray(body["inputs"], dtype=np.float32))
            return {
                "request_id": "r",
                "model_version": version.id,
                "latency_ms": 0.1,
                "predictions": [
                    {
                        "class": int(s.argmax()),
                        "label": labels[int(s.argmax())],
                        "score": float(s.max()),
                        "scores": s.tolist(),
                    }
                    for s in scores
                ],
            }

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, bool, 10, what="the fake device")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def device(serving_hub: Hub) -> Iterator[FakeDevice]:
    fake = FakeDevice(serving_hub)
    yield fake
    fake.close()


def test_circuit_breaker_opens_serves_the_fallback_and_recovers(
    client: TestClient, serving_hub: Hub, device: FakeDevice
) -> None:
    spec = example("circuit_breaker.json")
    spec["steps"][0]["params"]["url"] = f"http://127.0.0.1:{device.port}/v1/predict"
    post(client, spec)
    name = spec["name"]
    clock = ManualClock()  # the cool-down runs out when the test says so
    step_of(client, name, "guard").clock = clock
    # a short cool-down for the test, set at run time
    assert put_params(client, name, {"steps": {"guard": {"cooldown_s": 0.4}}}).status_code == 200
    x, _ = digits_rows()
    rows = {"inputs": x[:8].tolist()}
    mlp = reference_labels(serving_hub, "digits/digits-mlp:1", x[:8])
    logreg = reference_labels(serving_hub, "digits/digits-logreg:1", x[:8])

    def guard() -> dict[str, Any]:
        got: dict[str, Any] = client.get(f"{API}/{name}/stats").json()["steps"]["guard"]
        return got

    out = predict(client, name, rows)  # closed: the device answers
    assert labels_of(out) == mlp and "fallback" not in out["tags"]
    assert guard()["state"] == "closed" and device.calls == 1

    device.mode = "fail"
    for i in range(3):  # each failure is answered by the fallback; the third opens it
        out = predict(client, name, rows)
        assert labels_of(out) == logreg and out["tags"]["fallback"] == "failed"
        assert guard()["state"] == ("open" if i == 2 else "closed")
    assert device.calls == 4
    for _ in range(5):  # open: the fallback at once, the device not called
        out = predict(client, name, rows)
        assert labels_of(out) == logreg and out["tags"]["fallback"] == "open"
    assert device.calls == 4
    state = guard()
    assert state["short_circuited"] == 5 and state["failures"] == 3 and state["opened"] == 1

    clock.advance(0.39)  # still cooling down: the device is not called
    assert predict(client, name, rows)["tags"]["fallback"] == "open" and device.calls == 4
    clock.advance(0.02)  # cool-down over: one trial call, which fails: open again
    out = predict(client, name, rows)
    assert out["tags"]["fallback"] == "failed" and device.calls == 5
    assert guard()["state"] == "open"

    device.mode = "ok"
    clock.advance(0.41)  # the next trial succeeds: closed
    out = predict(client, name, rows)
    assert labels_of(out) == mlp and "fallback" not in out["tags"]
    state = guard()
    assert state["state"] == "closed"
    moves = [(t["from"], t["to"]) for t in state["transitions"]]
    assert moves == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]

    # a slow device: the caller gets the fallback after timeout_ms (250), not after 1 s
    device.mode = "slow"
    started = time.perf_counter()
    out = predict(client, name, rows)
    assert time.perf_counter() - started < 0.8
    assert out["tags"]["fallback"] == "timeout" and labels_of(out) == logreg
    assert guard()["timeouts"] == 1
    flush(client)
    logged = client.get("/api/v1/logs", params={"request_id": out["request_id"]}).json()
    assert logged["records"][0]["tags"]["fallback"] == "timeout"


# -- online A/B ------------------------------------------------------------------------------
def test_ab_split_holds_its_ratio_is_sticky_and_is_logged(
    client: TestClient, serving_hub: Hub
) -> None:
    spec = example("ab_test.json")
    before = post(client, spec)
    name = spec["name"]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    raw, _ = digits_rows(raw=True)
    x, _ = digits_rows()
    mlp = reference_labels(serving_hub, "digits/digits-mlp:1", x[:50])
    logreg = reference_labels(serving_hub, "digits/digits-logreg:1", x[:50])

    # 2,000 callers, each its own key: the 80/20 split holds within 3 points
    seen: dict[str, str] = {}
    for i in range(2000):
        got = engine.predict(name, PredictRequest(inputs=[raw[i % 50].tolist()], key=f"user-{i}"))
        seen[f"user-{i}"] = got.tags["variant"]
        want = mlp if got.tags["variant"] == "A" else logreg
        assert got.predictions[0].label == want[i % 50]
    share = Counter(seen.values())
    assert abs(share["B"] / 2000 - 0.2) < 0.03, share

    # sticky: the same key gets the same variant, every time, over HTTP too
    for i in range(0, 2000, 40):
        key = f"user-{i}"
        for _ in range(2):
            out = predict(client, name, {"inputs": raw[:1].tolist(), "key": key})
            assert out["tags"]["variant"] == seen[key]

    # the variant is in the prediction log
    flush(client)
    logged = client.get("/api/v1/logs", params={"endpoint": name, "variant": "B", "limit": 5000})
    assert len(logged.json()["records"]) >= share["B"]

    # per-variant metrics: in the stats, and a significance test from the log
    variants = client.get(f"{API}/{name}/stats").json()["steps"]["split"]["variants"]
    assert variants["A"]["requests"] >= share["A"] and variants["B"]["mean_score"] is not None
    report = client.get(f"{API}/{name}/reports/ab", params={"metric": "score"}).json()
    assert [v["variant"] for v in report["variants"]] == ["A", "B"]
    assert sum(v["n"] for v in report["variants"]) >= 2000
    (cmp,) = report["comparisons"]
    assert cmp["test"] == "Welch's t-test" and 0 <= cmp["p_value"] <= 1 and report["verdict"]
    for metric in ("latency", "error_rate"):
        got = client.get(f"{API}/{name}/reports/ab", params={"metric": metric})
        assert got.status_code == 200 and got.json()["comparisons"], got.text
    err = client.get(f"{API}/{name}/reports/ab", params={"metric": "error_rate"}).json()
    assert err["comparisons"][0]["test"] == "two-proportion z-test"

    # the weights change at run time, no redeploy: everyone to B
    resp = put_params(client, name, {"steps": {"split": {"weights": {"A": 0, "B": 1}}}})
    assert resp.status_code == 200, resp.text
    for i in range(20):
        out = predict(client, name, {"inputs": raw[:1].tolist(), "key": f"user-{i}"})
        assert out["tags"]["variant"] == "B"
    # kill switch: B's model off, its callers go to A (tagged)
    resp = put_params(
        client,
        name,
        {"kill": ["logreg"], "steps": {"split": {"weights": {"A": 0.5, "B": 0.5}}}},
    )
    assert resp.status_code == 200
    b_keys = [k for k, v in seen.items() if v == "B"][:5]
    for key in b_keys:
        out = predict(client, name, {"inputs": x[:1].tolist(), "key": key})
        assert out["tags"] == {**out["tags"], "variant": "A", "variant_failover": "B"}
    after = client.get(f"{API}/{name}").json()
    assert after["updated_at"] == before["updated_at"]

    # bad weights are refused naming the field, nothing changed
    for weights, words in (
        ({"A": 1}, "no weight for variants ['B']"),
        ({"A": 1, "B": -1}, "negative"),
        ({"A": 0, "B": 0}, "sum to 0"),
        ({"A": 1, "B": 1, "C": 1}, "['C'] are not variants"),
    ):
        resp = put_params(client, name, {"steps": {"split": {"weights": weights}}})
        assert resp.status_code == 422 and "weights" in resp.text and words in resp.text, (
            weights,
            resp.text,
        )


# -- shadow ----------------------------------------------------------------------------------
def test_shadow_answers_with_the_primary_and_logs_the_candidates(
    client: TestClient, serving_hub: Hub
) -> None:
    spec = example("shadow.json")
    # a second candidate that always disagrees: every row answered "0" (no score reaches 1.01)
    spec["steps"].insert(
        3,
        {
            "name": "always0",
            "kind": "threshold",
            "inputs": ["logreg"],
            "params": {"min_score": 1.0, "default_label": "0"},
        },
    )
    spec["steps"][-1]["params"]["candidates"] = ["logreg", "always0"]
    post(client, spec)
    name = spec["name"]
    raw, _ = digits_rows(raw=True)
    x, _ = digits_rows()
    # 60 rows, those where the two models disagree first: the test can tell whose answer returns
    mlp_all = reference_labels(serving_hub, "digits/digits-mlp:1", x)
    logreg_all = reference_labels(serving_hub, "digits/digits-logreg:1", x)
    differ = [i for i, (a, b) in enumerate(zip(mlp_all, logreg_all, strict=True)) if a != b]
    assert differ
    pick = (differ[:20] + [i for i in range(len(x)) if i not in differ])[:60]
    raw, x = raw[pick], x[pick]
    mlp = [mlp_all[i] for i in pick]
    logreg = [logreg_all[i] for i in pick]

    ids = []
    for i in range(30):
        out = predict(client, name, {"inputs": raw[2 * i : 2 * i + 2].tolist()})
        assert labels_of(out) == mlp[2 * i : 2 * i + 2]  # never the candidates'
        assert out["labels"] == [str(d) for d in range(10)]
        ids.append(out["request_id"])

    def shadow_records() -> list[dict[str, Any]]:
        flush(client)
        got: list[dict[str, Any]] = client.get(
            "/api/v1/logs", params={"endpoint": name, "role": "shadow", "limit": 1000}
        ).json()["records"]
        return got

    records = wait_for(shadow_records, lambda r: len(r) == 120, what="shadow records")
    by = {(r["request_id"], r["row"], r["step"]): r for r in records}
    for i, rid in enumerate(ids):
        for row in range(2):
            assert by[(rid, row, "logreg")]["label"] == logreg[2 * i + row]
            assert by[(rid, row, "always0")]["label"] == "0"
    answers = client.get("/api/v1/logs", params={"endpoint": name, "role": "answer"}).json()
    assert {r["request_id"] for r in answers["records"]} == set(ids)

    report = client.get(f"{API}/{name}/reports/shadow").json()
    cands = {c["candidate"]: c for c in report["candidates"]}
    agree = float(np.mean([a == b for a, b in zip(mlp, logreg, strict=True)]))
    assert cands["logreg"]["requests"] == 30 and cands["logreg"]["rows_compared"] == 60
    assert cands["logreg"]["agreement"] == pytest.approx(agree, abs=1e-4)
    assert cands["always0"]["agreement"] == pytest.approx(mlp.count("0") / 60, abs=1e-4)
    for c in cands.values():
        assert c["errors"] == 0 and c["primary_latency_ms"]["p50"] is not None
        assert c["candidate_latency_ms"]["p99"] is not None

    # sample 0 (at run time): nothing mirrored; a candidate switched off is logged as an error
    put_params(client, name, {"steps": {"mirror": {"sample": 0.0}}})
    predict(client, name, {"inputs": raw[:2].tolist()})
    put_params(client, name, {"kill": ["logreg"]})
    out = predict(client, name, {"inputs": raw[:2].tolist()})
    assert labels_of(out) == mlp[:2]

    def errors() -> list[dict[str, Any]]:
        flush(client)
        got: list[dict[str, Any]] = client.get(
            "/api/v1/logs", params={"request_id": out["request_id"], "role": "shadow"}
        ).json()["records"]
        return got

    failed = wait_for(errors, lambda r: len(r) == 2, what="the failed shadow records")
    assert all(r["outcome"] == "failed" and "switched off" in r["error"] for r in failed)
    stats = client.get(f"{API}/{name}/stats").json()["steps"]["mirror"]
    assert stats["skipped"] == 1 and stats["candidates"]["logreg"]["errors"] == 1
    assert len(shadow_records()) == 122  # 120 + the two failures: the sampled-out one has none


# -- parameter-based -------------------------------------------------------------------------
def test_threshold_parameters_change_answers_at_run_time(
    client: TestClient, serving_hub: Hub
) -> None:
    from edge_agent.core.runtimes import load_runtime

    spec = example("threshold.json")
    before = post(client, spec)
    name = spec["name"]
    assert before["signatures"]["gate"] == "scores [None, 11]"
    raw, _ = digits_rows(raw=True)
    x, _ = digits_rows()
    version = serving_hub.registry.resolve_version("digits/digits-mlp:1")
    runtime = load_runtime(serving_hub.registry.artifact_blob(version.artifacts[0].sha256), "onnx")
    scores = runtime.predict(x[:300])
    top, best = scores.argmax(axis=1), scores.max(axis=1)
    bar = np.where(top == 8, 0.97, 0.9)
    want = ["unsure" if b < t else str(c) for c, b, t in zip(top, best, bar, strict=True)]
    assert "unsure" in want and want.count("unsure") < 150

    body = {"inputs": raw[:300].tolist()}
    out = predict(client, name, body)
    assert out["labels"] == [*(str(d) for d in range(10)), "unsure"]
    assert labels_of(out) == want
    assert out["tags"]["thresholded"] == str(want.count("unsure"))
    assert out["counters"]["gate:thresholded"] == want.count("unsure")

    # the bar lowered at run time: nothing thresholded; the answers are the model's own
    resp = put_params(client, name, {"steps": {"gate": {"min_score": 0.0, "per_class": {}}}})
    assert resp.status_code == 200, resp.text
    out = predict(client, name, body)
    assert labels_of(out) == [str(c) for c in top] and "thresholded" not in out["tags"]
    # a class of the model as the default answer (PUT replaces the run-time parameters
    # whole: per_class is the spec's again)
    put_params(client, name, {"steps": {"gate": {"default_label": "0"}}})
    out = predict(client, name, body)
    assert labels_of(out) == ["0" if w == "unsure" else w for w in want]

    # out of range, an unknown class, a label that is not a class: refused naming the field
    for params, words in (
        ({"min_score": 1.5}, "min_score"),
        ({"per_class": {"3": -0.1}}, "per_class.3"),
        ({"per_class": {"cat": 0.5}}, "per_class: ['cat'] are not classes"),
        ({"default_label": "maybe"}, "default_label: 'maybe' is not one of the classes"),
    ):
        resp = put_params(client, name, {"steps": {"gate": params}})
        assert resp.status_code == 422, (params, resp.text)
        assert words in resp.json()["detail"] and resp.json()["step"] == "gate", resp.json()

    # the kill switch: the model off, 503; on again, answers
    put_params(client, name, {"kill": ["mlp"]})
    resp = client.post(f"{API}/{name}/predict", json=body)
    assert resp.status_code == 503 and "switched off" in resp.json()["detail"]
    put_params(client, name, {})
    assert labels_of(predict(client, name, body)) == want
    after = client.get(f"{API}/{name}").json()
    assert after["updated_at"] == before["updated_at"]  # no redeploy
    assert client.get(f"{API}/{name}/stats").json()["steps"]["gate"]["thresholded"] > 0


# -- condition-based -------------------------------------------------------------------------
def _at(hour: int) -> float:
    return datetime(2025, 6, 2, hour, 30, tzinfo=UTC).timestamp()


def test_condition_routes_by_header_field_device_tag_and_time(
    client: TestClient, serving_hub: Hub
) -> None:
    spec = example("condition.json")
    post(client, spec)
    name = spec["name"]
    with serving_hub.db.transaction() as db:
        for device_id, tags in (("cond-lp", '["low-power"]'), ("cond-gpu", '["gpu"]')):
            db.execute(
                "INSERT OR REPLACE INTO devices (id, name, hardware, tags, password_hash) "
                "VALUES (?, ?, 'rpi4', ?, 'x')",
                [device_id, device_id, tags],
            )
    route = step_of(client, name, "route")
    route.clock = lambda: _at(12)  # midday UTC
    raw, _ = digits_rows(raw=True)
    x, _ = digits_rows()
    mlp = reference_labels(serving_hub, "digits/digits-mlp:1", x[:40])
    logreg = reference_labels(serving_hub, "digits/digits-logreg:1", x[:40])
    rows = raw[:40].tolist()

    def routed(
        attributes: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return predict(client, name, {"inputs": rows, "attributes": attributes or {}}, headers)

    out = routed()
    assert out["tags"]["route"] == "default:mlp" and labels_of(out) == mlp
    out = routed(headers={"X-Model": "small"})
    assert out["tags"]["route"] == "0:logreg" and labels_of(out) == logreg
    assert routed({"tier": "free"})["tags"]["route"] == "1:logreg"
    assert routed({"tier": "paid"})["tags"]["route"] == "default:mlp"
    assert routed({"device_id": "cond-lp"})["tags"]["route"] == "2:logreg"
    assert routed({"device_id": "cond-gpu"})["tags"]["route"] == "default:mlp"
    assert routed({"device_id": "nobody"})["tags"]["route"] == "default:mlp"
    route.clock = lambda: _at(23)  # night
    assert routed()["tags"]["route"] == "3:logreg"
    route.clock = lambda: _at(5)  # still night, past midnight
    assert routed()["tags"]["route"] == "3:logreg"
    route.clock = lambda: _at(6)
    assert routed()["tags"]["route"] == "default:mlp"

    # the route's model switched off: the next route that holds (none), then the default
    put_params(client, name, {"kill": ["logreg"]})
    out = routed(headers={"X-Model": "small"})
    assert out["tags"]["route"] == "default:mlp" and labels_of(out) == mlp
    assert out["tags"]["route_skipped"] == "logreg switched off"
    taken = client.get(f"{API}/{name}/stats").json()["steps"]["route"]["routes_taken"]
    assert taken["0:logreg"] == 1 and taken["2:logreg"] == 1 and taken["3:logreg"] == 2
