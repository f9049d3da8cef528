"""Each example spec in examples/endpoints/, posted to a running hub and exercised."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.hub import Hub
from tests.clocks import ManualClock
from tests.cloud_hub.serving.conftest import (
    REPO,
    digits_rows,
    example,
    png_b64,
    reference_labels,
)

API = "/api/v1/endpoints"


def post(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(API, json=spec)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    assert body["status"] == "ready"
    return body


def predict(client: TestClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(f"{API}/{name}/predict", json=body)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_sync_answers_labels_and_scores_and_batches_concurrent_callers(
    client: TestClient, serving_hub: Hub
) -> None:
    spec = example("sync.json")
    created = post(client, spec)
    assert created["models"][0]["version"] == "digits/digits-mlp:1"  # loaded at start
    x, _ = digits_rows()
    expected = reference_labels(serving_hub, "digits/digits-mlp:1", x[:64])
    out = predict(client, "digits-sync", {"inputs": x[:3].tolist()})
    assert out["labels"] == [str(i) for i in range(10)]
    assert [p["label"] for p in out["predictions"]] == expected[:3]
    for p in out["predictions"]:
        assert len(p["scores"]) == 10 and abs(sum(p["scores"]) - 1) < 1e-3
        assert p["score"] == max(p["scores"])
    assert out["steps"] == ["predict"]

    # 32 callers at once, each with its own rows: batched together, each gets its own answer
    def call(i: int) -> tuple[int, list[str]]:
        rows = x[i * 2 : i * 2 + 2].tolist()
        got = predict(client, "digits-sync", {"inputs": rows})
        return i, [p["label"] for p in got["predictions"]]

    for _ in range(3):  # the batcher is adaptive: under load it batches
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, range(32)))
        stats = client.get(f"{API}/digits-sync/stats").json()
        if stats["batching"]["mlp"]["max_batch_size"] > 2:
            break
    for i, labels in results:
        assert labels == expected[i * 2 : i * 2 + 2]
    assert stats["batching"]["mlp"]["max_batch_size"] > 2, stats
    assert stats["requests"] >= 33 and stats["errors"] == {}


def test_preprocess_from_png_and_raw_pixel_rows(client: TestClient, serving_hub: Hub) -> None:
    post(client, example("preprocess_predict.json"))
    x, _ = digits_rows()
    y = reference_labels(serving_hub, "digits/digits-mlp:1", x[:10])
    out = predict(client, "digits-preprocess", {"image_b64": png_b64(5)})
    assert out["predictions"][0]["label"] == str(y[5])
    assert out["steps"] == ["pre", "predict"]
    raw, _ = digits_rows(raw=True)
    rows = predict(client, "digits-preprocess", {"inputs": raw[:4].reshape(4, 8, 8).tolist()})
    assert [p["label"] for p in rows["predictions"]] == y[:4]
    # the image itself as the body
    import base64

    body = base64.b64decode(png_b64(7))
    resp = client.post(
        f"{API}/digits-preprocess/predict", content=body, headers={"content-type": "image/png"}
    )
    assert resp.status_code == 200 and resp.json()["predictions"][0]["label"] == str(y[7])


def test_serial_chain_selects_the_next_model_by_the_first_ones_output(
    client: TestClient,
) -> None:
    spec = example("serial_chain.json")
    post(client, spec)
    x, y = digits_rows(raw=True)
    out = predict(client, "digits-cascade", {"inputs": x[:60].tolist()})
    labels = [p["label"] for p in out["predictions"]]
    assert np.mean([a == str(b) for a, b in zip(labels, y[:60], strict=True)]) > 0.85
    kept = out["counters"].get("choose:fast", 0)
    sent = out["counters"].get("choose:accurate", 0)
    assert kept + sent == 60 and kept > 0
    if sent:
        assert "accurate" in out["steps"]
    # everything below an impossible bar goes on to the second model
    spec["steps"][-1]["params"]["min_score"] = 1.0
    assert client.put(f"{API}/digits-cascade", json=spec).status_code == 200
    out = predict(client, "digits-cascade", {"inputs": x[:5].tolist()})
    assert out["counters"] == {"choose:accurate": 5}
    assert out["steps"] == ["pre", "fast", "accurate", "choose"]


def test_serial_chain_feeds_b_from_a(client: TestClient) -> None:
    spec = {
        "name": "stacked",
        "models": {"a": "digits/digits-mlp:1", "b": "digits/digits-stack:1"},
        "steps": [
            {"name": "a", "kind": "model", "params": {"model": "a"}},
            {"name": "b", "kind": "model", "inputs": ["a"], "params": {"model": "b"}},
        ],
    }
    created = post(client, spec)
    assert created["signatures"]["a"] == "scores [None, 10]"
    x, y = digits_rows()
    out = predict(client, "stacked", {"inputs": x[:20].tolist()})
    assert out["steps"] == ["a", "b"]
    labels = [p["label"] for p in out["predictions"]]
    assert np.mean([a == str(b) for a, b in zip(labels, y[:20], strict=True)]) > 0.9


@pytest.mark.parametrize("how", ["max_score", "vote", "mean", "concat"])
def test_parallel_runs_both_models_and_aggregates(
    client: TestClient, serving_hub: Hub, how: str
) -> None:
    spec = example("parallel.json")
    spec["steps"][-1]["params"]["aggregate"] = how
    post(client, spec)
    raw, _ = digits_rows(raw=True)
    x, _ = digits_rows()
    mlp = reference_labels(serving_hub, "digits/digits-mlp:1", x[:200])
    logreg = reference_labels(serving_hub, "digits/digits-logreg:1", x[:200])
    out = predict(client, "digits-ensemble", {"inputs": raw[:200].tolist()})
    assert sorted(out["steps"]) == ["both", "logreg", "mlp", "pre"]
    preds = out["predictions"]
    if how == "concat":
        assert len(out["labels"]) == 20 and out["labels"][0] == "mlp:0"
        assert len(preds[0]["scores"]) == 20
        return
    for p, a, b in zip(preds, mlp, logreg, strict=True):
        if a == b:  # where both agree, every aggregate agrees with them
            assert p["label"] == a
            if how == "vote":
                assert p["score"] == 1.0
        else:
            assert p["label"] in (a, b)
            if how == "vote":
                assert p["score"] == 0.5


def test_parallel_branches_run_concurrently(client: TestClient) -> None:
    from cloud_hub.serving.steps.compose import ParallelStep

    post(client, example("parallel.json"))
    seen: set[str] = set()
    original = ParallelStep.run

    def spy(self: ParallelStep, ctx: Any, inputs: Any) -> Any:
        wrapped_call = ctx.call

        def call(step: str, rows: Any = None) -> Any:
            seen.add(threading.current_thread().name)
            return wrapped_call(step, rows)

        ctx.call = call
        return original(self, ctx, inputs)

    ParallelStep.run = spy  # type: ignore[method-assign]
    try:
        x, _ = digits_rows(raw=True)
        for _ in range(20):  # a branch not yet started when the other ends runs inline
            predict(client, "digits-ensemble", {"inputs": x[:2].tolist()})
            if any(name.startswith("fanout") for name in seen):
                break
    finally:
        ParallelStep.run = original  # type: ignore[method-assign]
    assert any(name.startswith("fanout") for name in seen), seen


def test_prediction_cache_hits_on_a_repeat_and_misses_after_ttl(client: TestClient) -> None:
    spec = example("prediction_cache.json")
    post(client, spec)
    x, _ = digits_rows(raw=True)
    first = predict(client, "digits-cached", {"inputs": x[:3].tolist()})
    assert first["cache"]["misses"] == 3 and first["cache"]["hits"] == 0
    assert "predict" in first["steps"]
    again = predict(client, "digits-cached", {"inputs": x[:3].tolist()})
    assert again["cache"] == {**first["cache"], "hits": 3, "misses": 0}
    assert again["steps"] == ["cache"]  # the model did not run
    assert again["predictions"] == first["predictions"]
    mixed = predict(client, "digits-cached", {"inputs": x[1:5].tolist()})
    assert (mixed["cache"]["hits"], mixed["cache"]["misses"]) == (2, 2)
    assert [p["label"] for p in mixed["predictions"][:2]] == [
        p["label"] for p in first["predictions"][1:3]
    ]
    img = predict(client, "digits-cached", {"image_b64": png_b64(9)})
    assert img["cache"]["misses"] == 1
    assert predict(client, "digits-cached", {"image_b64": png_b64(9)})["cache"]["hits"] == 1

    spec["steps"][-1]["params"]["ttl_s"] = 0.2
    assert client.put(f"{API}/digits-cached", json=spec).status_code == 200
    clock = ManualClock()  # the rebuilt cache's entries expire when the test says so
    engine = client.app.state.engine  # type: ignore[attr-defined]
    engine.live("digits-cached").graph.steps["cache"].cache.clock = clock
    assert predict(client, "digits-cached", {"inputs": x[:1].tolist()})["cache"]["misses"] == 1
    clock.advance(0.19)
    assert predict(client, "digits-cached", {"inputs": x[:1].tolist()})["cache"]["hits"] == 1
    clock.advance(0.02)
    assert predict(client, "digits-cached", {"inputs": x[:1].tolist()})["cache"]["misses"] == 1
    stats = client.get(f"{API}/digits-cached/stats").json()
    assert stats["steps"]["cache"]["cache"]["hits"] == 1
    assert stats["counters"]["cache_hits"] >= 6


def test_data_cache_fetches_by_id_caches_the_tensor_and_still_runs_the_model(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the example's folder is relative to the hub's directory
    post(client, example("data_cache.json"))
    first = predict(client, "digits-by-id", {"id": "digit-3"})
    assert first["predictions"][0]["label"] == "3"
    assert (first["cache"]["data_misses"], first["cache"]["data_hits"]) == (1, 0)
    again = predict(client, "digits-by-id", {"ids": ["digit-3", "digit-7"]})
    assert [p["label"] for p in again["predictions"]] == ["3", "7"]
    assert (again["cache"]["data_hits"], again["cache"]["data_misses"]) == (1, 1)
    assert again["steps"] == ["fetch", "predict"]  # the model ran again
    stats = client.get(f"{API}/digits-by-id/stats").json()
    assert stats["steps"]["fetch"]["fetches"] == 2
    assert stats["step_runs"]["predict"] == 2
    missing = client.post(f"{API}/digits-by-id/predict", json={"id": "digit-42"})
    assert missing.status_code == 422 and "digit-42" in missing.json()["detail"]
    sneaky = client.post(f"{API}/digits-by-id/predict", json={"id": "../../etc/passwd"})
    assert sneaky.status_code == 422


def test_every_example_builds(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    names = sorted(p.name for p in (REPO / "examples" / "endpoints").glob("*.json"))
    assert names == [
        "ab_test.json",
        "async.json",
        "batch.json",
        "circuit_breaker.json",
        "condition.json",
        "data_cache.json",
        "parallel.json",
        "prediction_cache.json",
        "preprocess_predict.json",
        "serial_chain.json",
        "shadow.json",
        "sync.json",
        "threshold.json",
        "time_differential.json",
    ]
    for name in names:
        post(client, example(name))
    listed = client.get(API).json()
    assert len(listed) == len(names) and {e["status"] for e in listed} == {"ready"}
