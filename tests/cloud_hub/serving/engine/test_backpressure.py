"""Backpressure: an endpoint past its cap on queued rows or on request bytes in flight answers
503 with Retry-After (naming the cap) instead of queueing, counts the refusals in its stats, and
serves again as soon as it has room; what a request holds is given back however it ends."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.serving import STEP_KINDS, RunContext, Signature, Step, Value, register_step
from cloud_hub.serving.engine.admission import Admission, Caps
from cloud_hub.serving.engine.engine import ServingEngine
from cloud_hub.serving.engine.values import PredictRequest
from tests.cloud_hub.serving.conftest import digits_rows
from tests.waiting import wait_until

API = "/api/v1/endpoints"
GATE = threading.Event()
ENTERED = threading.Event()  # a run has reached the gate


class Gate(Step):
    """Passes its input through once GATE is open: a slow step the test controls."""

    kind = "test_gate"
    arity = (1, 1)

    def signature(self, inputs: list[Signature], target: Callable[[str], Signature]) -> Signature:
        return inputs[0]

    def run(self, ctx: RunContext, inputs: list[Value]) -> Value:
        ENTERED.set()
        assert GATE.wait(30), "the test never opened the gate"
        return inputs[0]


@pytest.fixture
def gated(client: TestClient) -> Iterator[Callable[..., str]]:
    register_step(Gate)
    GATE.clear()
    ENTERED.clear()

    def make(**caps: int) -> str:
        spec: dict[str, Any] = {
            "name": "gated",
            "models": {"mlp": "digits/digits-mlp:1"},
            "steps": [
                {"name": "predict", "kind": "model", "params": {"model": "mlp"}},
                {"name": "gate", "kind": "test_gate", "inputs": ["predict"]},
            ],
            "batching": {"enabled": False},
            **caps,
        }
        resp = client.post(API, json=spec)
        assert resp.status_code == 201, resp.text
        return f"{API}/gated/predict"

    yield make
    GATE.set()
    STEP_KINDS.pop(Gate.kind)


def _admission(client: TestClient) -> dict[str, Any]:
    stats: dict[str, Any] = client.get(f"{API}/gated/stats").json()["admission"]
    return stats


def test_past_the_queued_rows_cap_a_503_with_retry_after_then_room_again(
    client: TestClient, gated: Callable[..., str]
) -> None:
    url = gated(max_queued_rows=4)
    x, _ = digits_rows()
    one = {"inputs": x[:1].tolist()}
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(client.post, url, json=one) for _ in range(4)]
        wait_until(lambda: _admission(client)["queued_rows"] == 4, what="4 rows queued")
        refused = client.post(url, json=one)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        body = refused.json()
        assert body["error"] == "EndpointBusy" and "queued_rows" in body["detail"]
        # more rows than are free is refused too, even when a single row would fit
        assert client.post(url, json={"inputs": x[:2].tolist()}).status_code == 503
        GATE.set()
        assert [f.result().status_code for f in held] == [200] * 4  # none lost
    wait_until(lambda: _admission(client)["queued_rows"] == 0, what="the queue to drain")
    # room again: every request under the cap is served
    codes = [client.post(url, json={"inputs": x[:4].tolist()}).status_code for _ in range(5)]
    assert codes == [200] * 5
    stats = client.get(f"{API}/gated/stats").json()
    assert stats["admission"]["refused"] == {"in_flight_bytes": 0, "queued_rows": 2}
    assert stats["admission"]["in_flight_bytes"] == 0
    assert stats["requests"] == 9 and not stats["errors"]


def test_past_the_in_flight_bytes_cap_a_503_naming_it(
    client: TestClient, gated: Callable[..., str]
) -> None:
    x, _ = digits_rows()
    one = json.dumps({"inputs": x[:1].tolist()}).encode()
    url = gated(max_in_flight_bytes=2 * len(one) + 10)  # room for two bodies, not three
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(client.post, url, content=one) for _ in range(2)]
        wait_until(
            lambda: _admission(client)["in_flight_bytes"] == 2 * len(one), what="2 bodies held"
        )
        refused = client.post(url, content=one)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "in_flight_bytes" in refused.json()["detail"]
        assert "inputs" not in refused.text  # nothing of the body
        GATE.set()
        assert [f.result().status_code for f in held] == [200, 200]
    wait_until(lambda: _admission(client)["in_flight_bytes"] == 0, what="bytes given back")
    assert client.post(url, content=one).status_code == 200
    assert _admission(client)["refused"]["in_flight_bytes"] == 1


def test_a_lone_request_bigger_than_a_cap_is_still_served(
    client: TestClient, gated: Callable[..., str]
) -> None:
    url = gated(max_queued_rows=2, max_in_flight_bytes=10)
    GATE.set()
    x, _ = digits_rows()
    resp = client.post(url, json={"inputs": x[:8].tolist()})
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 8


def test_bad_input_and_errors_give_back_what_they_held(
    client: TestClient, gated: Callable[..., str]
) -> None:
    url = gated(max_queued_rows=4)
    GATE.set()
    assert client.post(url, json={"inputs": [[0.5] * 3]}).status_code == 422  # wrong shape
    assert client.post(url, content=b"{not json").status_code == 422
    assert client.post(url, json={"inputs": [[0.5] * 64], "top_k": 11}).status_code == 422
    assert _admission(client) == {
        "in_flight_bytes": 0,
        "queued_rows": 0,
        "refused": {"in_flight_bytes": 0, "queued_rows": 0},
    }


def test_a_cancelled_caller_holds_its_rows_until_the_run_ends(
    client: TestClient, gated: Callable[..., str]
) -> None:
    """The caller goes away (a client that disconnects): its run still occupies the engine, so
    its rows stay counted until that run ends, then are given back."""
    gated()
    engine: ServingEngine = client.app.state.engine  # type: ignore[attr-defined]
    x, _ = digits_rows()
    admission = Admission()
    caps = Caps(in_flight_bytes=1 << 20, queued_rows=10)

    async def call_and_cancel() -> None:
        ticket = admission.admit_bytes(100, caps)
        ticket.admit_rows(3, caps)
        task = asyncio.ensure_future(
            engine.apredict("gated", PredictRequest(inputs=x[:3].tolist()), ticket=ticket)
        )
        # the run is under way (a run not yet started would be cancelled with its caller)
        assert await asyncio.get_running_loop().run_in_executor(None, ENTERED.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(call_and_cancel())
    assert admission.snapshot()["queued_rows"] == 3  # still running behind the gate
    GATE.set()
    wait_until(lambda: admission.snapshot()["queued_rows"] == 0, what="the rows given back")
    assert admission.snapshot()["in_flight_bytes"] == 0


def test_a_ticket_is_given_back_once() -> None:
    admission = Admission()
    caps = Caps(in_flight_bytes=100, queued_rows=10)
    ticket = admission.admit_bytes(60, caps)
    ticket.admit_rows(5, caps)
    future: Future[None] = Future()
    ticket.follow(future)
    ticket.release()
    future.set_result(None)  # the follower's release is a no-op now
    ticket.release()
    assert admission.snapshot()["in_flight_bytes"] == 0
    assert admission.snapshot()["queued_rows"] == 0
    assert admission.admit_bytes(100, caps) is not None
