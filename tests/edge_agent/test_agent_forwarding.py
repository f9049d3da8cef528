"""Logs and telemetry from a real agent process to the hub: nothing lost, nothing twice."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edge_agent.core.wire import Ack, InferRequest, InferResult
from tests.agent_processes import AgentProc
from tests.edge_agent.conftest import IrisModels, WireHub
from tests.waiting import wait_until


def _predict_many(agent: AgentProc, X: np.ndarray, requests: int, batch: int) -> list[str]:
    """`requests` HTTP predictions of `batch` samples; the log request ids they produce."""
    ids = []
    for i in range(requests):
        rows = X[np.arange(i * batch, (i + 1) * batch) % len(X)].tolist()
        code, doc = agent.predict(rows)
        assert code == 200, doc
        rid = doc["request_id"]
        ids += [rid] if batch == 1 else [f"{rid}/{j}" for j in range(batch)]
    return ids


def _assert_exactly_once(hub: WireHub, request_ids: list[str]) -> None:
    with hub.lock:
        logs = dict(hub.logs)
        seqs = sorted([*hub.logs, *hub.telemetry])
    assert seqs == list(range(1, len(seqs) + 1)), "the hub holds a gap-free sequence"
    stored = [record["request_id"] for record in logs.values()]
    assert len(stored) == len(set(stored)), "no request stored under two sequence numbers"
    assert sorted(stored) == sorted(request_ids)


def _deploy(hub: WireHub, models: IrisModels) -> None:
    hub.deploy(hub.ref(models.a, 1), models.a, deployment_id=1)
    hub.wait_report(1, "active")


def test_logs_survive_kill_9_and_arrive_exactly_once(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    _deploy(hub, iris_models)
    hub.acking = False  # the hub receives, but acknowledges nothing
    ids = _predict_many(agent, iris_models.X, 40, 5)
    wait_until(lambda: len(hub.logs) == 200, 10, "logs received (unacknowledged)")
    assert agent.status()["outbox"]["pending"] == 200
    agent.kill()
    wait_until(lambda: hub.statuses[-1].state == "offline", 10, "the last will")
    with hub.lock:  # the hub lost what it had not acknowledged: every log must come again
        hub.logs.clear()
        hub.contiguous = 0
    hub.acking = True
    agent.start()
    wait_until(lambda: len(hub.logs) == 200, 15, "every log after the restart")
    wait_until(lambda: agent.status()["outbox"]["pending"] == 0, 10, "outbox drained by acks")
    _assert_exactly_once(hub, ids)
    # later logs continue the sequence, never reuse it
    ids += _predict_many(agent, iris_models.X, 1, 1)
    wait_until(lambda: len(hub.logs) == 201, 10, "one more log")
    _assert_exactly_once(hub, ids)


def test_hub_away_agent_keeps_inferring_and_10k_logs_drain_when_it_returns(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto, telemetry={"interval_s": 0.5})
    _deploy(hub, iris_models)
    ids = _predict_many(agent, iris_models.X, 2, 1)
    wait_until(lambda: len(hub.logs) == 2, 10, "the first logs")
    hub.stop()  # the hub goes away; the broker stays
    ids += _predict_many(agent, iris_models.X, 20, 500)
    assert agent.status()["outbox"]["pending"] >= 10_000
    started = time.monotonic()
    hub.restart()
    wait_until(lambda: len(hub.logs) == len(ids), 20, "10,002 logs at the hub")
    drained_s = time.monotonic() - started
    assert drained_s < 12, f"drained in {drained_s:.1f}s"
    wait_until(lambda: agent.status()["outbox"]["pending"] <= 2, 10, "outbox drained")
    wait_until(lambda: len(hub.telemetry) >= 2, 5, "telemetry")
    _assert_exactly_once(hub, ids)
    sample = next(iter(hub.telemetry.values()))
    assert sample["memory_rss_mb"] and "1" in {
        k for r in hub.telemetry.values() for k in r["inferences"]
    }


def test_an_ack_above_what_was_issued_or_for_another_epoch_is_ignored_and_forwarding_goes_on(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    """A hub that still remembers this device's outbox from before its data was wiped acks far
    above what this outbox issued (so would a stray or forged message): nothing may be deleted
    for it, and forwarding must not stop until a restart."""
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)
    _deploy(hub, iris_models)
    ids = _predict_many(agent, iris_models.X, 5, 1)
    wait_until(lambda: agent.status()["outbox"]["pending"] == 0, 10, "the first logs acked")
    hub.acking = False  # the agent holds what it sends next when the bad acks come
    ids += _predict_many(agent, iris_models.X, 5, 1)
    wait_until(lambda: len(hub.logs) == 10, 10, "five more logs (unacknowledged)")
    epoch = agent.status()["forwarder"]["epoch"]
    assert isinstance(epoch, str) and len(epoch) == 16
    hub.client.publish(hub.t("ack"), b'{"v":1,"upto":1000000}', qos=1)
    hub.client.publish(hub.t("ack"), Ack(upto=10, epoch="f" * 16).dumps(), qos=1)
    wait_until(lambda: agent.status()["forwarder"]["bad_acks"] == 2, 10, "two bad acks")
    status = agent.status()
    assert status["outbox"]["pending"] == 5, "a bad ack deleted records"
    assert status["outbox"]["acked_upto"] == 5
    assert status["forwarder"]["acked_upto"] == 5
    hub.acking = True
    ids += _predict_many(agent, iris_models.X, 10, 1)
    wait_until(lambda: len(hub.logs) == 20, 10, "every later log forwarded")
    wait_until(lambda: agent.status()["outbox"]["pending"] == 0, 10, "outbox drained by acks")
    _assert_exactly_once(hub, ids)
    assert agent.status()["forwarder"]["bad_acks"] == 2
    assert "only 10 sequence numbers were issued" in agent.stderr()


def test_mqtt_infer_requests_are_answered(
    make_hub: Any, make_agent: Any, mosquitto: Any, device_id: str, iris_models: IrisModels
) -> None:
    hub = make_hub(mosquitto, device_id)
    agent = make_agent(device_id, mosquitto)

    def ask(request_id: str, inputs: Any) -> InferResult:
        request = InferRequest(request_id=request_id, inputs=inputs)
        hub.client.publish(hub.t("infer"), request.dumps(), qos=1)

        def answered() -> InferResult | None:
            with hub.lock:
                return next((r for r in hub.results if r.request_id == request_id), None)

        return wait_until(answered, 10, f"result {request_id}")

    # a request published before the agent's first connection would find no subscriber: the
    # broker drops it (a new session has nothing queued). Online status comes after SUBSCRIBE.
    def online() -> bool:
        with hub.lock:
            return any(s.state == "online" for s in hub.statuses)

    wait_until(online, 20, "the agent online")
    early = ask("no-model", [[5.1, 3.5, 1.4, 0.2]])
    assert not early.ok and early.error and "no model" in early.error
    _deploy(hub, iris_models)
    result = ask("r-1", iris_models.X[[0, 100]].tolist())
    assert result.ok and result.model_version == 1
    assert [p["class"] for p in result.predictions] == iris_models.clf_a.predict(
        iris_models.X[[0, 100]]
    ).tolist()
    wrong = ask("r-2", [[1.0, 2.0]])
    assert not wrong.ok and wrong.error and "shape" in wrong.error
    strings = ask("r-3", [["a", "b", "c", "d"]])
    assert not strings.ok and strings.error and "numbers" in strings.error
    wait_until(lambda: any(r["request_id"].startswith("r-1/") for r in hub.logs.values()), 10)
    assert {r["source"] for r in hub.logs.values()} == {"mqtt"}
    assert agent.predict(iris_models.X[:1].tolist())[0] == 200
