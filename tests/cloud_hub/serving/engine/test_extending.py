"""The step interface carries what comes next without changes to the engine: a router that
picks one of its targets (sticky by the caller's key), a fallback when a target fails; and the
data and prediction caches over a CSV table, keyed by id."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_hub.serving import (
    STEP_KINDS,
    RunContext,
    Signature,
    Step,
    StepParams,
    Value,
    register_step,
)
from tests.cloud_hub.serving.conftest import digits_rows

API = "/api/v1/endpoints"


class SplitParams(StepParams):
    routes: list[str]


class StickySplit(Step):
    """A/B by the caller's key: the same key always goes the same way."""

    kind = "test_split"
    Params = SplitParams
    arity = (0, 0)

    def targets(self) -> list[str]:
        return list(self.params.routes)

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return target(self.params.routes[0])

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        key = ctx.key or ""
        pick = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(self.params.routes)
        ctx.note(f"route:{self.params.routes[pick]}")
        return ctx.call(self.params.routes[pick])


class FallbackParams(StepParams):
    primary: str
    fallback: str


class Fallback(Step):
    kind = "test_fallback"
    Params = FallbackParams
    arity = (0, 0)

    def targets(self) -> list[str]:
        return [self.params.primary, self.params.fallback]

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return target(self.params.primary)

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        try:
            return ctx.call(self.params.primary)
        except Exception:
            ctx.note("fallbacks")
            return ctx.call(self.params.fallback)


class Broken(Step):
    kind = "test_broken"
    arity = (0, 1)

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return Signature("scores", (None, 10), tuple(str(i) for i in range(10)))

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        raise RuntimeError("down")


@pytest.fixture
def kinds() -> Iterator[None]:
    for cls in (StickySplit, Fallback, Broken):
        register_step(cls)
    yield
    for cls in (StickySplit, Fallback, Broken):
        STEP_KINDS.pop(cls.kind)


def _models() -> dict[str, str]:
    return {"mlp": "digits/digits-mlp:1", "lr": "digits/digits-logreg:1"}


def test_a_router_and_a_fallback_plug_in_as_step_kinds(client: TestClient, kinds: None) -> None:
    spec: dict[str, Any] = {
        "name": "ab",
        "models": _models(),
        "steps": [
            {"name": "a", "kind": "model", "params": {"model": "mlp"}},
            {"name": "b", "kind": "model", "params": {"model": "lr"}},
            {"name": "split", "kind": "test_split", "params": {"routes": ["a", "b"]}},
        ],
    }
    assert client.post(API, json=spec).status_code == 201, client.post(API, json=spec).text
    x, _ = digits_rows()
    routes = set()
    for key in ("alice", "bob", "carol", "dave", "erin", "frank"):
        first = client.post(f"{API}/ab/predict", json={"inputs": x[:1].tolist(), "key": key})
        again = client.post(f"{API}/ab/predict", json={"inputs": x[:1].tolist(), "key": key})
        assert first.json()["steps"] == again.json()["steps"]  # sticky
        routes.add(first.json()["steps"][0])
    assert routes == {"a", "b"}

    guarded: dict[str, Any] = {
        "name": "guarded",
        "models": _models(),
        "steps": [
            {"name": "flaky", "kind": "test_broken"},
            {"name": "safe", "kind": "model", "params": {"model": "lr"}},
            {
                "name": "guard",
                "kind": "test_fallback",
                "params": {"primary": "flaky", "fallback": "safe"},
            },
        ],
    }
    assert client.post(API, json=guarded).status_code == 201
    out = client.post(f"{API}/guarded/predict", json={"inputs": x[:2].tolist()}).json()
    assert out["counters"] == {"fallbacks": 1} and out["steps"] == ["safe", "guard"]


def test_an_unguarded_failing_step_is_a_500_naming_it(client: TestClient, kinds: None) -> None:
    spec = {"name": "down", "steps": [{"name": "flaky", "kind": "test_broken"}]}
    assert client.post(API, json=spec).status_code == 201
    resp = client.post(f"{API}/down/predict", json={"inputs": [[1.0]]})
    assert resp.status_code == 500
    assert resp.json() == {
        "detail": "step 'flaky' failed: down",
        "error": "StepFailed",
        "step": "flaky",
    }
    assert client.get("/api/v1/health").status_code == 200


def test_data_and_prediction_caches_over_a_csv_table_by_id(
    client: TestClient, tmp_path: Path
) -> None:
    raw, _ = digits_rows(raw=True)
    table = tmp_path / "pixels.csv"
    cols = [f"p{i}" for i in range(64)]
    lines = [",".join(["item", *cols])]
    lines += [",".join([f"row{i}", *(f"{v:g}" for v in raw[i])]) for i in range(5)]
    table.write_text("\n".join(lines) + "\n")
    spec = {
        "name": "table",
        "models": {"mlp": "digits/digits-mlp:1"},
        "steps": [
            {
                "name": "fetch",
                "kind": "data_cache",
                "params": {
                    "source": {"kind": "csv", "path": str(table), "id_column": "item"},
                    "model": "mlp",
                },
            },
            {"name": "predict", "kind": "model", "inputs": ["fetch"], "params": {"model": "mlp"}},
            {
                "name": "cache",
                "kind": "prediction_cache",
                "params": {"target": "predict", "key": "id"},
            },
        ],
    }
    assert client.post(API, json=spec).status_code == 201
    direct = client.post(f"{API}/table/predict", json={"ids": ["row0", "row1", "row2"]}).json()
    assert direct["cache"]["misses"] == 3 and direct["steps"] == ["fetch", "predict", "cache"]
    assert direct["cache"]["data_misses"] == 3
    again = client.post(f"{API}/table/predict", json={"ids": ["row2", "row3"]}).json()
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (1, 1)
    assert again["cache"]["data_misses"] == 1  # row2 is a hit: not even fetched
    assert again["predictions"][0] == direct["predictions"][2]
    assert np.isclose(sum(again["predictions"][1]["scores"]), 1, atol=1e-3)
    bad = client.post(f"{API}/table/predict", json={"inputs": [[1.0] * 64]})
    assert bad.status_code == 422 and "caches by data id" in bad.json()["detail"]
